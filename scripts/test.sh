#!/usr/bin/env bash
# The whole test suite: lint, then pytest (CPU, tiny generated checkpoints, real S3 server).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"

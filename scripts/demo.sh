#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, write the tiny random checkpoints (the real
# ~15 GB weights cannot be fetched here), then run test_input.json through the handler and
# write the try-on image(s) and the mask to outputs/. CPU: 2 denoising steps at 768x1024.
# Extra arguments go to `python -m worker.local` (e.g. --set samples=2 --set output_format=jpeg).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-dev.sh
if [ ! -f tiny-checkpoints/ootd/scheduler/scheduler_config.json ] || \
   [ ! -f tiny-checkpoints/openpose/ckpts/body_pose_model.pth ]; then
  .venv/bin/python -m tiny_checkpoints tiny-checkpoints
fi
# ALLOW_CPU: a demo on a machine without CUDA is meant to run on the CPU.
CHECKPOINTS_DIR="${CHECKPOINTS_DIR:-tiny-checkpoints}" ALLOW_CPU="${ALLOW_CPU:-true}" \
  exec .venv/bin/python -m worker.local test_input.json --out outputs \
    --set steps=2 --set return_mask=true "$@"

#!/bin/sh
# The image's start command. WORKER_MODE picks what the container serves:
#   queue (default)  RunPod's queue, through the runpod SDK: `python -u handler.py`, as always;
#   lb               a RunPod load-balancing endpoint: `python -m worker.serve --lb` on PORT
#                    (RunPod's default 80), /ping also on PORT_HEALTH when that is another port.
set -eu
case "${WORKER_MODE:-queue}" in
  queue) exec python -u handler.py "$@" ;;
  lb) exec python -u -m worker.serve --lb --host 0.0.0.0 --port "${PORT:-80}" "$@" ;;
  *) echo "WORKER_MODE must be queue or lb, not '${WORKER_MODE}'" >&2; exit 2 ;;
esac

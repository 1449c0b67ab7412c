"""RunPod serverless entry point for OOTDiffusion virtual try-on.

`python handler.py` loads the models once (cold start, timed in the log), then hands the job
loop to the runpod SDK, which picks its mode from the command line and environment: the real
queue on RunPod, `--test_input '<json>'` or `test_input.json` for one local job, and
`--rp_serve_api` for the local HTTP API. Importing this module loads nothing and starts
nothing, so tests can call `handler` directly (the models then load on the first job).
"""

import logging
import os
import sys

import runpod
from runpod.serverless.modules.rp_logger import RunPodLogger

from worker.config import Settings
from worker.job import handle
from worker.runtime import WeightsMissingError, get_runtime
from worker.threads import size_thread_pools


def handler(job: dict) -> dict:
    """One RunPod job: the try-on result, or `{"error": "<sentence>"}` for an expected failure."""
    settings = Settings.from_env()
    return handle(job, get_runtime(settings), settings)


def main() -> None:
    """Load the models before the first job (so cold start is paid once, at start-up), then serve."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not (os.environ.get("RUNPOD_LOG_LEVEL") or os.environ.get("RUNPOD_DEBUG_LEVEL")):
        # The SDK defaults to DEBUG, where it logs whole jobs, per-job s3Config secrets included.
        # `--rp_log_level` or RUNPOD_LOG_LEVEL still choose another level explicitly.
        RunPodLogger().set_level("INFO")
    size_thread_pools()
    try:
        get_runtime(Settings.from_env())
    except (WeightsMissingError, ValueError) as error:
        logging.getLogger("handler").error("cannot start: %s", error)
        sys.exit(1)
    runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()

"""`python -m worker.serve`: a local endpoint that speaks RunPod's public endpoint API.

Client code written for a RunPod endpoint (the runpod SDK's `runpod.Endpoint` and
`AsyncioEndpoint`, or plain HTTP to `/v2/{endpoint_id}/...`) runs against it unchanged: set
`RUNPOD_ENDPOINT_BASE_URL=http://127.0.0.1:8000/v2`. It serves `run`, `runsync`, `status`
(GET and POST), `stream`, `cancel`, `health` and `purge-queue`, runs each job with the same
job code as the deployed worker (`worker.job.handle`), one at a time as one GPU worker would,
and takes a request's `s3Config` and `webhook` as RunPod does.

It is a stand-in for the platform on one machine, for development and CI, not a production
queue: jobs are held in memory and lost on exit, there is one worker and no scaling (on
RunPod that is the platform's job). It listens on 127.0.0.1 unless told otherwise; set
`LOCAL_API_KEY` to require `Authorization: Bearer <key>` (as RunPod does) before binding to
anything else. The playground page (`worker.playground`) is at `/`.

`--lb` serves the other endpoint form instead, a RunPod load-balancing endpoint (`worker.lb`):
what the image runs with `WORKER_MODE=lb`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from functools import partial

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request

from worker.config import MB, Settings
from worker.httpapi import ApiError, install_error_handlers, key_check, read_body
from worker.job import ProgressSink, handle
from worker.jobqueue import FINAL, IN_QUEUE, JobQueue
from worker.lb import LbSettings, serve_lb
from worker.playground import install_playground
from worker.runtime import Runtime
from worker.startup import StartupError, start
from worker.webhook import deliver, webhook_problem

log = logging.getLogger("worker.serve")

# RunPod's limits on request bodies, and on how long /runsync holds the connection (ms).
RUN_BODY_LIMIT = 10 * MB
RUNSYNC_BODY_LIMIT = 20 * MB
RUNSYNC_WAIT_MS = 90_000
RUNSYNC_WAIT_RANGE_MS = (1_000, 300_000)
# RunPod keeps /run results 30 minutes after they finish.
DEFAULT_RESULT_TTL = 1800.0
# What a request body may carry besides `input`, as RunPod takes it.
REQUEST_FIELDS = ("input", "s3Config", "webhook", "policy")
# The endpoint id the playground page runs its jobs under (any id works; this one names them).
PLAYGROUND_ENDPOINT = "playground"


@dataclass(frozen=True)
class ServeSettings:
    """The local server's own settings (the worker's are `worker.config.Settings`)."""

    result_ttl: float = DEFAULT_RESULT_TTL
    api_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServeSettings:
        env = os.environ if env is None else env
        raw = (env.get("LOCAL_RESULT_TTL") or "").strip()
        try:
            ttl = float(raw) if raw else DEFAULT_RESULT_TTL
        except ValueError:
            raise ValueError(f"LOCAL_RESULT_TTL must be a number of seconds, not {raw!r}") from None
        if ttl <= 0:
            raise ValueError(f"LOCAL_RESULT_TTL must be > 0, not {raw!r}")
        return cls(result_ttl=ttl, api_key=(env.get("LOCAL_API_KEY") or "").strip() or None)


def start_runtime(settings: Settings) -> Runtime:
    """Start the worker before the first request, as `handler.py` does (device policy, models,
    warm-up): the one place the server starts it."""
    return start(settings)


def create_app(queue: JobQueue, settings: Settings, api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving RunPod's endpoint routes over `queue` (any endpoint id), and the
    playground at `/`, which runs its jobs through them as endpoint `PLAYGROUND_ENDPOINT`."""
    app = FastAPI(title="ootd-worker local endpoint", description=__doc__.split("\n\n")[0])
    install_error_handlers(app)
    router = APIRouter(prefix="/v2/{endpoint_id}", dependencies=[Depends(key_check(api_key))])

    @router.post("/run")
    async def run(request: Request) -> dict:
        return queue.submit(await _job_request(request, RUN_BODY_LIMIT))

    @router.post("/runsync")
    async def runsync(request: Request, wait: str | None = None) -> dict:
        seconds = _wait_seconds(wait)
        job = queue.submit(await _job_request(request, RUNSYNC_BODY_LIMIT), sync=True)
        view = await asyncio.to_thread(queue.wait, job["id"], seconds)
        if view is None or view["status"] not in FINAL:
            # Like RunPod: the id and state only; the client polls /status for the rest.
            return {"id": job["id"], "status": view["status"] if view else IN_QUEUE}
        return view

    @router.api_route("/status/{job_id}", methods=["GET", "POST"])
    def status(job_id: str) -> dict:
        return _found(queue.status(job_id), job_id)

    @router.api_route("/stream/{job_id}", methods=["GET", "POST"])
    def stream(job_id: str) -> dict:
        return _found(queue.stream(job_id), job_id)

    @router.post("/cancel/{job_id}")
    def cancel(job_id: str) -> dict:
        view = _found(queue.cancel(job_id), job_id)
        return {"id": view["id"], "status": view["status"]}

    @router.get("/health")
    def health() -> dict:
        return queue.health()

    @router.post("/purge-queue")
    def purge_queue() -> dict:
        return {"removed": queue.purge(), "status": "completed"}

    app.include_router(router)
    base = f"/v2/{PLAYGROUND_ENDPOINT}"
    routes = {name: f"{base}/{name}" for name in ("run", "stream", "status", "cancel")}
    install_playground(app, mode="queue", routes=routes, settings=settings, api_key=api_key)
    return app


async def _job_request(request: Request, limit: int) -> dict:
    """The request body as RunPod takes it: a JSON object with an `input` object."""
    body = await read_body(request, limit)
    try:
        data = json.loads(body)
    except ValueError:
        raise ApiError(400, "the request body must be JSON: {\"input\": {...}}") from None
    if not isinstance(data, dict) or not isinstance(data.get("input"), dict):
        raise ApiError(400, "the request body must be a JSON object with an \"input\" object")
    webhook = data.get("webhook")
    problem = webhook_problem(webhook) if webhook is not None else None
    if problem:
        raise ApiError(400, f"webhook: {problem}")
    return {key: data[key] for key in REQUEST_FIELDS if data.get(key) is not None}


def _wait_seconds(raw: str | None) -> float:
    """`?wait=` in ms, RunPod's default when absent, kept within RunPod's range."""
    if raw is None or raw == "":
        return RUNSYNC_WAIT_MS / 1000
    try:
        wait = int(raw)
    except ValueError:
        raise ApiError(400, f"wait must be a whole number of milliseconds, not {raw[:20]!r}") from None
    low, high = RUNSYNC_WAIT_RANGE_MS
    return min(max(wait, low), high) / 1000


def _found(view: dict | None, job_id: str) -> dict:
    if view is None:
        raise ApiError(404, f"no job {job_id[:80]!r}: unknown, or finished more than the retention time ago")
    return view


def _job_function(runtime: Runtime, settings: Settings):
    """Run one job with the production job code, its progress going to the queue."""

    def run(job: dict, progress: ProgressSink) -> dict:
        return handle(job, runtime, settings, progress=progress)

    return run


def _send_webhook(url: str, payload: dict) -> None:
    """Deliver off the worker thread, so a slow receiver never holds up the next job."""
    threading.Thread(target=partial(deliver, url, payload), name="webhook", daemon=True).start()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument(
        "--lb", action="store_true",
        help="serve a RunPod load-balancing endpoint (GET /ping, POST /tryon) instead of the queue API",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        settings = Settings.from_env()
        serve_settings = ServeSettings.from_env()
        lb_settings = LbSettings.from_env() if args.lb else None
    except ValueError as error:
        log.error("cannot start: %s", error)
        return 1
    if serve_settings.api_key is None and not _is_loopback(args.host):
        log.warning(
            "listening on %s without LOCAL_API_KEY: anyone who can reach it can run jobs "
            "(on a RunPod load-balancing endpoint, RunPod's own API key guards it)",
            args.host,
        )
    if lb_settings is not None:
        return serve_lb(args.host, args.port, settings, serve_settings.api_key, lb_settings)
    try:
        runtime = start_runtime(settings)
    except StartupError as error:
        log.error("cannot start: %s", error)
        return 1
    queue = JobQueue(
        _job_function(runtime, settings), result_ttl=serve_settings.result_ttl, on_finished=_send_webhook
    )
    queue.start()
    log.info(
        "serving RunPod's endpoint API on http://%s:%d/v2/<endpoint id>/ and the playground at / "
        "(API key %s, results kept %g s)",
        args.host,
        args.port,
        "required" if serve_settings.api_key else "not required",
        serve_settings.result_ttl,
    )
    app = create_app(queue, settings, serve_settings.api_key)
    uvicorn.run(app, host=args.host, port=args.port, log_level=os.environ.get("UVICORN_LOG_LEVEL", "info"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m worker.serve --lb`: the worker as a RunPod load-balancing endpoint.

On a load-balancing endpoint RunPod sends each request straight to a worker's own HTTP server,
with no queue in between and no retry: a worker that cannot take a request must say so at once,
and its health answer decides whether it gets traffic at all. So this server:

- listens before the models load, and answers `GET /ping` with 204 while the worker starts
  (models, warm-up: `worker.startup.start`), 200 once it is ready, and 503 after a GPU failure
  that asked for a fresh worker (the job answer's `refresh_worker`), so the balancer drops it;
  a start-up that fails ends the process, as `handler.py` does;
- answers `POST /tryon` synchronously: the job's input, bare or as `{"input": ..., "s3Config":
  ...}` like a queue request, gives the job's output (200), `{"error": ...}` with 400 for bad
  input (checked before the request waits for the GPU) and 500 for a job that failed;
- runs one job at a time on the GPU (`GpuLine`): at most `LB_MAX_WAITING` requests wait for
  it, and any beyond are refused with 503 and `Retry-After` at once; a request whose client has
  hung up leaves the line without running, and a running job whose client has gone is stopped
  at its next progress update;
- refuses bodies over RunPod's 30 MB payload limit with 413, checks `LOCAL_API_KEY` on every
  route but `/ping` and the playground page, and serves the playground at `/`.

`PORT_HEALTH`, when set to another port than the API's, gets a second listening socket that
answers `/ping` only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse

from worker.config import MB, Settings, _positive
from worker.errors import InputError, JobError
from worker.httpapi import ApiError, install_error_handlers, key_check, read_body
from worker.job import run as run_job
from worker.job import validate
from worker.jobqueue import JobCancelled
from worker.playground import install_playground
from worker.runtime import Runtime
from worker.startup import StartupError, start

log = logging.getLogger("worker.lb")

# RunPod's payload limit on a load-balancing endpoint, for requests and answers alike.
LB_PAYLOAD_LIMIT = 30 * MB
DEFAULT_MAX_WAITING = 2
# What a wrapped request may carry (a queue request's `webhook` and `policy` mean nothing here:
# the answer is the response).
WRAPPED_FIELDS = ("input", "s3Config")
# Seconds a job is assumed to take before one has run, for Retry-After.
FIRST_JOB_ESTIMATE = 20.0
RETRY_AFTER_RANGE = (1, 300)
RETRY_AFTER_STARTING = 10

MAX_PORT = 65535

STARTING, READY, FAILED, UNHEALTHY = "starting", "ready", "failed", "unhealthy"


@dataclass(frozen=True)
class LbSettings:
    """The load-balancing server's own settings (the worker's are `worker.config.Settings`)."""

    max_waiting: int = DEFAULT_MAX_WAITING
    health_port: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LbSettings:
        env = os.environ if env is None else env
        health_port = _positive(env, "PORT_HEALTH", None, int)
        if health_port is not None and health_port > MAX_PORT:
            raise ValueError(f"PORT_HEALTH must be a port number up to {MAX_PORT}, not {health_port}")
        return cls(
            max_waiting=_positive(env, "LB_MAX_WAITING", DEFAULT_MAX_WAITING, int, allow_zero=True),
            health_port=health_port,
        )


def lb_worker_settings(settings: Settings, env: Mapping[str, str] | None = None) -> Settings:
    """The worker's settings for this endpoint form: results may be as large as RunPod's 30 MB
    answer limit here (a queue endpoint's /run allows 10 MB), unless MAX_INLINE_BYTES says."""
    env = os.environ if env is None else env
    if (env.get("MAX_INLINE_BYTES") or "").strip():
        return settings
    return replace(settings, max_inline_bytes=LB_PAYLOAD_LIMIT)


class GpuLine:
    """One GPU, one job at a time, and at most `max_waiting` requests waiting for it.

    Used from the event loop only (no locks needed). `admit` says at once whether a request may
    join; `wait_turn` waits for the GPU unless the client leaves first; the turn is given back
    with `end_turn`, the place with `leave`.
    """

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self.admitted = 0  # the running request, if any, and those waiting
        self.running = False
        self._turn = asyncio.Lock()
        self._durations: deque[float] = deque(maxlen=8)

    def has_room(self) -> bool:
        return self.admitted < 1 + self.max_waiting

    def admit(self) -> bool:
        if not self.has_room():
            return False
        self.admitted += 1
        return True

    def leave(self) -> None:
        self.admitted -= 1

    async def wait_turn(self, client_gone: asyncio.Future) -> bool:
        """Wait for the GPU; False when the client left first (the place is then not taken)."""
        acquire = asyncio.ensure_future(self._turn.acquire())
        await asyncio.wait({acquire, client_gone}, return_when=asyncio.FIRST_COMPLETED)
        if acquire.done() and not client_gone.done():
            self.running = True
            return True
        if acquire.done():
            self._turn.release()
        else:
            acquire.cancel()  # asyncio.Lock passes a turn given meanwhile on to the next waiter
            await asyncio.gather(acquire, return_exceptions=True)
        return False

    def end_turn(self, seconds: float | None) -> None:
        if seconds is not None:
            self._durations.append(seconds)
        self.running = False
        self._turn.release()

    @property
    def waiting(self) -> int:
        return self.admitted - self.running

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the jobs ahead at the recent mean job time."""
        mean = sum(self._durations) / len(self._durations) if self._durations else FIRST_JOB_ESTIMATE
        low, high = RETRY_AFTER_RANGE
        return min(max(math.ceil(mean * max(self.admitted, 1)), low), high)


class LbWorker:
    """The worker behind the HTTP routes: its start-up state and the one job it runs at a time."""

    def __init__(self, settings: Settings, start_runtime: Callable[[Settings], Runtime] = start) -> None:
        self.settings = settings
        self.state = STARTING
        self.problem: str | None = None
        self.runtime: Runtime | None = None
        self._start_runtime = start_runtime
        self.on_failed: Callable[[], None] = lambda: None

    def start_up(self) -> None:
        """Load the models and warm up (on a thread, while the server answers /ping with 204)."""
        try:
            self.runtime = self._start_runtime(self.settings)
        except (StartupError, ValueError) as error:
            self.state, self.problem = FAILED, str(error)
            log.error("cannot start: %s", error)
            self.on_failed()
            return
        except Exception:  # a bug: the log has its traceback, and the worker must not take jobs
            self.state, self.problem = FAILED, "the start-up raised (see the log)"
            log.exception("cannot start")
            self.on_failed()
            return
        self.state = READY
        log.info("ready: /ping answers 200")

    def run(self, job: dict, client_gone: threading.Event) -> tuple[int, dict] | None:
        """Run one job on this thread: (status, answer), or None when its client has gone."""
        job_id = job["id"]
        if client_gone.is_set():
            log.info("job %s dropped before it ran: its client has gone", job_id)
            return None

        def progress(update: dict) -> None:
            log.info("job %s progress: %s", job_id, update)
            if client_gone.is_set():
                raise JobCancelled(job_id)

        try:
            return 200, run_job(job, self.runtime, self.settings, progress)
        except JobCancelled:
            log.info("job %s stopped: its client has gone", job_id)
            return None
        except InputError as error:
            log.warning("job %s refused: %s", job_id, error)
            return 400, {"error": str(error)}
        except JobError as error:
            log.warning("job %s failed: %s", job_id, error)
            if error.refresh_worker:
                self.state = UNHEALTHY
                self.problem = f"this worker needs replacing after a GPU failure: {error}"
                log.error("unhealthy from now on: /ping answers 503 so that RunPod replaces this worker")
            return 500, {"error": str(error)}
        except Exception as error:  # a bug: logged with its traceback, answered with a sentence
            log.exception("job %s raised", job_id)
            name = type(error).__name__
            return 500, {"error": f"the job failed inside the worker ({name}); see the worker's log"}


def create_lb_app(worker: LbWorker, lb_settings: LbSettings, api_key: str | None = None) -> FastAPI:
    """The load-balancing endpoint's app: `/ping`, `POST /tryon`, and the playground."""
    app = FastAPI(title="ootd-worker load-balancing endpoint", description=__doc__.split("\n\n")[0])
    install_error_handlers(app)
    authorize = key_check(api_key)
    gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu")
    line = GpuLine(lb_settings.max_waiting)

    if lb_settings.health_port is not None:
        app.add_middleware(PingOnlyPort, port=lb_settings.health_port)

    @app.get("/ping")
    def ping() -> Response:
        if worker.state == READY:  # RunPod reads the status code; the counts are for people
            return JSONResponse({"status": READY, "running": int(line.running), "waiting": line.waiting})
        if worker.state == STARTING:
            return Response(status_code=204)
        return JSONResponse({"error": worker.problem}, status_code=503)

    @app.post("/tryon", dependencies=[Depends(authorize)])
    async def tryon(request: Request) -> Response:
        if worker.state == READY and not line.has_room():
            await read_body(request, LB_PAYLOAD_LIMIT, keep=False)  # read, so that the client hears
            raise busy()
        body = await read_body(request, LB_PAYLOAD_LIMIT)
        if worker.state != READY:
            starting = worker.state == STARTING
            reason = "the worker is starting (models loading)" if starting else worker.problem
            retry = {"Retry-After": str(RETRY_AFTER_STARTING)} if starting else {}
            raise ApiError(503, f"{reason}; send the request again", retry)
        job = await asyncio.to_thread(checked_job, body)  # a 30 MB body parses off the event loop
        if not line.admit():
            raise busy()
        try:
            return await _run_in_line(request, job)
        finally:
            line.leave()

    def busy() -> ApiError:
        return ApiError(
            503,
            f"the worker is busy: one job runs and {line.max_waiting} wait (LB_MAX_WAITING); "
            "send the request again later",
            {"Retry-After": str(line.retry_after())},
        )

    def checked_job(body: bytes) -> dict:
        """The job, its input checked as far as it can be without the GPU (400 otherwise)."""
        job = tryon_job(body)
        try:
            validate(job["input"], worker.runtime, worker.settings)
        except InputError as error:
            raise ApiError(400, str(error)) from None
        return job

    async def _run_in_line(request: Request, job: dict) -> Response:
        client_gone = asyncio.ensure_future(_until_disconnected(request))
        try:
            if not await line.wait_turn(client_gone):
                log.info("job %s dropped while it waited: its client has gone", job["id"])
                return Response(status_code=499)
            gone = threading.Event()

            def on_gone(future: asyncio.Future) -> None:
                if not future.cancelled():
                    gone.set()
                    log.info("job %s: its client has gone; the job stops at its next step", job["id"])

            client_gone.add_done_callback(on_gone)
            started = time.perf_counter()
            outcome = None
            try:
                outcome = await asyncio.get_running_loop().run_in_executor(gpu, worker.run, job, gone)
            finally:
                line.end_turn(time.perf_counter() - started if outcome is not None else None)
        finally:
            client_gone.cancel()
        if outcome is None:
            return Response(status_code=499)  # nobody reads it: the client has gone
        status, body = outcome
        return JSONResponse(body, status_code=status)

    routes = {"tryon": "/tryon"}
    install_playground(app, mode="lb", routes=routes, settings=worker.settings, api_key=api_key)
    return app


class PingOnlyPort:
    """ASGI middleware: requests that arrive on `port` (PORT_HEALTH) get /ping and nothing else.

    Plain ASGI: every other request passes through untouched, its `receive` included, which
    /tryon watches for the client's hang-up."""

    def __init__(self, app: Any, port: int) -> None:
        self.app, self.port = app, port

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        server = scope.get("server") or (None, None)
        if scope["type"] == "http" and server[1] == self.port and scope["path"] != "/ping":
            refusal = JSONResponse({"error": "this port answers /ping only"}, status_code=404)
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _until_disconnected(request: Request) -> None:
    """Return once the client has closed its connection (its body already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def tryon_job(body: bytes) -> dict:
    """The job a /tryon body asks for: `{"id", "input"}` plus `s3Config` when sent.

    The body is the job's input itself, or a queue request's `{"input": {...}, "s3Config": ...}`
    (told apart by its `input` object: no job field has that name).
    """
    try:
        data: Any = json.loads(body)
    except ValueError:
        raise ApiError(400, "the request body must be JSON: the job's input, or {\"input\": {...}}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object: the job's input, or {\"input\": {...}}")
    job: dict[str, Any] = {"id": f"lb-{uuid.uuid4()}"}
    if isinstance(data.get("input"), dict):
        unknown = [key for key in data if key not in WRAPPED_FIELDS]
        if unknown:
            raise ApiError(
                400,
                f"a wrapped request takes {' and '.join(WRAPPED_FIELDS)} only, not {unknown[0][:40]!r} "
                "(this endpoint answers with the result: no webhook, no policy)",
            )
        job["input"] = data["input"]
        if data.get("s3Config") is not None:
            job["s3Config"] = data["s3Config"]
    else:
        job["input"] = data
    return job


def serve_lb(host: str, port: int, settings: Settings, api_key: str | None, lb_settings: LbSettings) -> int:
    """Serve until stopped (SIGTERM/SIGINT: requests in progress finish first); 1 when the
    start-up failed."""
    worker = LbWorker(lb_worker_settings(settings))
    app = create_lb_app(worker, lb_settings, api_key)
    level = os.environ.get("UVICORN_LOG_LEVEL", "info")
    config = uvicorn.Config(app, host=host, port=port, log_level=level)
    server = uvicorn.Server(config)
    worker.on_failed = lambda: setattr(server, "should_exit", True)
    sockets = [config.bind_socket()]
    if lb_settings.health_port not in (None, port):
        sockets.append(uvicorn.Config(app, host=host, port=lb_settings.health_port).bind_socket())
    threading.Thread(target=worker.start_up, name="startup", daemon=True).start()
    log.info(
        "serving a load-balancing endpoint on http://%s:%d (POST /tryon, GET /ping%s; API key %s; "
        "at most %d request(s) wait for the GPU)",
        host, port, f" also on port {lb_settings.health_port}" if len(sockets) > 1 else "",
        "required" if api_key else "not required", lb_settings.max_waiting,
    )  # fmt: skip
    server.run(sockets=sockets)
    return 1 if worker.state == FAILED else 0

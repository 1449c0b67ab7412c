"""The job queue behind `python -m worker.serve`: one worker thread, RunPod's job states.

RunPod runs a job on one GPU worker at a time (this worker's concurrency is 1), so the local
stand-in does the same: jobs wait in a FIFO and one background thread runs them in order. What
a client reads back is shaped like RunPod's `/status` answer (`id`, `status`, `delayTime`,
`executionTime`, `output` or `error`), and a handler's result is packaged the way the runpod
SDK packages it on the platform (`error` and `refresh_worker` taken out of the output).

This is a development stand-in, not a production queue: jobs live in memory, are lost when
the process stops, and finished ones are forgotten `result_ttl` seconds after they end.
Nothing here knows about HTTP or the models: the job function is passed in.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import runpod

from worker.job import ProgressSink

log = logging.getLogger(__name__)

IN_QUEUE = "IN_QUEUE"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
FINAL = frozenset((COMPLETED, FAILED, CANCELLED))

JobFunction = Callable[[dict, ProgressSink], Any]
FinishedHook = Callable[[str, dict], None]


class JobCancelled(Exception):
    """Raised from the progress sink of a job cancelled while it runs, to stop it early.

    Deliberately not a RuntimeError (the job code inspects those for CUDA out-of-memory) and
    not a JobError (which the job code turns into a result): it must unwind the whole job.
    """


@dataclass
class LocalJob:
    """One job and its life: the request as RunPod passes it to a worker, then its outcome."""

    id: str
    request: dict
    submitted: float
    started: float | None = None
    finished: float | None = None
    status: str = IN_QUEUE
    output: Any = None
    error: str | None = None
    expires: float | None = None
    stream: list[dict] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def worker_job(self) -> dict:
        """The job dict the handler gets: `id`, `input`, and `s3Config`/`webhook` when sent."""
        return {"id": self.id, **self.request}

    def view(self) -> dict:
        """RunPod's status answer for this job (times in milliseconds)."""
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started is not None:
            body["delayTime"] = round((self.started - self.submitted) * 1000)
            if self.finished is not None:
                body["executionTime"] = round((self.finished - self.started) * 1000)
        if self.output is not None:
            body["output"] = self.output
        if self.error is not None:
            body["error"] = self.error
        return body


def package(job_id: str, result: Any) -> tuple[str, Any, str | None]:
    """(status, output, error) from a handler's return value, as the runpod SDK packages it.

    A dict loses `error` (a truthy one fails the job) and `refresh_worker` (on RunPod it
    restarts the worker; here there is nothing to restart, so it is only logged); what is left
    is the output, or none when nothing is left.
    """
    if not isinstance(result, dict):
        return COMPLETED, result, None
    rest = dict(result)
    error = rest.pop("error", None)
    if rest.pop("refresh_worker", None):
        log.warning("job %s asked for a fresh worker (RunPod would restart it; here it goes on)", job_id)
    if error:
        return FAILED, rest or None, str(error)
    return COMPLETED, rest or None, None


def raised_error(error: BaseException) -> str:
    """The `error` string of a job whose handler raised: the JSON the runpod SDK reports."""
    return json.dumps(
        {
            "error_type": str(type(error)),
            "error_message": str(error),
            "error_traceback": traceback.format_exc(),
            "hostname": socket.gethostname(),
            "worker_id": "local",
            "runpod_version": runpod.__version__,
        }
    )


class JobQueue:
    """FIFO of jobs run one at a time on a background thread; every method is thread-safe."""

    def __init__(
        self,
        run: JobFunction,
        *,
        result_ttl: float,
        on_finished: FinishedHook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run = run
        self._ttl = result_ttl
        self._on_finished = on_finished
        self._clock = clock
        self._lock = threading.Condition()
        self._jobs: dict[str, LocalJob] = {}
        self._pending: deque[LocalJob] = deque()
        self._running: LocalJob | None = None
        self._counts: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._work, name="local-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: dict, *, sync: bool = False) -> dict:
        """Queue a job (`request` holds `input` and optionally `s3Config`, `webhook`); its view."""
        job_id = f"{'sync-' if sync else ''}{uuid.uuid4()}"
        job = LocalJob(id=job_id, request=request, submitted=self._clock())
        with self._lock:
            self._expire()
            self._jobs[job.id] = job
            self._pending.append(job)
            self._lock.notify_all()
            view, waiting = job.view(), len(self._pending)
        log.info("job %s queued (%d waiting)", job.id, waiting)
        return view

    def status(self, job_id: str) -> dict | None:
        """The job's view, or None when it is unknown or its result has expired."""
        with self._lock:
            self._expire()
            job = self._jobs.get(job_id)
            return job.view() if job else None

    def wait(self, job_id: str, timeout: float) -> dict | None:
        """Wait up to `timeout` seconds for the job to end; its view (finished or not)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return None
        job.done.wait(timeout)
        with self._lock:
            return job.view()

    def cancel(self, job_id: str) -> dict | None:
        """Cancel a job: a queued one never runs; a running one is stopped at its next progress
        update (between diffusion steps) and whatever it returns is discarded. A finished job
        keeps its state."""
        with self._lock:
            self._expire()
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.status == IN_QUEUE:
                self._pending.remove(job)
            if job.status in (IN_QUEUE, IN_PROGRESS):
                self._end(job, CANCELLED)
                log.info("job %s cancelled", job.id)
            return job.view()

    def purge(self) -> int:
        """Cancel every queued job (a running one is left alone, as on RunPod); how many."""
        with self._lock:
            removed = list(self._pending)
            self._pending.clear()
            for job in removed:
                self._end(job, CANCELLED)
        log.info("purged %d queued job(s)", len(removed))
        return len(removed)

    def stream(self, job_id: str) -> dict | None:
        """RunPod's `/stream` answer: what was produced since the last call (progress updates,
        then the output), each chunk given once, so a client can poll until the job ends."""
        with self._lock:
            self._expire()
            job = self._jobs.get(job_id)
            if job is None:
                return None
            chunks, job.stream = job.stream, []
            body: dict[str, Any] = {"id": job.id, "status": job.status, "stream": chunks}
            if job.error is not None:
                body["error"] = job.error
            return body

    def health(self) -> dict:
        """Job counts by state and the one worker's state, in RunPod's `/health` shape."""
        with self._lock:
            busy = self._running is not None
            return {
                "jobs": {
                    "completed": self._counts[COMPLETED],
                    "failed": self._counts[FAILED],
                    "inProgress": int(busy and self._running.status == IN_PROGRESS),
                    "inQueue": len(self._pending),
                    "retried": 0,
                },
                "workers": {
                    "idle": int(not busy),
                    "initializing": 0,
                    "ready": int(not busy),
                    "running": int(busy),
                    "throttled": 0,
                    "unhealthy": 0,
                },
            }

    # The worker thread.

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._pending:
                    self._lock.wait()
                job = self._pending.popleft()
                job.status, job.started = IN_PROGRESS, self._clock()
                self._running = job
            self._execute(job)

    def _execute(self, job: LocalJob) -> None:
        try:
            status, output, error = package(job.id, self._run(job.worker_job(), self._progress_sink(job)))
        except JobCancelled:
            status, output, error = CANCELLED, None, None
        except Exception as exc:  # a bug in the job code: reported like the SDK does, server keeps going
            log.exception("job %s raised", job.id)
            status, output, error = FAILED, None, raised_error(exc)
        with self._lock:
            self._running = None
            if job.status == CANCELLED:
                log.info("job %s ended after it was cancelled; its result is discarded", job.id)
                return
            job.output, job.error = output, error
            if status == COMPLETED and output is not None:
                job.stream.append({"output": output})
            self._end(job, status)
            final = job.view()
            webhook = job.request.get("webhook")
        log.info("job %s %s in %d ms", job.id, status, final.get("executionTime", 0))
        if webhook and self._on_finished is not None:
            self._on_finished(webhook, final)

    def _progress_sink(self, job: LocalJob) -> ProgressSink:
        def update(progress: dict) -> None:
            with self._lock:
                if job.status == CANCELLED:
                    raise JobCancelled(job.id)
                job.output = progress
                job.stream.append({"output": progress})

        return update

    def _end(self, job: LocalJob, status: str) -> None:
        """Put the job in a final state (lock held): counted, waiters woken, expiry set."""
        now = self._clock()
        job.status, job.finished, job.expires = status, now, now + self._ttl
        if status == CANCELLED:
            job.output = None
        self._counts[status] += 1
        job.done.set()

    def _expire(self) -> None:
        """Forget finished jobs whose retention time has passed (lock held)."""
        now = self._clock()
        expired = [key for key, job in self._jobs.items() if job.expires is not None and job.expires <= now]
        for job_id in expired:
            del self._jobs[job_id]

"""The local server's queue on its own: order, packaging, failures, cancelling, retention.

The job functions here are small Python functions standing in for the worker's job code (the
queue's input, not the thing under test); tests/test_serve.py runs the real job code behind it.
"""

from __future__ import annotations

import json
import threading

import pytest
from worker_support import HandClock

from worker.jobqueue import CANCELLED, COMPLETED, FAILED, JobQueue, package


def started(run, **kwargs) -> JobQueue:
    queue = JobQueue(run, result_ttl=kwargs.pop("result_ttl", 60.0), **kwargs)
    queue.start()
    return queue


def test_package_follows_the_runpod_sdk() -> None:
    assert package("j", {"images": [1], "seed": 3}) == (COMPLETED, {"images": [1], "seed": 3}, None)
    assert package("j", {"error": "bad input", "refresh_worker": True}) == (FAILED, None, "bad input")
    assert package("j", {"error": "too big", "warnings": ["w"]}) == (FAILED, {"warnings": ["w"]}, "too big")
    assert package("j", {"images": [], "refresh_worker": True}) == (COMPLETED, {"images": []}, None)
    assert package("j", "text") == (COMPLETED, "text", None)
    assert package("j", {}) == (COMPLETED, None, None)


def test_jobs_run_in_order_on_one_thread_and_a_raising_job_does_not_stop_the_next() -> None:
    seen: list[tuple[str, str]] = []

    def run(job: dict, progress) -> dict:
        seen.append((job["input"]["n"], threading.current_thread().name))
        if job["input"]["n"] == "b":
            raise KeyError("boom")
        return {"n": job["input"]["n"], "s3": job.get("s3Config")}

    queue = started(run)
    ids = [queue.submit({"input": {"n": n}, "s3Config": {"bucketName": n}})["id"] for n in "abc"]
    views = [queue.wait(job_id, 10) for job_id in ids]
    assert [n for n, _ in seen] == ["a", "b", "c"] and len({name for _, name in seen}) == 1
    assert views[0]["status"] == COMPLETED and views[0]["output"] == {"n": "a", "s3": {"bucketName": "a"}}
    assert views[1]["status"] == FAILED and "output" not in views[1]
    error = json.loads(views[1]["error"])
    assert error["error_type"] == "<class 'KeyError'>" and error["error_message"] == "'boom'"
    assert "raise KeyError" in error["error_traceback"]
    assert views[2]["status"] == COMPLETED
    assert queue.health()["jobs"] == {
        "completed": 2, "failed": 1, "inProgress": 0, "inQueue": 0, "retried": 0
    }  # fmt: skip


def test_progress_shows_as_output_and_a_cancelled_running_job_stops_at_its_next_update() -> None:
    reported, release = threading.Event(), threading.Event()
    steps: list[int] = []

    def run(job: dict, progress) -> dict:
        if job["input"].get("quick"):
            return {"quick": True}
        for step in range(1, 100):
            progress({"step": step})  # raises once the job is cancelled
            steps.append(step)
            if step == 1:
                reported.set()
                release.wait(10)
        return {"finished": True}

    queue = started(run)
    job_id = queue.submit({"input": {}})["id"]
    assert reported.wait(10)
    view = queue.status(job_id)
    assert view["status"] == "IN_PROGRESS" and view["output"] == {"step": 1}
    assert queue.cancel(job_id)["status"] == CANCELLED
    release.set()
    follower = queue.submit({"input": {"quick": True}})["id"]
    assert queue.wait(follower, 10)["status"] == COMPLETED
    assert steps == [1]  # stopped at the first update after the cancel
    assert queue.status(job_id)["status"] == CANCELLED and "output" not in queue.status(job_id)


def test_finished_jobs_are_forgotten_after_the_retention_time() -> None:
    clock = HandClock()
    queue = started(lambda job, progress: {"ok": 1}, result_ttl=30.0, clock=clock)
    job_id = queue.submit({"input": {}})["id"]
    assert queue.wait(job_id, 10)["status"] == COMPLETED
    clock.now += 29
    assert queue.status(job_id)["output"] == {"ok": 1}
    clock.now += 2
    assert queue.status(job_id) is None and queue.stream(job_id) is None and queue.cancel(job_id) is None


def test_finished_hook_gets_the_final_view_but_not_for_cancelled_jobs() -> None:
    calls: list[tuple[str, dict]] = []
    gate, called = threading.Event(), threading.Event()

    def run(job: dict, progress) -> dict:
        gate.wait(10)
        return {"ok": 1}

    def hook(url: str, view: dict) -> None:
        calls.append((url, view))
        called.set()

    queue = started(run, on_finished=hook)
    first = queue.submit({"input": {}, "webhook": "https://example.com/a"})["id"]
    second = queue.submit({"input": {}, "webhook": "https://example.com/b"})["id"]
    assert queue.cancel(second)["status"] == CANCELLED
    gate.set()
    final = queue.wait(first, 10)
    assert called.wait(10)
    queue.wait(second, 1)
    assert calls == [("https://example.com/a", final)] and final["status"] == COMPLETED


@pytest.mark.parametrize("ttl", [0.0, -1.0])
def test_serve_settings_refuse_a_non_positive_ttl(ttl: float) -> None:
    from worker.serve import ServeSettings

    with pytest.raises(ValueError, match="LOCAL_RESULT_TTL must be > 0"):
        ServeSettings.from_env({"LOCAL_RESULT_TTL": str(ttl)})
    settings = ServeSettings.from_env({"LOCAL_API_KEY": " secret-key ", "LOCAL_RESULT_TTL": "5"})
    assert settings.api_key == "secret-key" and settings.result_ttl == 5.0 and "secret" not in repr(settings)

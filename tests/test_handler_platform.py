"""`python handler.py` in RunPod's real worker mode against a fake job server on 127.0.0.1.

This is the path a deployed worker takes (not the local test modes): the SDK takes jobs from
RUNPOD_WEBHOOK_GET_JOB and POSTs progress and results to RUNPOD_WEBHOOK_POST_OUTPUT. The test
checks what reaches the platform: a bad request as an error string, progress updates during
diffusion (never after the last step), and the next job's result.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from worker_support import REPO, LoopbackHTTPServer, QuietHandler, data_uri, image_bytes, stop_process


class FakePlatform:
    """Hands out queued jobs on GET /job-take/..., records every POST to /job-done/..."""

    def __init__(self, jobs: list[dict]) -> None:
        self.jobs = list(jobs)
        self.posts: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        platform = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                job = None
                if path.startswith("/job-take/"):
                    with platform.lock:
                        job = platform.jobs.pop(0) if platform.jobs else None
                elif path.startswith("/job-stop/"):
                    time.sleep(0.5)  # a long-poll that finds nothing
                if job is None:
                    self.send_response(204)
                    self.end_headers()
                    return
                body = json.dumps(job).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                job_id = urlsplit(self.path).path.rsplit("/", 1)[-1]
                with platform.lock:
                    platform.posts.append((job_id, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = LoopbackHTTPServer(Handler).start()

    @property
    def base(self) -> str:
        return self.httpd.base_url

    def posts_for(self, job_id: str) -> list[dict]:
        with self.lock:
            return [body for posted_id, body in self.posts if posted_id == job_id]

    def close(self) -> None:
        self.httpd.close()


def test_deployed_worker_reports_errors_progress_and_results(tiny_root: Path) -> None:
    garment = data_uri(image_bytes((60, 80), seed=1))
    good = {"person_index": 0, "garment": garment, "resolution": "256x192", "steps": 4, "seed": 3}
    platform = FakePlatform(
        [
            {"id": "job-bad", "input": {"person_index": 0, "garment": garment, "steps": 0}},
            {"id": "job-good", "input": good},
        ]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUCKET_", "RUNPOD_"))}
    env.update(
        CHECKPOINTS_DIR=str(tiny_root),
        ALLOW_CPU="true",  # no CUDA here
        WARMUP="false",  # covered by test_handler_process
        EXTRA_RESOLUTIONS="256x192",
        PROGRESS_EVERY="1",
        PYTHONUNBUFFERED="1",
        RUNPOD_WEBHOOK_GET_JOB=f"{platform.base}/job-take/$ID?gpu=test",
        RUNPOD_WEBHOOK_POST_OUTPUT=f"{platform.base}/job-done/$RUNPOD_POD_ID/$ID?gpu=test",
        RUNPOD_POD_ID="test-pod",
        RUNPOD_SKIP_AUTO_SYSTEM_CHECKS="true",  # its network check dials 8.8.8.8
        RUNPOD_LOG_LEVEL="INFO",
    )
    process = subprocess.Popen(
        [sys.executable, "handler.py"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def finished() -> bool:
        posts = platform.posts_for("job-good")
        return sum("status" not in body for body in posts) == 1 and len(posts) >= 4

    try:
        deadline = time.monotonic() + 300
        while not finished():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the worker did not finish: {process.communicate()[0][-3000:]}")
            time.sleep(0.2)
    finally:
        stop_process(process, grace=30)
        platform.close()

    (bad,) = platform.posts_for("job-bad")
    assert bad == {"error": "invalid input: steps must be an integer from 1 to 50, not 0"}

    # Progress goes out from background threads, so the arrival order is not guaranteed.
    posts = platform.posts_for("job-good")
    progress = sorted((body for body in posts if "status" in body), key=lambda body: body["output"]["step"])
    (final,) = [body for body in posts if "status" not in body]
    assert progress == [
        {"status": "IN_PROGRESS", "output": {"stage": "diffusion", "step": step, "steps": 4}}
        for step in (1, 2, 3)
    ]
    assert set(final) == {"output"} and final["output"]["seed"] == 3
    assert final["output"]["images"][0]["content_type"] == "image/png"

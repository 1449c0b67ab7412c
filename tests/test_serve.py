"""`python -m worker.serve` as a client sees it: the runpod SDK's own clients and raw HTTP.

One server process for the module, started like a deployment would start it (tiny checkpoints,
an API key, a free loopback port). The SDK's `Endpoint` and `AsyncioEndpoint` are used
unchanged; they take their base URL from `RUNPOD_ENDPOINT_BASE_URL` when `runpod` is imported,
which in this process happened long ago, so one test proves the variable in a fresh process and
the others set the module attribute the SDK read it into.

Few jobs run the diffusion (each costs seconds on CPU); the queue tests hold the one worker
with a job whose person URL is answered only when the test says so (`GateServer`), then fail it
cheaply with a 404.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import runpod
from serve_support import GateServer, WebhookReceiver
from worker_support import (
    REPO,
    free_port,
    image_bytes,
    json_request,
    running_server,
    served_worker_env,
    worker_env,
)

from worker.serve import RUN_BODY_LIMIT

API_KEY = "local-key-3b9e71d0c2"  # distinctive, so the log can be searched for it
ENDPOINT = "ootd-local"
# The cheapest real try-on: one step, no guidance, the smallest allowed size, no padding.
SMALL = {"resolution": "256x192", "steps": 1, "guidance_scale": 1.0, "fit": "stretch"}


def authorization(key: str | None = API_KEY) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def call(method: str, url: str, body: object = None, key: str | None = API_KEY, timeout: float = 120):
    """One raw HTTP request as a RunPod client makes it; (status, JSON body)."""
    return json_request(method, url, body, authorization(key), timeout)


def garment() -> str:
    return base64.b64encode(image_bytes((60, 80), seed=3)).decode()


def small_job(**fields) -> dict:
    """A small valid try-on on the house model, or on `person=<URL>` when given."""
    person = {} if "person" in fields else {"person_index": 0}
    return {**person, "garment": garment(), **SMALL, **fields}


@pytest.fixture(scope="module")
def server(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """`python -m worker.serve` on a free loopback port; yields (base URL up to /v2, log path)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    env = served_worker_env(tiny_root, LOCAL_API_KEY=API_KEY, PROGRESS_EVERY="1")
    base = f"http://127.0.0.1:{port}/v2"
    command = [sys.executable, "-m", "worker.serve", "--port", str(port)]
    health = f"{base}/{ENDPOINT}/health"
    with running_server(command, env, log_path, health, authorization(), stop=signal.SIGTERM):
        yield base, log_path


@pytest.fixture
def sdk(server, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the imported runpod SDK at the server (what RUNPOD_ENDPOINT_BASE_URL does at import)."""
    base, _ = server
    monkeypatch.setattr(runpod, "endpoint_url_base", base)
    monkeypatch.setattr(runpod, "api_key", API_KEY)
    return base


@pytest.fixture
def gate():
    server = GateServer()
    yield server
    server.close()


def test_sdk_client_in_a_fresh_process_finds_the_server_through_the_environment(server) -> None:
    base, _ = server
    script = f"import json, runpod; print(json.dumps(runpod.Endpoint('any', api_key={API_KEY!r}).health()))"
    env = {**worker_env(Path(".")), "RUNPOD_ENDPOINT_BASE_URL": base}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    health = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(health["jobs"]) == {"completed", "failed", "inProgress", "inQueue", "retried"}
    assert health["workers"]["idle"] + health["workers"]["running"] == 1


def test_bad_job_fails_with_the_workers_sentence_and_the_next_job_is_served(sdk: str) -> None:
    status, body = call("POST", f"{sdk}/{ENDPOINT}/runsync", {"input": {"person_index": 0, "garment": "ftp://x/g"}})
    assert status == 200 and body["status"] == "FAILED", body
    assert body["error"] == (
        "invalid input: garment: ftp:// URLs are not allowed (use an http(s) URL, base64 or a data URI)"
    )
    assert body["id"].startswith("sync-") and body["executionTime"] >= 0 and body["delayTime"] >= 0

    output = runpod.Endpoint(ENDPOINT).run_sync({"input": small_job(seed=11)}, timeout=300)
    assert output["seed"] == 11 and output["images"][0]["content_type"] == "image/png"
    assert base64.b64decode(output["images"][0]["base64"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(output["timings"]) >= {"mask", "diffusion", "total"}


def test_sdk_run_status_output_stream_webhook_and_s3config(sdk: str, s3_server, s3_bucket: str) -> None:
    receiver = WebhookReceiver()
    try:
        bucket = s3_server.s3_config(s3_bucket)
        request = {"input": small_job(seed=12), "webhook": receiver.url(), "s3Config": bucket}
        job = runpod.Endpoint(ENDPOINT).run(request)
        assert job.status() in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
        output = job.output(timeout=300)
        assert job.status() == "COMPLETED" and output["seed"] == 12
        # s3Config beside input reaches the job, as on RunPod: the image comes back as a URL.
        url = output["images"][0]["url"]
        assert f"/{s3_bucket}/{job.job_id}/0.png" in url and s3_server.get(url)[:2] == (200, "image/png")
        # /stream gives the progress update (PROGRESS_EVERY=1 but never on the last step: none
        # for a one-step job) and then the output, each once; the SDK stops at the final state.
        chunks = list(job.stream())
        assert chunks == [output]

        assert receiver.received.wait(30), "the webhook never arrived"
        (hook,) = receiver.bodies
        assert hook["id"] == job.job_id and hook["status"] == "COMPLETED" and hook["output"] == output
        assert hook["executionTime"] > 0
    finally:
        receiver.close()
    status, body = call("GET", f"{sdk}/{ENDPOINT}/status/{job.job_id}")
    assert status == 200 and body["output"] == output and body["executionTime"] == hook["executionTime"]


def test_sdk_cancel_of_a_queued_job_and_health(sdk: str, gate: GateServer) -> None:
    endpoint = runpod.Endpoint(ENDPOINT)
    held = endpoint.run({"input": small_job(person=gate.url())})
    gate.wait_for_request()
    queued = endpoint.run({"input": small_job()})
    health = endpoint.health()
    assert health["jobs"]["inQueue"] == 1 and health["jobs"]["inProgress"] == 1
    assert health["workers"]["running"] == 1 and health["workers"]["idle"] == 0

    assert queued.cancel() == {"id": queued.job_id, "status": "CANCELLED"}
    assert queued.status() == "CANCELLED" and held.status() == "IN_PROGRESS"
    gate.gate.set()
    assert held.output(timeout=60) is None and held.status() == "FAILED"
    assert endpoint.health()["workers"] == {
        "idle": 1, "initializing": 0, "ready": 1, "running": 0, "throttled": 0, "unhealthy": 0
    }  # fmt: skip


def test_cancel_of_a_running_job_discards_its_result(sdk: str, gate: GateServer) -> None:
    status, job = call("POST", f"{sdk}/{ENDPOINT}/run", {"input": small_job(person=gate.url())})
    gate.wait_for_request()
    cancelled = call("POST", f"{sdk}/{ENDPOINT}/cancel/{job['id']}")
    assert cancelled == (200, {"id": job["id"], "status": "CANCELLED"})
    gate.gate.set()  # the job now fails its download; that outcome must not replace CANCELLED
    status, body = call("POST", f"{sdk}/{ENDPOINT}/runsync", {"input": {"garment": "x"}})  # queued behind it
    assert body["status"] == "FAILED"
    status, body = call("GET", f"{sdk}/{ENDPOINT}/status/{job['id']}")
    assert status == 200 and body["status"] == "CANCELLED" and "error" not in body and "output" not in body


def test_asyncio_endpoint_run_output_cancel_and_health(sdk: str, gate: GateServer) -> None:
    async def scenario() -> tuple:
        async with runpod.http_client.AsyncClientSession() as session:
            endpoint = runpod.AsyncioEndpoint(ENDPOINT, session)
            job = await endpoint.run(small_job(seed=13))
            first = await job.status()
            output = await job.output(timeout=300)
            held = await endpoint.run(small_job(person=gate.url()))
            await asyncio.to_thread(gate.wait_for_request)
            queued = await endpoint.run(small_job())
            cancelled = await queued.cancel()
            health = await endpoint.health()
            gate.gate.set()
            await held.output(timeout=60)
            return first, output, cancelled, health, await queued.status()

    first, output, cancelled, health, queued_status = asyncio.run(scenario())
    assert first in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED") and output["seed"] == 13
    assert cancelled["status"] == "CANCELLED" and queued_status == "CANCELLED"
    assert health["jobs"]["inProgress"] == 1 and health["jobs"]["inQueue"] == 0


def test_runsync_that_outlasts_its_wait_answers_the_id_then_status_follows(sdk: str, gate: GateServer):
    started = time.monotonic()
    held = {"input": small_job(person=gate.url())}
    status, body = call("POST", f"{sdk}/{ENDPOINT}/runsync?wait=1000", held)
    assert status == 200 and set(body) == {"id", "status"} and body["status"] == "IN_PROGRESS"
    assert time.monotonic() - started < 30  # it answered after its wait, not after the job
    status, polled = call("GET", f"{sdk}/{ENDPOINT}/status/{body['id']}")
    assert polled["status"] == "IN_PROGRESS" and polled["delayTime"] >= 0
    gate.gate.set()
    call("POST", f"{sdk}/{ENDPOINT}/runsync", {"input": {"garment": "x"}})  # queued behind it
    status, polled = call("POST", f"{sdk}/{ENDPOINT}/status/{body['id']}")
    assert polled["status"] == "FAILED"
    assert polled["error"].startswith("person: the URL on 127.0.0.1 answered HTTP 404")


def test_purge_queue_cancels_waiting_jobs_only(sdk: str, gate: GateServer) -> None:
    _, held = call("POST", f"{sdk}/{ENDPOINT}/run", {"input": small_job(person=gate.url())})
    gate.wait_for_request()
    waiting = [call("POST", f"{sdk}/{ENDPOINT}/run", {"input": small_job()})[1]["id"] for _ in range(2)]
    assert call("POST", f"{sdk}/{ENDPOINT}/purge-queue") == (200, {"removed": 2, "status": "completed"})
    for job_id in waiting:
        assert call("GET", f"{sdk}/{ENDPOINT}/status/{job_id}")[1]["status"] == "CANCELLED"
    assert call("GET", f"{sdk}/{ENDPOINT}/status/{held['id']}")[1]["status"] == "IN_PROGRESS"


def test_wrong_key_unknown_job_and_malformed_requests(server, s3_server) -> None:
    base, log_path = server
    url = f"{base}/{ENDPOINT}"
    assert call("GET", f"{url}/health", key="wrong")[0] == 401
    status, body = call("POST", f"{url}/run", {"input": {}}, key=None)
    assert status == 401 and "API key" in body["error"]
    assert call("GET", f"{url}/health", key=f"{API_KEY}")[0] == 200
    headers = {"Authorization": API_KEY}  # RunPod also takes the bare key
    with urllib.request.urlopen(urllib.request.Request(f"{url}/health", headers=headers), timeout=10) as r:
        assert r.status == 200

    status, body = call("GET", f"{url}/status/no-such-job")
    assert status == 404 and "no-such-job" in body["error"]
    assert call("POST", f"{url}/cancel/no-such-job")[0] == 404
    assert call("POST", f"{url}/run", {"inputs": {}}) == (
        400, {"error": 'the request body must be a JSON object with an "input" object'}
    )  # fmt: skip
    assert call("POST", f"{url}/run", {"input": {}, "webhook": "ftp://x"}) == (
        400, {"error": "webhook: it must be an http(s) URL"}
    )  # fmt: skip
    assert call("POST", f"{url}/runsync?wait=soon", {"input": {}})[0] == 400
    status, body = call("POST", f"{url}/run", {"input": {"garment": "A" * RUN_BODY_LIMIT}})
    assert status == 413 and "over the 10 MB allowed" in body["error"]
    log = log_path.read_text()
    assert API_KEY not in log and s3_server.secret_key not in log  # nor the s3Config secret of a job


def test_the_server_starts_like_the_handler_and_refuses_a_cpu_unless_allowed(tiny_root: Path) -> None:
    env = worker_env(tiny_root)
    env.pop("ALLOW_CPU", None)
    done = subprocess.run(
        [sys.executable, "-m", "worker.serve", "--port", str(free_port())],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    assert "cannot start: no CUDA GPU is available" in done.stderr and "ALLOW_CPU=true" in done.stderr

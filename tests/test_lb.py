"""`python -m worker.serve --lb`: the worker as a RunPod load-balancing endpoint, over real HTTP.

One server process for most of the module, started as the image's CMD starts it with
`WORKER_MODE=lb` (tiny checkpoints, an API key, a free loopback port). The GPU is held by a job
whose person URL answers only when the test says so (`GateServer`), which makes the line of
waiting requests, the 503s beyond it and a client leaving while it waits deterministic. Whether
a job ran is read where a job leaves a trace outside the worker: the person URL it fetches.

The start-up test runs its own server whose start-up really is held: with
PRECOMPUTE_HOUSE_MASKS=true the worker reads every house photo before it is ready, and the only
photo is a named pipe that the test fills when it chooses.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from serve_support import GateServer
from test_gpu_failures import failing_module
from worker_support import (
    REPO,
    FileServer,
    free_port,
    image_bytes,
    running_server,
    served_worker_env,
    stop_process,
)

from worker.config import Settings
from worker.lb import (
    DEFAULT_MAX_WAITING,
    LB_PAYLOAD_LIMIT,
    READY,
    LbSettings,
    LbWorker,
    create_lb_app,
    lb_worker_settings,
    tryon_job,
)
from worker.runtime import get_runtime

API_KEY = "lb-key-5c1d9e0a77"
# The generated frame as it is (output_size "frame"): these tests are about serving, and their
# inline limit (MAX_INLINE) is sized for 256x192 pictures, not the 512x512 house photo.
SMALL = {"resolution": "256x192", "steps": 1, "guidance_scale": 1.0, "fit": "stretch", "output_size": "frame"}
GARMENT = REPO / "assets" / "garments" / "0_tshirt.png"
HOUSE_PHOTO = REPO / "assets" / "models" / "0_astronaut.png"
MAX_INLINE = 500_000  # one 256x192 PNG fits, four do not: a job that fails after it ran


def small_job(**fields) -> dict:
    person = {} if "person" in fields else {"person_index": 0}
    garment = base64.b64encode(image_bytes((60, 80), seed=3)).decode()
    return {**person, "garment": garment, **SMALL, **fields}


def post(port: int, path: str, body: object, key: str | None = API_KEY, raw: bytes | None = None):
    """One POST as a client sends it; (status, headers, JSON body)."""
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.request("POST", path, body=data, headers=headers)
        answer = connection.getresponse()
        text = answer.read()
        return answer.status, answer.headers, json.loads(text) if text else None
    finally:
        connection.close()


def get(port: int, path: str, key: str | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})
        answer = connection.getresponse()
        text = answer.read()
        kind = answer.headers.get("Content-Type", "")
        return answer.status, json.loads(text) if text and kind.startswith("application/json") else text
    finally:
        connection.close()


def wait_for(predicate, timeout: float = 60, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def line(port: int) -> tuple[int, int]:
    """(running, waiting) as /ping reports them."""
    status, body = get(port, "/ping")
    assert status == 200, (status, body)
    return body["running"], body["waiting"]


class Background:
    """A POST on its own thread (a client waiting for its answer)."""

    def __init__(self, port: int, body: object, start: threading.Barrier | None = None) -> None:
        self.result = None
        self.thread = threading.Thread(target=self._run, args=(port, body, start), daemon=True)
        self.thread.start()

    def _run(self, port: int, body: object, start: threading.Barrier | None) -> None:
        if start is not None:
            start.wait(30)
        self.result = post(port, "/tryon", body)

    def join(self, timeout: float = 300):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the request never got an answer"
        return self.result


@pytest.fixture(scope="module")
def lb(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """The LB server on a free loopback port, ready (/ping 200); yields (port, log path)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("lb") / "server.log"
    # PORT_HEALTH: every test here also goes through the middleware that keeps that port to /ping.
    # DOWNLOAD_TIMEOUT: a held job's download must outlast the slowest test that holds it.
    env = served_worker_env(
        tiny_root, LOCAL_API_KEY=API_KEY, PROGRESS_EVERY="1", MAX_INLINE_BYTES=str(MAX_INLINE),
        PORT_HEALTH=str(free_port()), DOWNLOAD_TIMEOUT="600",
    )  # fmt: skip
    env.pop("LB_MAX_WAITING", None)  # the default, as deployed
    command = [sys.executable, "-m", "worker.serve", "--lb", "--port", str(port)]
    ping = f"http://127.0.0.1:{port}/ping"
    with running_server(command, env, log_path, ping, stop=signal.SIGTERM, ready_status=200):
        yield port, log_path


@pytest.fixture
def gate():
    server = GateServer()
    yield server
    server.close()


def hold_the_gpu(port: int, gate: GateServer) -> Background:
    """A job that holds the GPU (its person download hangs) until `gate.gate` is set."""
    held = Background(port, small_job(person=gate.url()))
    gate.wait_for_request()
    return held


def test_tryon_answers_the_output_bare_or_wrapped_with_s3config(lb, s3_server, s3_bucket) -> None:
    port, _ = lb
    status, _, output = post(port, "/tryon", small_job(seed=21))
    assert status == 200, output
    assert output["seed"] == 21 and output["images"][0]["content_type"] == "image/png"
    assert base64.b64decode(output["images"][0]["base64"])[:8] == b"\x89PNG\r\n\x1a\n"

    wrapped = {"input": small_job(seed=22), "s3Config": s3_server.s3_config(s3_bucket)}
    status, _, output = post(port, "/tryon", wrapped)
    assert status == 200, output
    url = output["images"][0]["url"]
    assert re.search(rf"/{s3_bucket}/lb-[0-9a-f-]+/0\.png", url)
    assert s3_server.get(url)[:2] == (200, "image/png")
    # The playground is served here too, without the key (it asks for it).
    status, page = get(port, "/")
    assert status == 200 and b'id="results"' in page


def test_tryon_refusals_bad_input_bad_body_oversize_and_missing_key(lb) -> None:
    port, log_path = lb
    status, _, body = post(port, "/tryon", {"person_index": 0, "garment": "ftp://x/g", "steps": 99})
    assert status == 400
    assert body == {"error": "invalid input: garment: ftp:// URLs are not allowed (use an http(s) URL, "
                    "base64 or a data URI); steps must be an integer from 1 to 50, not 99"}  # fmt: skip
    status, _, body = post(port, "/tryon", None, raw=b"{not json")
    assert status == 400 and "must be JSON" in body["error"]
    status, _, body = post(port, "/tryon", [1, 2])
    assert status == 400 and "JSON object" in body["error"]
    status, _, body = post(port, "/tryon", {"input": small_job(), "webhook": "https://example.com/hook"})
    assert status == 400 and "'webhook'" in body["error"]

    status, _, body = post(port, "/tryon", None, raw=b"x" * (LB_PAYLOAD_LIMIT + 1))
    assert status == 413 and body == {"error": "the request body is 30.0 MB, over the 30 MB allowed"}
    status, _, body = post(port, "/tryon", small_job(), key=None)
    assert status == 401 and "API key" in body["error"]
    assert post(port, "/tryon", small_job(), key="wrong")[0] == 401
    assert get(port, "/house-models")[0] == 401 and get(port, "/house-models", API_KEY)[0] == 200
    assert get(port, "/ping")[0] == 200  # RunPod's health check carries no key of ours
    assert API_KEY not in log_path.read_text()


def test_a_job_that_fails_after_it_ran_answers_500_and_the_next_is_served(lb) -> None:
    port, _ = lb
    status, _, body = post(port, "/tryon", small_job(samples=4))
    assert status == 500
    assert body["error"].startswith("the result is ") and f"over the {MAX_INLINE / 1e6:g} MB" in body["error"]
    status, _, output = post(port, "/tryon", small_job())
    assert status == 200 and len(output["images"]) == 1


def test_a_burst_gets_an_answer_each_images_or_503_with_retry_after(lb, gate) -> None:
    port, _ = lb
    held = hold_the_gpu(port, gate)
    assert line(port) == (1, 0)
    burst = 6
    start = threading.Barrier(burst)
    clients = [Background(port, small_job(seed=100 + i), start) for i in range(burst)]
    refused = burst - DEFAULT_MAX_WAITING
    # The refusals come at once, while the GPU is still held.
    wait_for(lambda: sum(client.result is not None for client in clients) == refused, what="the 503s")
    assert line(port) == (1, DEFAULT_MAX_WAITING)
    for client in clients:
        if client.result is not None:
            status, headers, body = client.result
            assert status == 503 and int(headers["Retry-After"]) >= 1
            assert body["error"].startswith("the worker is busy: one job runs and 2 wait (LB_MAX_WAITING)")
    gate.gate.set()
    assert held.join()[0] == 400  # its person URL finally answered 404
    answers = [client.join() for client in clients]
    served = [body for status, _, body in answers if status == 200]
    assert len(served) == DEFAULT_MAX_WAITING and all(len(body["images"]) == 1 for body in served)
    assert sorted(status for status, _, _ in answers) == [200] * DEFAULT_MAX_WAITING + [503] * refused
    status, _, output = post(port, "/tryon", small_job(seed=7))
    assert status == 200 and output["seed"] == 7
    assert line(port) == (0, 0)


def send_and_hang_up(port: int, body: object) -> socket.socket:
    """Send a whole /tryon request and keep the connection open without reading; the caller
    closes it (a client that gives up)."""
    data = json.dumps(body).encode()
    head = (f"POST /tryon HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")  # fmt: skip
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(head.encode() + data)
    return client


def test_a_client_that_leaves_is_dropped_before_its_job_runs(lb, gate) -> None:
    port, log_path = lb
    with FileServer() as images:
        left_url = images.add("/left.png", image_bytes((96, 128)), headers={"Content-Type": "image/png"})
        held = hold_the_gpu(port, gate)
        client = send_and_hang_up(port, small_job(person=left_url))
        wait_for(lambda: line(port) == (1, 1), what="the request to wait")
        # Bad input is refused at once: it never takes a place in the line.
        bad = Background(port, small_job(steps=0))
        wait_for(lambda: bad.result is not None, what="the bad request's answer")
        status, _, body = bad.result
        assert status == 400 and body["error"].startswith("invalid input: steps must be an integer")
        client.close()
        wait_for(lambda: line(port) == (1, 0), what="the request to leave the line")
        gate.gate.set()
        assert held.join()[0] == 400
        status, _, output = post(port, "/tryon", small_job(seed=8))
        assert status == 200 and output["seed"] == 8
        assert images.requests == []  # the job of the client that left never ran
    assert "dropped while it waited: its client has gone" in log_path.read_text()


def test_a_running_job_whose_client_left_stops_at_its_next_step(lb) -> None:
    port, log_path = lb
    with FileServer() as images:
        url, arrived, release = images.hold("/slow.png", image_bytes((96, 128)))
        client = send_and_hang_up(port, small_job(person=url, steps=3))
        assert arrived.wait(60), "the job never started"
        assert line(port) == (1, 0)  # it runs: past the line
        client.close()
        noticed = "its client has gone; the job stops at its next step"
        wait_for(lambda: noticed in log_path.read_text(), what="the server to see the hang-up")
        release.set()  # the job goes on from its download, into the diffusion
        wait_for(lambda: line(port) == (0, 0), timeout=120, what="the job to end")
    log = log_path.read_text()
    assert re.search(r"job lb-[0-9a-f-]+ stopped: its client has gone", log)
    status, _, output = post(port, "/tryon", small_job(seed=9))
    assert status == 200 and output["seed"] == 9


def feed(fifo: Path, data: bytes) -> None:
    """Write `data` into the named pipe once a reader opens it (a reader that left is no error)."""
    with contextlib.suppress(BrokenPipeError):
        fifo.write_bytes(data)


def test_ping_answers_204_while_the_worker_starts_then_200(tiny_root: Path, tmp_path: Path) -> None:
    photos = tmp_path / "models"
    photos.mkdir()
    fifo = photos / "0_model.png"
    os.mkfifo(fifo)  # the start-up reads it whole, and blocks until the test writes it
    port, health = free_port(), free_port()
    env = served_worker_env(
        tiny_root, MODEL_IMAGES_DIR=str(photos), PRECOMPUTE_HOUSE_MASKS="true", WARMUP="true",
        PORT_HEALTH=str(health), OOTD_MODEL_TYPES="hd",  # one model: half the warm-up
    )  # fmt: skip
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker.serve", "--lb", "--port", str(port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    writer = None
    try:

        def answering() -> bool:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                return get(health, "/ping")[0] is not None
            except OSError:
                return False

        wait_for(answering, timeout=120, what="the health port to answer")
        # Listening at once, while the models load and then while the house photo is awaited.
        assert get(health, "/ping")[0] == 204
        wait_for(lambda: "running on cpu" in log_path.read_text(), timeout=300, what="the models to load")
        assert get(health, "/ping")[0] == 204 and get(port, "/ping")[0] == 204
        status, headers, body = post(port, "/tryon", small_job(), key=None)
        assert status == 503 and headers["Retry-After"] == "10" and "starting" in body["error"]
        assert get(health, "/tryon")[0] == 404  # the health port answers /ping only

        writer = threading.Thread(target=feed, args=(fifo, HOUSE_PHOTO.read_bytes()), daemon=True)
        writer.start()
        wait_for(lambda: get(health, "/ping")[0] == 200, timeout=300, what="/ping 200")
        log = log_path.read_text()
        assert "precomputed" in log and "warm-up done" in log
        assert log.index("warm-up done") < log.index("ready: /ping answers 200")
    finally:
        stop_process(process)
        if writer is None or writer.is_alive():
            with open(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK), "rb"):
                pass  # a writer still waiting for a reader is let go


def test_a_start_up_that_fails_ends_the_process(tiny_root: Path, tmp_path: Path) -> None:
    env = served_worker_env(tmp_path / "no-weights-here")
    done = subprocess.run(
        [sys.executable, "-m", "worker.serve", "--lb", "--port", str(free_port())],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    assert "cannot start:" in done.stderr and "no-weights-here" in done.stderr


@pytest.fixture(scope="module")
def failing_worker(tiny_root: Path):
    """The LB app in this process (so a GPU failure can be injected into its real models),
    served by uvicorn on a loopback port; yields (port, runtime)."""
    settings = Settings(checkpoints_dir=tiny_root, extra_resolutions=("256x192",), garment_cache_mb=0)
    worker = LbWorker(lb_worker_settings(settings, {}), start_runtime=get_runtime)
    worker.start_up()
    assert worker.state == READY
    port = free_port()
    app = create_lb_app(worker, LbSettings())
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, what="uvicorn to start")
    yield port, worker.runtime
    server.should_exit = True
    thread.join(30)


def test_after_a_gpu_failure_ping_answers_503_so_runpod_replaces_the_worker(failing_worker) -> None:
    import torch

    port, runtime = failing_worker
    unet = runtime.pipelines["hd"].unet_vton
    with failing_module(unet, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")):
        status, _, body = post(port, "/tryon", small_job(), key=None)
    assert status == 500 and body["error"].startswith(
        "the GPU ran out of memory in diffusion for 1 sample(s) at 256x192"
    )
    status, body = get(port, "/ping")
    assert status == 503 and "needs replacing after a GPU failure" in body["error"]
    status, _, body = post(port, "/tryon", small_job(), key=None)
    assert status == 503 and "needs replacing" in body["error"]


def test_lb_settings_and_request_forms() -> None:
    assert LbSettings.from_env({}) == LbSettings(max_waiting=DEFAULT_MAX_WAITING, health_port=None)
    assert LbSettings.from_env({"LB_MAX_WAITING": "0", "PORT_HEALTH": "8081"}) == LbSettings(0, 8081)
    for name, value in (("LB_MAX_WAITING", "-1"), ("LB_MAX_WAITING", "two"), ("PORT_HEALTH", "70000")):
        with pytest.raises(ValueError, match=name):
            LbSettings.from_env({name: value})
    # Results may use RunPod's 30 MB answer limit here, unless MAX_INLINE_BYTES says otherwise.
    assert lb_worker_settings(Settings(), {}).max_inline_bytes == LB_PAYLOAD_LIMIT
    assert lb_worker_settings(Settings(max_inline_bytes=5), {"MAX_INLINE_BYTES": "5"}).max_inline_bytes == 5

    bare = tryon_job(b'{"person_index": 0, "garment": "g"}')
    assert bare["input"] == {"person_index": 0, "garment": "g"} and bare["id"].startswith("lb-")
    wrapped = tryon_job(b'{"input": {"garment": "g"}, "s3Config": {"bucketName": "b"}}')
    assert wrapped["input"] == {"garment": "g"} and wrapped["s3Config"] == {"bucketName": "b"}

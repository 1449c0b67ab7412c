"""`python handler.py` as RunPod runs it: one local test job, and the SDK's local API server.

These start the real entry point in a subprocess (cold start included) on the tiny checkpoints:
`--test_input` end to end at the published 768x1024, and `--rp_serve_api` answering /runsync,
/run + /status over HTTP with URL inputs served by a local HTTP server.
"""

import ast
import base64
import io
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from worker_support import REPO, ApiWorker, FileServer, api_worker, image_bytes, served_worker_env, worker_env

from worker.schema import parse_request

TEST_INPUT = REPO / "test_input.json"


def decode(entry: dict) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(entry["base64"])))
    image.load()
    return image


def test_test_input_json_is_a_valid_small_job() -> None:
    assert TEST_INPUT.stat().st_size < 200_000
    job = json.loads(TEST_INPUT.read_text())
    request = parse_request(job["input"], person_count=1)
    assert request.person_index == 0 and request.garment.kind == "data_uri"


@pytest.mark.slow
def test_handler_py_answers_test_input_json_with_a_768x1024_png_in_s3(
    tiny_root: Path, s3_server, s3_bucket
) -> None:
    """The process: start-up log, warm-up, one job, its picture in S3, no secret logged. What is
    in the picture is checked in-process (tests/test_ootd_pipeline.py, tests/test_handler_jobs.py)."""
    job = json.loads(TEST_INPUT.read_text())
    # One step without guidance and a stretched fit, returned as generated (output_size "frame"):
    # the full 768x1024 frame, as fast as CPU allows.
    job["input"].update(steps=1, guidance_scale=1.0, fit="stretch", output_size="frame")
    # The SDK cuts log lines at 4096 characters, so the image travels through the S3 server. The
    # bucket comes with the job (RunPod's s3Config), whose secret the SDK would log at its default
    # DEBUG level: the worker must start it at INFO unless told otherwise.
    job["s3Config"] = s3_server.s3_config(s3_bucket)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "handler.py", "--test_input", json.dumps(job)],
        cwd=REPO,
        env=worker_env(tiny_root),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if "Job result: " in line)
    result = ast.literal_eval(line.split("Job result: ", 1)[1])["output"]
    assert result["seed"] == 42 and result["timings"]["total"] < time.monotonic() - started
    status, content_type, body = s3_server.get(result["images"][0]["url"])
    assert (status, content_type) == (200, "image/png")
    image = Image.open(io.BytesIO(body))
    image.load()
    assert image.format == "PNG" and image.size == (768, 1024)
    assert "loaded models hd,dc and the preprocessor" in done.stderr  # the cold start is logged
    # What runs where, then the warm-up, both before the job.
    assert "running on cpu, float32, models hd,dc; torch " in done.stderr
    assert "parsing providers CPUExecutionProvider" in done.stderr
    assert re.search(r"warm-up done in \d+\.\d s", done.stderr)
    assert s3_server.secret_key not in done.stdout + done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_handler_without_cuda_refuses_to_start_in_one_line_unless_allow_cpu(tiny_root: Path) -> None:
    env = worker_env(tiny_root)
    del env["ALLOW_CPU"]
    done = subprocess.run(
        [sys.executable, "handler.py", "--test_input", json.dumps({"input": {}})],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    # The one line of the log (the SDK's own "Log level set to INFO" goes to stdout).
    (line,) = [line for line in done.stderr.splitlines() if line.strip()]
    assert line.endswith(
        f"cannot start: no CUDA GPU is available to torch {torch.__version__}, and on the CPU every job "
        "would time out; set ALLOW_CPU=true to run on the CPU anyway (local runs and tests)"
    )
    assert "loaded models" not in done.stderr  # refused before loading 15 GB into RAM


def test_handler_refuses_to_start_without_weights(tmp_path: Path) -> None:
    # No weights: the worker refuses to start and says how to fix it (no job is run).
    done = subprocess.run(
        [sys.executable, "handler.py", "--test_input", json.dumps({"input": {}})],
        cwd=REPO,
        env=worker_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert f"cannot start: CHECKPOINTS_DIR={tmp_path} lacks" in done.stderr
    assert "python -m tiny_checkpoints" in done.stderr


@pytest.fixture(scope="module")
def api(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiWorker]:
    """`python handler.py --rp_serve_api` on a free loopback port, up once the models are loaded."""
    log_path = tmp_path_factory.mktemp("api") / "worker.log"
    with api_worker(served_worker_env(tiny_root), log_path) as worker:
        yield worker


@pytest.fixture(scope="module")
def files():
    with FileServer() as server:
        server.add("/person.jpg", image_bytes((120, 160), "JPEG"))
        server.add("/garment.png", image_bytes((60, 80), seed=2))
        yield server


def test_local_api_runsync_with_url_inputs(api: ApiWorker, files: FileServer) -> None:
    job = {"person": files.url("/person.jpg"), "garment": files.url("/garment.png"), "resolution": "256x192",
           "steps": 2, "seed": 5, "output_format": "jpeg"}  # fmt: skip
    status, body = api.post("/runsync", {"input": job})
    assert status == 200 and body["status"] == "COMPLETED", body
    output = body["output"]
    (entry,) = output["images"]
    assert entry["content_type"] == "image/jpeg"
    assert decode(entry).size == (120, 160)  # the person photo's own size (output_size "input")
    assert output["seed"] == 5
    assert {"/person.jpg", "/garment.png"} <= set(files.requests)


def test_local_api_run_then_status(api: ApiWorker) -> None:
    garment = base64.b64encode(image_bytes((60, 80), seed=4)).decode()
    job = {"person_index": 0, "garment": garment, "resolution": "256x192", "steps": 2, "seed": 6}
    status, queued = api.post("/run", {"input": job})
    assert status == 200 and queued["status"] == "IN_PROGRESS" and queued["id"]
    status, body = api.post(f"/status/{queued['id']}", {})
    assert status == 200 and body["status"] == "COMPLETED", body
    assert decode(body["output"]["images"][0]).size == (512, 512)  # the house photo's own size


def test_local_api_reports_a_bad_request_as_failed_with_the_sentence(api: ApiWorker) -> None:
    status, body = api.post("/runsync", {"input": {"person_index": 0, "garment": "ftp://example.com/g.png"}})
    assert status == 200 and body["status"] == "FAILED"
    assert (
        body["error"]
        == "invalid input: garment: ftp:// URLs are not allowed (use an http(s) URL, base64 or a data URI)"
    )

"""The RunPod handler in-process on the tiny checkpoints: results, errors, aliases, progress, OOM.

The handler is called exactly as the SDK calls it (`handler.handler(job)`), configured through
the environment; the models load once for the module. Jobs run at 256x192 (allowed through
EXTRA_RESOLUTIONS) so that a job takes about a second on CPU; the published sizes are covered
by the subprocess tests.
"""

import base64
import contextlib
import io
import json
import logging
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from worker_support import (
    ALLOW_PRIVATE_URLS,
    DEADLINE_SLACK,
    FileServer,
    LoopbackHTTPServer,
    QuietHandler,
    SilentServer,
    data_uri,
    fetch_threads,
    image_bytes,
    png_claiming_size,
)

import handler
from worker.config import Settings
from worker.job import handle
from worker.runtime import get_runtime

GARMENT_PNG = Path(handler.__file__).parent / "assets" / "garments" / "0_tshirt.png"
HOUSE_PHOTO = Path(handler.__file__).parent / "assets" / "models" / "0_astronaut.png"
HOUSE_SIZE = Image.open(HOUSE_PHOTO).size  # person_index 0: results come back at its own size
SMALL = {"resolution": "256x192", "steps": 2, "seed": 1234}
BUCKET_VARIABLES = (
    "BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_Bucket", "BUCKET_PREFIX",
)  # fmt: skip


@pytest.fixture(scope="module")
def worker_env(tiny_root):
    """The environment a local worker runs with: tiny checkpoints, small sizes, no bucket."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHECKPOINTS_DIR", str(tiny_root))
        patch.setenv("EXTRA_RESOLUTIONS", "256x192")
        patch.setenv(ALLOW_PRIVATE_URLS, "true")
        patch.setenv("DOWNLOAD_TIMEOUT", "0.5")
        patch.delenv("RUNPOD_WEBHOOK_POST_OUTPUT", raising=False)
        for name in BUCKET_VARIABLES:
            patch.delenv(name, raising=False)
        yield patch


@pytest.fixture(scope="module")
def garment_uri() -> str:
    return data_uri(GARMENT_PNG.read_bytes())


@pytest.fixture(scope="module")
def files():
    with FileServer() as server:
        yield server


def run(job_input, job_id: str = "test-job") -> dict:
    return handler.handler({"id": job_id, "input": job_input})


def decode(entry: dict) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(entry["base64"])))
    image.load()
    return image


@contextlib.contextmanager
def bucket_env(values: dict[str, str]):
    """Configure a bucket through the environment for the jobs run inside."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in values.items():
            patch.setenv(name, value)
        yield


def good_input(garment_uri: str, **fields) -> dict:
    return {"person_index": 0, "garment": garment_uri, **SMALL, **fields}


def assert_ok(result: dict) -> dict:
    assert "error" not in result, result.get("error")
    return result


REFERENCE_INPUT = {"person_index": 0, "model_type": "dc", "category": "lower_body", "steps": 2, "samples": 1,
                   "guidance_scale": 1.5, "resolution": "256x192", "return_mask": True}  # fmt: skip


@pytest.fixture(scope="module")
def reference(worker_env, garment_uri) -> dict:
    """One job with the new field names, no seed (a random one) and the mask returned."""
    return assert_ok(run({**REFERENCE_INPUT, "garment": garment_uri}))


def test_job_returns_images_seed_mask_and_timings(reference) -> None:
    assert set(reference) == {"images", "seed", "model_type", "category", "timings", "mask"}
    assert isinstance(reference["seed"], int) and 0 <= reference["seed"] < 2**32
    assert (reference["model_type"], reference["category"]) == ("dc", "lower_body")
    stages = {"validate", "fetch", "mask", "diffusion", "composite", "encode", "store", "total"}
    assert set(reference["timings"]) == stages
    assert all(seconds >= 0 for seconds in reference["timings"].values())
    (entry,) = reference["images"]
    assert entry["content_type"] == "image/png"
    image = decode(entry)
    # By default the result has the person photo's own size (the house photo's 512x512 here),
    # and so has the mask.
    assert image.format == "PNG" and image.size == HOUSE_SIZE
    mask = decode(reference["mask"])
    assert mask.size == HOUSE_SIZE and set(mask.getdata()) <= {0, 255}


def test_output_size_frame_is_the_generated_frame_cropped_back(worker_env, garment_uri) -> None:
    result = assert_ok(run(good_input(garment_uri, output_size="frame", steps=1, return_mask=True)))
    # The house photo is square: padded to 3:4 with white, the output is cropped back to a
    # square at the output's width (192 at 256x192), never stretched.
    assert decode(result["images"][0]).size == decode(result["mask"]).size == (192, 192)


def test_seed_api_aliases_and_the_returned_seed_reproduce_the_same_bytes(worker_env, garment_uri, reference):
    old = assert_ok(
        run(
            {
                "modelSelection": 1,
                "garment": garment_uri,
                "modelType": "DC",
                "category": 1,
                "nSteps": 2,
                "nSamples": 1,
                "imageScale": 1.5,
                "seed": reference["seed"],
                "resolution": "256x192",
            }
        )
    )
    assert old["images"][0]["base64"] == reference["images"][0]["base64"]
    assert (old["seed"], old["model_type"], old["category"]) == (reference["seed"], "dc", "lower_body")


def test_jpeg_output_with_two_samples(worker_env, garment_uri) -> None:
    result = assert_ok(run(good_input(garment_uri, output_format="jpeg", samples=2)))
    assert [entry["content_type"] for entry in result["images"]] == ["image/jpeg"] * 2
    images = [decode(entry) for entry in result["images"]]
    assert all(image.format == "JPEG" for image in images)
    assert images[0].tobytes() != images[1].tobytes()  # two samples, two different pictures


def test_webp_output_and_stretch_fit_return_the_full_model_frame(worker_env, garment_uri) -> None:
    result = assert_ok(run(good_input(garment_uri, output_format="webp", fit="stretch", output_size="frame")))
    assert result["images"][0]["content_type"] == "image/webp"
    image = decode(result["images"][0])
    assert image.format == "WEBP" and image.size == (192, 256)


def test_url_inputs_and_a_callers_mask(worker_env, files) -> None:
    person = files.add("/person.jpg", image_bytes((96, 128), "JPEG"))  # already 3:4: no padding
    garment = files.add("/garment", image_bytes((60, 80), "WEBP", seed=3))
    mask = Image.new("L", (96, 128), 0)
    mask.paste(255, (0, 0, 96, 64))  # repaint the top half only
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    masked = files.add("/mask.png", buffer.getvalue())
    result = assert_ok(
        run({"person": person, "garment": garment, "mask": masked, "return_mask": True, **SMALL})
    )
    assert decode(result["images"][0]).size == (96, 128)  # the person photo's own size
    returned = decode(result["mask"])
    assert returned.size == (96, 128)
    assert returned.getpixel((48, 5)) == 255 and returned.getpixel((48, 125)) == 0


@pytest.mark.parametrize("size", [(200, 100), (100, 300)])
def test_pad_keeps_a_callers_mask_on_a_non_three_by_four_photo(worker_env, garment_uri, size) -> None:
    # The mask paints the photo's top-left third by third. Fitted into the model frame with the
    # photo and cropped back with it, it must cover the same part of the output. (Not a half:
    # a half is centred, so a mask stretched over the whole frame would still look aligned.)
    width, height = size
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, width // 3, height // 3))
    person = Image.new("RGB", size, (0, 128, 0))
    result = assert_ok(
        run(
            {**SMALL, "steps": 1, "person": data_uri(_png(person)), "garment": garment_uri,
             "mask": data_uri(_png(mask)), "return_mask": True, "output_size": "frame"}
        )
    )  # fmt: skip
    output, returned = decode(result["images"][0]), decode(result["mask"])
    assert output.size == returned.size
    out_w, out_h = output.size
    assert abs(out_w / out_h - width / height) < 0.02  # the photo's aspect, at the output's scale
    assert max(out_w, out_h) in (192, 256)  # as large as the 256x192 frame allows
    third_w, third_h = out_w // 3, out_h // 3
    row = [returned.getpixel((x, third_h // 2)) for x in range(out_w)]
    assert row[: third_w - 1] == [255] * (third_w - 1) and set(row[third_w + 2 :]) == {0}, row
    column = [returned.getpixel((third_w // 2, y)) for y in range(out_h)]
    assert column[: third_h - 1] == [255] * (third_h - 1) and set(column[third_h + 2 :]) == {0}, column


def test_an_s3_config_that_is_not_an_object_keeps_the_images(worker_env, garment_uri) -> None:
    result = handler.handler(
        {"id": "odd-s3", "input": good_input(garment_uri, steps=1), "s3Config": "s3://b"}
    )
    assert_ok(result)
    assert decode(result["images"][0]).size == HOUSE_SIZE
    assert result["warnings"] == [
        "S3 upload skipped: s3Config must be a JSON object (endpointUrl, accessId, accessSecret, "
        "bucketName), not a string; returning images inline"
    ]


def _truncated_jpeg() -> str:
    jpeg = image_bytes((128, 128), "JPEG")
    return data_uri(jpeg[: len(jpeg) // 2], "image/jpeg")


WRONG_TYPES = {
    "person": 5, "person_index": "0", "garment": 5, "mask": 5, "model_type": 1, "category": 1.5,
    "steps": "20", "samples": 1.5, "seed": "x", "guidance_scale": "2", "output_format": 1,
    "return_mask": "yes", "resolution": 1024, "fit": 1, "output_size": 1, "composite": "false",
}  # fmt: skip
OUT_OF_RANGE = {
    "steps": [0, 51], "samples": [0, 5], "guidance_scale": [0.99, 5.01], "seed": [-2],
    "person_index": [-1, 99], "category": [3, "shoes"], "resolution": ["2048x1536"],
    "model_type": ["xl"], "output_format": ["gif"], "fit": ["crop"], "output_size": ["original", ""],
}  # fmt: skip


def bad_inputs(garment: str, files: FileServer, silent: SilentServer) -> list[tuple[str, object, str]]:
    """(case, job input, regex the error must match): every way a request can be wrong."""
    base = {"person_index": 0, "garment": garment, **SMALL}
    cases: list[tuple[str, object, str]] = [
        ("no fields", {}, r"person is required.*garment is required"),
        ("no garment", {"person_index": 0}, r"garment is required"),
        ("no person", {"garment": garment}, r"person is required"),
        ("input is a string", "person_index=0", r"^input must be a JSON object.*not a string"),
        ("input is a list", [base], r"^input must be a JSON object.*not an array"),
        ("input is null", None, r"^input must be a JSON object.*not null"),
        (
            "unknown field",
            {**base, "prompt": "a shirt"},
            r"unknown field 'prompt' \(valid fields are person, ",
        ),
        ("hd lower body", {**base, "category": "lower_body"}, r"'hd' supports only .*'dc'"),
        ("file url", {**base, "garment": "file:///etc/passwd"}, r"garment: file:// URLs are not allowed"),
        ("ftp url", {**base, "garment": "ftp://127.0.0.1/g.png"}, r"garment: ftp:// URLs are not allowed"),
        (
            "not an image",
            {**base, "garment": data_uri(b"hello, not a picture")},
            r"^garment: the data is not an image",
        ),
        (
            "truncated jpeg",
            {**base, "garment": _truncated_jpeg()},
            r"^garment: the JPEG data is truncated or corrupt$",
        ),
        (
            "100 megapixels",
            {**base, "garment": data_uri(png_claiming_size(10_000, 10_000))},
            r"^garment: the image is 10000x10000 \(100\.0 megapixels\), over the limit of 50 megapixels$",
        ),
        (
            "http 404",
            {**base, "garment": files.url("/nope.png?sig=SECRET")},
            r"^garment: the URL on 127\.0\.0\.1 answered HTTP 404$",
        ),
        (
            "never answers",
            {**base, "garment": silent.url()},
            r"^garment: the download from 127\.0\.0\.1 timed out",
        ),
        ("invalid base64", {**base, "garment": "this is not base64!"}, r"^garment: not valid base64"),
        (
            "huge base64",
            {**base, "garment": "A" * 30_000_000},
            r"^garment: the base64 data is larger than the 20 MB",
        ),
        ("empty mask", {**base, "mask": data_uri(_black_png())}, r"^mask: the mask is empty"),
        (
            "unclosed IPv6 bracket",
            {**base, "garment": "http://[::1/g.png?sig=SECRET"},
            r"^invalid input: garment: not a valid URL \(it cannot be parsed\)$",
        ),
        (
            "port out of range",
            {**base, "garment": "http://example.com:99999/g.png?sig=SECRET"},
            r"^invalid input: garment: not a valid URL \(the port is not a number from 0 to 65535\)$",
        ),
        (
            "host label over 63 characters",
            {**base, "mask": "http://" + "a" * 70 + ".com/x?sig=SECRET"},
            r"^invalid input: mask: not a valid URL \(the host name is not a valid domain name\)$",
        ),
        (
            "CIELab mask",
            {**base, "mask": data_uri(_lab_tiff(), "image/tiff")},
            r"^mask: unsupported colour mode LAB \(send an RGB or greyscale image\)$",
        ),
        (
            "60000x1 photo to pad",
            {**SMALL, "person": data_uri(_png(Image.new("RGB", (60000, 1), 0))), "garment": garment},
            r"^person: the image is 60000x1, more than 8 times as wide as it is tall",
        ),
    ]
    for field, value in WRONG_TYPES.items():
        cases.append((f"{field} wrong type", {**base, field: value}, rf"\b{field}\b"))
    for field, values in OUT_OF_RANGE.items():
        cases += [(f"{field}={value!r}", {**base, field: value}, rf"\b{field}\b") for value in values]
    return cases


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _black_png() -> bytes:
    return _png(Image.new("L", (32, 32), 0))


def _lab_tiff() -> bytes:
    """A CIELab TIFF: Pillow decodes it but cannot convert it to greyscale."""
    buffer = io.BytesIO()
    Image.new("LAB", (32, 32), (50, 0, 0)).save(buffer, format="TIFF")
    return buffer.getvalue()


def test_every_bad_input_gets_one_clear_sentence_and_the_next_job_works(
    worker_env, garment_uri, files, caplog, monkeypatch
) -> None:
    with SilentServer() as silent:
        cases = bad_inputs(garment_uri, files, silent)
        for case, job_input, pattern in cases:
            result = run(job_input)
            assert set(result) == {"error"}, (case, result)
            error = result["error"]
            assert isinstance(error, str) and "\n" not in error and "Traceback" not in error, case
            assert re.search(pattern, error), (case, error)
            assert "SECRET" not in error, case
    assert "SECRET" not in caplog.text

    # A private address (127.0.0.1 here) with the override off: refused before any request.
    url = files.add("/private.png", image_bytes((60, 80)))
    monkeypatch.delenv(ALLOW_PRIVATE_URLS)
    result = run(good_input(garment_uri, garment=url))
    assert result == {"error": "garment: 127.0.0.1 is a private, loopback or link-local address, "
                               "which the worker does not fetch"}  # fmt: skip
    assert "/private.png" not in files.requests
    # The next valid job (the same URL, now allowed) still succeeds.
    monkeypatch.setenv(ALLOW_PRIVATE_URLS, "true")
    assert_ok(run(good_input(garment_uri, garment=url)))


def test_a_garment_host_that_drips_fails_the_job_at_its_deadline(
    worker_env, garment_uri, files, monkeypatch
) -> None:
    # Issue 17 at a twentieth of its time: a house model and one garment URL, on a host written
    # the plain way with http.server (so HTTP/1.0) that declares 100000 bytes, sends one each
    # thirtieth of the deadline and stops after 120 (four deadlines). The job used to end when
    # the host stopped; it must end at its own deadline, and the worker take the next job.
    deadline = 1.5
    monkeypatch.setenv("DOWNLOAD_TIMEOUT", str(deadline))

    class DrippingHost(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            with contextlib.suppress(OSError):  # the worker hung up
                for _ in range(120):
                    time.sleep(deadline / 30)
                    self.wfile.write(b"x")

    get_runtime(Settings.from_env())  # loaded before the clock starts, as at a worker's start
    with LoopbackHTTPServer(DrippingHost) as host:
        start = time.monotonic()
        result = run({"person_index": 0, "garment": f"{host.base_url}/shirt.jpg", **SMALL})
        elapsed = time.monotonic() - start
        assert fetch_threads() == []
    limit = f"limit {deadline:g} s for the job's downloads"
    assert result == {"error": f"garment: the download from 127.0.0.1 timed out ({limit})"}
    assert elapsed < deadline + DEADLINE_SLACK
    assert_ok(run(good_input(garment_uri, garment=files.add("/next-shirt.png", GARMENT_PNG.read_bytes()))))


def test_progress_every_few_steps_but_not_on_the_last(worker_env, garment_uri, capfd) -> None:
    settings = replace(Settings.from_env(), progress_every=2)
    assert Settings().progress_every == 5  # the deployed default
    updates: list[dict] = []
    job = {"id": "progress", "input": good_input(garment_uri, steps=5)}
    runtime = get_runtime(settings)
    capfd.readouterr()
    assert_ok(handle(job, runtime, settings, progress=updates.append))
    assert updates == [
        {"stage": "diffusion", "step": 2, "steps": 5},
        {"stage": "diffusion", "step": 4, "steps": 5},
    ]
    # Progress goes to RunPod only: no tqdm bar in the worker's log.
    assert not re.search(r"\d/5 \[", capfd.readouterr().err)


def test_out_of_memory_frees_memory_asks_for_refresh_and_the_worker_goes_on(worker_env, garment_uri) -> None:
    settings = replace(Settings.from_env(), progress_every=1)
    runtime = get_runtime(settings)

    def out_of_memory_mid_run(update: dict) -> None:
        # Raised from inside the denoising loop, where a real CUDA OOM happens.
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    job = {"id": "oom", "input": good_input(garment_uri, steps=2, samples=2)}
    result = handle(job, runtime, settings, progress=out_of_memory_mid_run)
    assert result == {
        "error": "the GPU ran out of memory in diffusion for 2 sample(s) at 256x192; try fewer samples or a "
        "smaller resolution (this worker will be restarted)",
        "refresh_worker": True,
    }
    job["input"]["steps"] = 1
    assert_ok(handle(job, runtime, settings, progress=out_of_memory_mid_run))


def test_result_over_the_payload_limit_suggests_a_bucket_or_jpeg(
    worker_env, garment_uri, monkeypatch
) -> None:
    monkeypatch.setenv("MAX_INLINE_BYTES", "2000")  # a 512x512 PNG alone is larger
    result = run(good_input(garment_uri, steps=1))
    assert set(result) == {"error"}
    assert re.fullmatch(
        r"the result is 0\.\d MB, over the 0\.002 MB RunPod accepts inline: configure an S3 bucket "
        r"\(BUCKET_ENDPOINT_URL or the job's s3Config\) "
        r"or ask for output_format 'jpeg' or 'webp', fewer samples or output_size 'frame'",
        result["error"],
    ), result["error"]


def test_images_go_to_the_bucket_and_the_url_serves_the_same_bytes(
    worker_env, garment_uri, reference, s3_server, s3_bucket
) -> None:
    job_input = {**REFERENCE_INPUT, "garment": garment_uri, "seed": reference["seed"]}
    with bucket_env(s3_server.env(s3_bucket)):
        uploaded = assert_ok(run(job_input, job_id="job-s3"))
    assert "warnings" not in uploaded
    (entry,) = uploaded["images"]
    assert set(entry) == {"url", "content_type"}
    status, content_type, body = s3_server.get(entry["url"])
    assert (status, content_type) == (200, "image/png")
    assert body == base64.b64decode(reference["images"][0]["base64"])
    status, _, mask = s3_server.get(uploaded["mask"]["url"])
    assert status == 200 and mask == base64.b64decode(reference["mask"]["base64"])
    keys = [item["Key"] for item in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert sorted(keys) == ["job-s3/0.png", "job-s3/mask/0.png"]


def test_a_wrong_secret_returns_images_inline_with_a_warning_and_no_secret(
    worker_env, garment_uri, s3_server, s3_bucket, caplog, capfd, monkeypatch
) -> None:
    secret = "wrong-secret-XYZZY-4711"
    caplog.set_level(logging.DEBUG)
    for name, value in s3_server.env(s3_bucket, BUCKET_SECRET_ACCESS_KEY=secret).items():
        monkeypatch.setenv(name, value)
    # Over the payload limit too: the error must carry the upload warning, still without the secret.
    monkeypatch.setenv("MAX_INLINE_BYTES", "2000")
    too_large = run(good_input(garment_uri, steps=1))
    assert "upload to S3 failed" in too_large["error"] and "S3 bucket" in too_large["error"]
    monkeypatch.delenv("MAX_INLINE_BYTES")
    result = assert_ok(run(good_input(garment_uri, steps=1)))
    assert "base64" in result["images"][0] and decode(result["images"][0]).size == HOUSE_SIZE
    assert len(result["warnings"]) == 1 and "upload to S3 failed" in result["warnings"][0]
    captured = capfd.readouterr()
    for text in (json.dumps(result), json.dumps(too_large), caplog.text, captured.out, captured.err):
        assert secret not in text


def test_local_runner_writes_the_images_of_test_input_json(worker_env, tmp_path) -> None:
    from worker.local import main

    job_file = Path(handler.__file__).parent / "test_input.json"
    overrides = ["--set", "steps=1", "--set", "resolution=256x192", "--set", "return_mask=true"]
    assert main([str(job_file), "--out", str(tmp_path), *overrides]) == 0
    image, mask = Image.open(tmp_path / "local-0.png"), Image.open(tmp_path / "local-mask.png")
    assert image.size == mask.size == HOUSE_SIZE
    result = json.loads((tmp_path / "local-result.json").read_text())
    assert result["seed"] == 42 and result["images"][0]["file"] == str(tmp_path / "local-0.png")
    assert main([str(job_file), "--out", str(tmp_path), "--set", "steps=0"]) == 1

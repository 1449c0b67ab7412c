"""storage: real uploads to a real S3-compatible server (SeaweedFS), and the inline fallback."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import time
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image
from s3_server import S3Server, start_seaweedfs
from worker_support import ALLOW_PRIVATE_URLS

from storage import RetryPolicy, StorageConfigError, StoredImage, load_settings, store_images
from storage.s3 import CONNECT_TIMEOUT, UploadError, client_for, put_with_retries

WRONG_SECRET = "wrong-secret-Zq81XkL0pV"  # distinctive so a leak is easy to spot


@pytest.fixture
def allow_private_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a job's s3Config point at the test server on 127.0.0.1 (refused by default)."""
    monkeypatch.setenv(ALLOW_PRIVATE_URLS, "true")


@pytest.fixture
def refuse_private_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_PRIVATE_URLS, raising=False)


def png_bytes(seed: int, size: tuple[int, int] = (24, 32)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def keys_in(server: S3Server, bucket: str) -> list[str]:
    listing = server.client().list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def test_no_bucket_configured_returns_inline_without_warning():
    images = [png_bytes(1), png_bytes(2)]
    result = store_images("job-a", images, extension="png", content_type="image/png", env={})
    assert result.warnings == []
    assert [base64.b64decode(image.base64) for image in result.images] == images
    assert all(image.url is None for image in result.images)
    assert result.images[0].to_dict() == {"base64": result.images[0].base64, "content_type": "image/png"}


def test_upload_gives_presigned_urls_that_return_the_same_bytes(s3_server, s3_bucket):
    images = [png_bytes(3), png_bytes(4)]
    env = s3_server.env(s3_bucket, BUCKET_PREFIX="/outputs/v1/", PRESIGNED_URL_EXPIRY="3600")
    result = store_images("sync-123-u1", images, extension="png", content_type="image/png", env=env)

    assert result.warnings == []
    assert keys_in(s3_server, s3_bucket) == ["outputs/v1/sync-123-u1/0.png", "outputs/v1/sync-123-u1/1.png"]
    for image, data in zip(result.images, images, strict=True):
        assert image.base64 is None
        assert image.to_dict() == {"url": image.url, "content_type": "image/png"}
        assert parse_qs(urlsplit(image.url).query)["X-Amz-Expires"] == ["3600"]
        status, content_type, body = s3_server.get(image.url)
        assert (status, content_type, body) == (200, "image/png", data)


def test_content_type_and_extension_are_the_callers(s3_server, s3_bucket):
    data = b"\xff\xd8\xff\xe0 not really a jpeg"
    result = store_images("job-jpeg", [data], extension="jpg", content_type="image/jpeg",
                          env=s3_server.env(s3_bucket))
    assert keys_in(s3_server, s3_bucket) == ["job-jpeg/0.jpg"]
    head = s3_server.client().head_object(Bucket=s3_bucket, Key="job-jpeg/0.jpg")
    assert head["ContentType"] == "image/jpeg"
    assert s3_server.get(result.images[0].url) == (200, "image/jpeg", data)


def test_tampered_presigned_url_is_refused(s3_server, s3_bucket):
    url = store_images("job-t", [png_bytes(5), png_bytes(6)], extension="png", content_type="image/png",
                       env=s3_server.env(s3_bucket)).images[0].url
    assert s3_server.get(url)[0] == 200

    signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    tampered = {
        "signature": url.replace(signature, flipped),
        "expiry": url.replace("X-Amz-Expires=604800", "X-Amz-Expires=604799"),
        "other object": url.replace("/job-t/0.png", "/job-t/1.png"),
    }
    for what, bad_url in tampered.items():
        assert bad_url != url, what
        status, _, body = s3_server.get(bad_url)
        assert status == 403, what
        assert png_bytes(5) not in body


def test_job_s3_config_wins_over_environment(s3_server, allow_private_endpoints):
    env_bucket, job_bucket = s3_server.create_bucket("env"), s3_server.create_bucket("job")
    env = s3_server.env(env_bucket, BUCKET_SECRET_ACCESS_KEY=WRONG_SECRET)
    data = png_bytes(7)
    result = store_images("job-cfg", [data], extension="png", content_type="image/png",
                          s3_config=s3_server.s3_config(job_bucket), env=env)
    assert result.warnings == []
    assert keys_in(s3_server, job_bucket) == ["job-cfg/0.png"]
    assert keys_in(s3_server, env_bucket) == []
    assert f"/{job_bucket}/job-cfg/0.png?" in result.images[0].url
    assert s3_server.get(result.images[0].url)[2] == data


def test_seed_environment_names_work(s3_server, s3_bucket):
    env = {
        "BUCKET_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "S3_Bucket": s3_bucket,
    }
    result = store_images("job-seed", [b"seed"], extension="png", content_type="image/png", env=env)
    assert result.warnings == []
    assert keys_in(s3_server, s3_bucket) == ["job-seed/0.png"]


# Loopback only: if the guard ever regressed, nothing may leave this machine. Other private ranges
# (metadata 169.254.169.254, 10/8, ...) share the SDK's address classification, tested beside fetch_url.
@pytest.mark.parametrize("endpoint", ["server", "http://127.0.0.2:9", "http://localhost:9"])
def test_job_s3_config_on_a_private_address_is_refused_before_any_request(
    s3_server, s3_bucket, refuse_private_endpoints, endpoint
):
    # A working server, bucket and credentials: only the address is wrong, and nothing is sent.
    config = s3_server.s3_config(s3_bucket)
    if endpoint != "server":
        config["endpointUrl"] = endpoint
    started = time.monotonic()
    result = store_images("job-private", [b"one", b"two"], extension="png", content_type="image/png",
                          s3_config=config, env={})
    # No connection attempt: not even one connect timeout (the bucket check below is the proof).
    assert time.monotonic() - started < CONNECT_TIMEOUT
    assert result.images == [StoredImage.inline(b"one", "image/png"), StoredImage.inline(b"two", "image/png")]
    # The same sentence for every address: whether something listens there is not revealed.
    assert result.warnings == [
        "S3 upload skipped: the job's s3Config endpoint is not allowed "
        "(it must resolve to a public address); returning images inline"
    ]
    assert keys_in(s3_server, s3_bucket) == []


@pytest.mark.parametrize("s3_config", ["s3://bucket", ["endpointUrl", "x"], 5])
def test_s3_config_that_is_not_an_object_goes_inline_with_a_warning(s3_config):
    result = store_images("job-odd", [b"img"], extension="png", content_type="image/png",
                          s3_config=s3_config, env={})
    assert result.images == [StoredImage.inline(b"img", "image/png")]
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith("S3 upload skipped: s3Config must be a JSON object")


def test_an_invalid_bucket_name_is_not_retried(s3_server):
    # botocore refuses the name before sending (ParamValidationError): waiting cannot fix it.
    # A retry would first wait BUCKET_UPLOAD_BACKOFF (5 s): the bound is that wait, not a measurement.
    env = s3_server.env("not a valid bucket!", BUCKET_UPLOAD_ATTEMPTS="3", BUCKET_UPLOAD_BACKOFF="5")
    client_for(load_settings(env=env))  # built once per worker (seconds on a loaded machine): not timed
    started = time.monotonic()
    result = store_images("job-name", [b"img"], extension="png", content_type="image/png", env=env)
    assert time.monotonic() - started < 5
    assert result.images == [StoredImage.inline(b"img", "image/png")]
    assert result.warnings == [
        "upload to S3 failed after 1 attempt (ParamValidationError); returning images inline"
    ]


def _assert_secret_nowhere(secret: str, result, caplog, capsys) -> None:
    captured = capsys.readouterr()
    dumped = json.dumps({"images": [i.to_dict() for i in result.images], "warnings": result.warnings})
    for where, text in {"result": dumped, "logs": caplog.text, "stdout": captured.out,
                        "stderr": captured.err}.items():
        assert secret not in text, f"secret leaked into {where}"


def test_wrong_secret_returns_inline_with_warning_and_no_secret(s3_server, s3_bucket, caplog, capsys):
    caplog.set_level(logging.DEBUG)  # botocore's debug output included: it must not leak either
    images = [png_bytes(8), png_bytes(9)]
    env = s3_server.env(s3_bucket, BUCKET_SECRET_ACCESS_KEY=WRONG_SECRET, BUCKET_UPLOAD_ATTEMPTS="3",
                        BUCKET_UPLOAD_BACKOFF="5")
    client_for(load_settings(env=env))  # built once per worker (seconds on a loaded machine): not timed
    started = time.monotonic()
    result = store_images("job-bad", images, extension="png", content_type="image/png", env=env)

    assert time.monotonic() - started < 5  # a retry would have waited BUCKET_UPLOAD_BACKOFF first
    assert [base64.b64decode(image.base64) for image in result.images] == images
    # Refused by S3 (403) is permanent: one try only, named by its S3 error code.
    assert result.warnings == [
        "upload to S3 failed after 1 attempt (SignatureDoesNotMatch (HTTP 403)); returning images inline"
    ]
    assert keys_in(s3_server, s3_bucket) == []
    assert any(record.name.startswith("botocore") for record in caplog.records), "debug capture is real"
    _assert_secret_nowhere(WRONG_SECRET, result, caplog, capsys)


def test_stopped_server_returns_inline_with_warning_after_bounded_retries(tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    server = start_seaweedfs(tmp_path)
    try:
        bucket = server.create_bucket()
        env = server.env(bucket, BUCKET_UPLOAD_ATTEMPTS="3", BUCKET_UPLOAD_BACKOFF="0.1")
        working = store_images("job-up", [b"x"], extension="png", content_type="image/png", env=env)
        assert working.warnings == []
    finally:
        server.stop()

    images = [png_bytes(10), png_bytes(11)]
    started = time.monotonic()
    result = store_images("job-down", images, extension="png", content_type="image/png", env=env)
    elapsed = time.monotonic() - started

    assert [base64.b64decode(image.base64) for image in result.images] == images
    assert result.warnings == [
        "upload to S3 failed after 3 attempts (EndpointConnectionError); returning images inline"
    ]
    # Waited 0.1 + 0.2 s between tries (the sleeps are certain); the images were tried side by
    # side, not one after the other. The upper bound is a sanity bound, far above either.
    assert 0.3 <= elapsed < 10
    _assert_secret_nowhere(server.secret_key, result, caplog, capsys)


def test_retries_back_off_doubling():
    settings = load_settings(env={
        "BUCKET_ENDPOINT_URL": "http://127.0.0.1:9",  # discard port: nothing listens
        "BUCKET_NAME": "b", "BUCKET_ACCESS_KEY_ID": "k", "BUCKET_SECRET_ACCESS_KEY": "s",
        "BUCKET_UPLOAD_ATTEMPTS": "4", "BUCKET_UPLOAD_BACKOFF": "0.25",
    })
    waits: list[float] = []
    with pytest.raises(UploadError) as failure:
        put_with_retries(client_for(settings), settings, "k", b"x", "image/png", sleep=waits.append)
    assert waits == [0.0, 0.25, 0.5, 1.0]
    assert failure.value.attempts == 4
    assert failure.value.reason == "EndpointConnectionError"


@pytest.mark.parametrize(
    ("s3_config", "env", "expected"),
    [
        ({"endpointUrl": "http://127.0.0.1:9", "accessId": "a", "accessSecret": WRONG_SECRET},
         {}, "s3Config is missing bucketName"),
        (None, {"BUCKET_ENDPOINT_URL": "http://127.0.0.1:9"}, "no bucket name"),
        (None, {"BUCKET_NAME": "b", "PRESIGNED_URL_EXPIRY": "604801"},
         "PRESIGNED_URL_EXPIRY must be between"),
        (None, {"BUCKET_NAME": "b", "BUCKET_ENDPOINT_URL": f"http://user:{WRONG_SECRET}@127.0.0.1:9"},
         "must not carry credentials"),
    ],
)
def test_unusable_settings_go_inline_with_a_clear_warning(s3_config, env, expected):
    result = store_images("job-c", [b"img"], extension="png", content_type="image/png",
                          s3_config=s3_config, env=env)
    assert result.images == [StoredImage.inline(b"img", "image/png")]
    assert len(result.warnings) == 1 and expected in result.warnings[0]
    assert WRONG_SECRET not in result.warnings[0]
    with pytest.raises(StorageConfigError):
        load_settings(s3_config, env)


def test_settings_region_prefix_and_secret_hidden_from_repr(allow_private_endpoints, monkeypatch):
    # A job's endpoint is resolved once when its settings are read (and then dialled at that
    # address): answer the AWS name below locally, with a documentation address, so that no
    # DNS query leaves this machine. Nothing connects to it: these are settings only.
    real_lookup = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *args, **kwargs: real_lookup(
        "192.0.2.10" if host.endswith(".amazonaws.com") else host, *args, **kwargs))
    aws = load_settings(env={"BUCKET_NAME": "b", "BUCKET_SECRET_ACCESS_KEY": WRONG_SECRET,
                             "BUCKET_ENDPOINT_URL": "https://s3.eu-west-2.amazonaws.com"})
    assert aws.region == "eu-west-2"
    assert WRONG_SECRET not in repr(aws)
    custom = load_settings(env={"BUCKET_NAME": "b", "BUCKET_ENDPOINT_URL": "http://127.0.0.1:9",
                                "BUCKET_REGION": "auto", "BUCKET_PREFIX": "a/b/"})
    assert (custom.region, custom.prefix) == ("auto", "a/b")
    assert load_settings(env={"BUCKET_NAME": "b"}).region == "us-east-1"
    job = {"endpointUrl": "https://s3.ap-south-1.amazonaws.com", "accessId": "a", "accessSecret": "s",
           "bucketName": "j"}
    assert load_settings(job, env={"BUCKET_REGION": "eu-west-2"}).region == "ap-south-1"
    assert load_settings(job, env={}).address == "192.0.2.10"  # the checked address is kept
    assert custom.object_key("../evil id", 2, ".webp") == "a/b/evil_id/2.webp"
    assert custom.object_key("job-1/mask", 0, "png") == "a/b/job-1/mask/0.png"
    assert custom.object_key("//..", 0, "png") == "a/b/job/0.png"
    assert RetryPolicy(3, 0.5).delay_before(1) == 0.0

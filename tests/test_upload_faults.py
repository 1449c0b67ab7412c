"""Uploads when S3 misbehaves: one decision per job, a deadline, and no partial objects.

Real servers only: SeaweedFS (a private instance where a test kills it, the session's shared
one otherwise) behind a loopback proxy that delays answers or paces the upload. Elapsed-time
asserts are upper bounds of the configured deadline plus a generous slack.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
from s3_server import S3Server, start_seaweedfs
from worker_support import ALLOW_PRIVATE_URLS, DelayingProxy

from storage import OutputFile, StoredImage, store_images, store_outputs
from storage.s3 import client_for
from storage.settings import load_settings

SLACK = 3.0  # for a loaded 2-core machine: the deadline plus this, never a tight measurement


def keys_in(server: S3Server, bucket: str) -> list[str]:
    listing = server.client().list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def upstream(server: S3Server) -> tuple[str, int]:
    parts = urlsplit(server.endpoint_url)
    return parts.hostname, parts.port


def job_files(size: int = 2000) -> list[OutputFile]:
    images = [OutputFile(bytes([index]) * size, "image/png", "png", index) for index in range(3)]
    return [*images, OutputFile(b"mask" * (size // 4), "image/png", "png", 0, group="mask")]


def test_outputs_and_mask_upload_in_parallel_under_one_decision(s3_server, s3_bucket):
    files = job_files()
    result = store_outputs("job-par", files, env=s3_server.env(s3_bucket))
    assert result.warnings == []
    assert keys_in(s3_server, s3_bucket) == [
        "job-par/0.png",
        "job-par/1.png",
        "job-par/2.png",
        "job-par/mask/0.png",
    ]
    for stored, file in zip(result.images, files, strict=True):
        assert s3_server.get(stored.url) == (200, "image/png", file.data)


def test_one_failed_file_sends_everything_inline_and_leaves_nothing(s3_server, s3_bucket):
    # Every request for the second image is broken on the way out (a botocore hook on the real
    # client the store uses); the other files reach the bucket and are removed again.
    env = s3_server.env(s3_bucket, BUCKET_UPLOAD_ATTEMPTS="2", BUCKET_UPLOAD_BACKOFF="0.05")
    client = client_for(load_settings(env=env))
    sent: list[str] = []

    def break_second_image(request, **kwargs) -> None:
        from botocore.exceptions import EndpointConnectionError

        sent.append(urlsplit(request.url).path)
        if request.url.split("?")[0].endswith("/job-one/1.png"):
            raise EndpointConnectionError(endpoint_url=request.url)

    client.meta.events.register("before-send.s3.PutObject", break_second_image, unique_id="break-1")
    try:
        files = job_files()
        result = store_outputs("job-one", files, env=env)
    finally:
        client.meta.events.unregister("before-send.s3.PutObject", unique_id="break-1")
    assert result.images == [file.inline() for file in files]
    assert result.warnings == [
        "upload to S3 failed after 2 attempts (EndpointConnectionError); returning images inline"
    ]
    # The broken file was tried twice, every other file once: nothing is retried after a failure.
    assert sent.count(f"/{s3_bucket}/job-one/1.png") == 2
    assert len(sent) == 5
    assert keys_in(s3_server, s3_bucket) == []


def test_a_slow_s3_is_cut_off_at_the_upload_deadline(s3_server, s3_bucket):
    deadline = 1.0
    env = s3_server.env(s3_bucket, BUCKET_UPLOAD_TIMEOUT=str(deadline), BUCKET_UPLOAD_ATTEMPTS="3")
    with DelayingProxy(upstream(s3_server), answer_delay=deadline + 4) as slow:
        env["BUCKET_ENDPOINT_URL"] = slow.endpoint_url
        # A worker builds its client once and keeps it; building one (parsing botocore's
        # service model) can take seconds on a loaded machine and is not an S3 wait.
        client_for(load_settings(env=env))
        started = time.monotonic()
        result = store_images(
            "job-slow", [b"a" * 500, b"b" * 500], extension="png", content_type="image/png", env=env
        )
        elapsed = time.monotonic() - started
    assert elapsed < deadline + SLACK
    assert [base64.b64decode(image.base64) for image in result.images] == [b"a" * 500, b"b" * 500]
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith("upload to S3 ")  # a read timeout or the deadline, whichever first
    # The next job, with S3 answering normally, uploads.
    env["BUCKET_ENDPOINT_URL"] = s3_server.endpoint_url
    assert (
        store_images("job-after", [b"c"], extension="png", content_type="image/png", env=env).warnings == []
    )


def test_s3_killed_in_the_middle_of_an_upload_leaves_no_partial_object(tmp_path):
    server = start_seaweedfs(tmp_path / "s3")
    try:
        bucket = server.create_bucket()
        env = server.env(
            bucket, BUCKET_UPLOAD_ATTEMPTS="2", BUCKET_UPLOAD_BACKOFF="0.05", BUCKET_UPLOAD_TIMEOUT="20"
        )
        big = bytes(range(256)) * 4096  # 1 MiB, paced at 256 KB/s: about 4 s on the wire
        with DelayingProxy(upstream(server), upload_rate=256_000, started_after=128_000) as link:
            env["BUCKET_ENDPOINT_URL"] = link.endpoint_url
            outcome: dict = {}
            worker = threading.Thread(
                target=lambda: outcome.update(
                    result=store_images("job-kill", [big], extension="png", content_type="image/png", env=env)
                ),
                daemon=True,
            )
            worker.start()
            assert link.upload_started.wait(30), "the upload never started"
            server.stop()  # SIGKILL, a quarter of the body sent
            worker.join(30)
        assert not worker.is_alive()
        result = outcome["result"]
        assert result.images == [StoredImage.inline(big, "image/png")]
        assert len(result.warnings) == 1 and result.warnings[0].startswith(
            "upload to S3 failed after 2 attempts"
        )
    finally:
        server.stop()
    # The same data on new ports: S3 stores an object whole or not at all.
    restarted = start_seaweedfs(tmp_path / "s3")
    try:
        assert keys_in(restarted, bucket) == []
        env["BUCKET_ENDPOINT_URL"] = restarted.endpoint_url
        after = store_images("job-next", [b"next"], extension="png", content_type="image/png", env=env)
        assert after.warnings == [] and restarted.get(after.images[0].url)[2] == b"next"
    finally:
        restarted.stop()


@pytest.mark.parametrize("value", ["0", "x", "9999"])
def test_upload_deadline_setting_is_checked(value):
    from storage import StorageConfigError

    with pytest.raises(StorageConfigError, match="BUCKET_UPLOAD_TIMEOUT must be"):
        load_settings(env={"BUCKET_NAME": "b", "BUCKET_UPLOAD_TIMEOUT": value})


def test_a_job_endpoint_is_dialled_at_the_address_that_was_checked(s3_server, s3_bucket, monkeypatch):
    # A name that answers the real server's address to the check and an address where nothing
    # listens afterwards (DNS rebinding, played by the resolver every lookup goes through).
    # Only loopback addresses are ever handed out: nothing can leave this machine.
    monkeypatch.setenv(ALLOW_PRIVATE_URLS, "true")
    name, port = "s3.rebinding.test", upstream(s3_server)[1]
    real_lookup, lookups = socket.getaddrinfo, []

    def rebinding_lookup(host, *args, **kwargs):
        if host != name:
            return real_lookup(host, *args, **kwargs)
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"
        return real_lookup(address, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_lookup)
    config = {**s3_server.s3_config(s3_bucket), "endpointUrl": f"http://{name}:{port}"}
    result = store_images("job-pin", [b"pinned"], extension="png", content_type="image/png",
                          s3_config=config, env={})  # fmt: skip
    assert result.warnings == []
    assert lookups == [name]  # looked up once, for the check
    assert urlsplit(result.images[0].url).netloc == f"{name}:{port}"  # the caller's name, signed
    assert keys_in(s3_server, s3_bucket) == ["job-pin/0.png"]

"""The S3 calls: a cached boto3 client, a put with bounded retries, and a presigned GET URL.

botocore's own retries are switched off so that the number of tries and the time spent
are the ones in RetryPolicy, not those multiplied by botocore's. Failure reasons are built from
exception class names and S3 error codes only: a message could echo a URL or header.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from storage.settings import S3Settings

# Client-side statuses that a later try can still get past (timeout, throttling).
_RETRYABLE_4XX = {408, 429}


class UploadError(Exception):
    """An upload that did not succeed; `reason` is safe to show to users."""

    def __init__(self, reason: str, attempts: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


def failure_reason(exc: BaseException) -> str:
    """`SignatureDoesNotMatch (HTTP 403)` for S3 errors, else the exception's class name."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code") or "ClientError"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{code} (HTTP {status})" if status else str(code)
    return type(exc).__name__


def is_permanent(exc: BaseException) -> bool:
    """True when trying again cannot help: botocore refused the parameters before sending
    (an invalid bucket name), or S3 refused the request itself (4xx)."""
    if isinstance(exc, ParamValidationError):
        return True
    if not isinstance(exc, ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return 400 <= status < 500 and status not in _RETRYABLE_4XX


# A job's files upload side by side, at most this many at once (4 samples and a mask); the
# client keeps as many connections open, so its descriptors are bounded by this too.
MAX_PARALLEL_UPLOADS = 5
# botocore's own limits for one request; a job's upload deadline can only make them shorter.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0


@functools.lru_cache(maxsize=8)
def _cached_client(
    endpoint_url: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    region: str,
    request_timeout: float,
    address: str | None,
) -> BaseClient:
    # A session per client: the default session is not safe to share between threads.
    session = boto3.session.Session()
    config = Config(
        signature_version="s3v4",
        # Custom endpoints (MinIO, SeaweedFS, R2) rarely have per-bucket DNS names.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=MAX_PARALLEL_UPLOADS,
        # A request never outlives the job's upload deadline by much, so a thread left behind
        # by a job that gave up on a slow S3 ends soon after.
        connect_timeout=min(CONNECT_TIMEOUT, request_timeout),
        read_timeout=min(READ_TIMEOUT, request_timeout),
    )
    client = session.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        region_name=region,
        config=config,
    )
    if address is not None and endpoint_url:
        _pin(client, address, endpoint_url)
    return client


def _pin(client: BaseClient, address: str, endpoint_url: str) -> None:
    """Make `client` dial `address` for its endpoint instead of looking the name up again.

    The name stays in the Host header (which SigV4 signs), in TLS's SNI and in the
    certificate check, as the runpod SDK's pinned downloads do. botocore has no public hook
    for where a connection goes: its HTTP session's pool manager is wrapped (through
    `_endpoint`, a private attribute; `test_upload_faults` fails if a botocore upgrade
    moves it). A request through a proxy is left alone: the proxy resolves the name.
    """
    parts = urlsplit(endpoint_url)
    default_port = 443 if parts.scheme == "https" else 80
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    host_header = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
    http = client._endpoint.http_session
    pools_for = http._get_connection_manager

    def pinned_pools(url: str, proxy_url: str | None = None):
        manager = pools_for(url, proxy_url)
        return manager if proxy_url else _PinnedPools(manager, address, parts.hostname)

    http._get_connection_manager = pinned_pools

    def keep_the_name(request, **kwargs) -> None:
        request.headers["Host"] = host_header

    client.meta.events.register("before-send.s3", keep_the_name, unique_id="ootd-pinned-host")


class _PinnedPools:
    """A urllib3 pool manager whose pools connect to one address, keeping the name for TLS."""

    def __init__(self, manager, address: str, hostname: str) -> None:
        self._manager, self._address, self._hostname = manager, address, hostname

    def connection_from_url(self, url: str):
        pool = self._manager.connection_from_url(url)
        if pool.host != self._address:
            if urlsplit(url).scheme == "https":
                pool.assert_hostname = self._hostname
                pool.conn_kw = {**(pool.conn_kw or {}), "server_hostname": self._hostname}
            pool.host = self._address
        return pool


def client_for(settings: S3Settings) -> BaseClient:
    """The boto3 S3 client for these settings, built once and reused across jobs."""
    return _cached_client(
        settings.endpoint_url,
        settings.access_key_id,
        settings.secret_access_key,
        settings.region,
        settings.upload_timeout,
        settings.address,
    )


def put_with_retries(
    client: BaseClient,
    settings: S3Settings,
    key: str,
    data: bytes,
    content_type: str,
    sleep: Callable[[float], None] = time.sleep,
    stop: threading.Event | None = None,
) -> int:
    """Put one object, trying up to `settings.retry.attempts` times; returns the tries used.

    Raises UploadError after the last try, at once when S3 refused the request (wrong
    secret, missing bucket): those do not get better by waiting, and before any further try
    once `stop` is set (the job has given up on S3: another file failed, or time ran out).
    """
    policy = settings.retry
    for attempt in range(1, policy.attempts + 1):
        delay = policy.delay_before(attempt)
        if stop is None:
            sleep(delay)
        elif stop.wait(delay):
            raise UploadError("stopped", attempt - 1)
        try:
            client.put_object(Bucket=settings.bucket, Key=key, Body=data, ContentType=content_type)
            return attempt
        except (BotoCoreError, ClientError) as exc:
            if is_permanent(exc) or attempt == policy.attempts:
                raise UploadError(failure_reason(exc), attempt) from None
    raise AssertionError("unreachable: RetryPolicy.attempts is at least 1")


def delete_quietly(client: BaseClient, settings: S3Settings, keys: list[str]) -> bool:
    """Remove `keys` in one request (best effort); True when S3 confirmed every one."""
    if not keys:
        return True
    try:
        answer = client.delete_objects(
            Bucket=settings.bucket, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True}
        )
    except (BotoCoreError, ClientError):
        return False
    return not answer.get("Errors")


def presigned_get_url(client: BaseClient, settings: S3Settings, key: str) -> str:
    """A GET URL for the object that works without credentials until it expires."""
    return client.generate_presigned_url(
        "get_object", Params={"Bucket": settings.bucket, "Key": key}, ExpiresIn=settings.expiry_seconds
    )

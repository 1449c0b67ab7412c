"""The S3 calls: a cached boto3 client, a put with bounded retries, and a presigned GET URL.

botocore's own retries are switched off so that the number of tries and the time spent
are the ones in RetryPolicy, not those multiplied by botocore's. Failure reasons are built from
exception class names and S3 error codes only: a message could echo a URL or header.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

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


@functools.lru_cache(maxsize=8)
def _cached_client(
    endpoint_url: str | None, access_key_id: str | None, secret_access_key: str | None, region: str
) -> BaseClient:
    # A session per client: the default session is not safe to share between threads.
    session = boto3.session.Session()
    config = Config(
        signature_version="s3v4",
        # Custom endpoints (MinIO, SeaweedFS, R2) rarely have per-bucket DNS names.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
    )
    return session.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        region_name=region,
        config=config,
    )


def client_for(settings: S3Settings) -> BaseClient:
    """The boto3 S3 client for these settings, built once and reused across jobs."""
    return _cached_client(
        settings.endpoint_url, settings.access_key_id, settings.secret_access_key, settings.region
    )


def put_with_retries(
    client: BaseClient,
    settings: S3Settings,
    key: str,
    data: bytes,
    content_type: str,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Put one object, trying up to `settings.retry.attempts` times; returns the tries used.

    Raises UploadError after the last try, or at once when S3 refused the request (wrong
    secret, missing bucket): those do not get better by waiting.
    """
    policy = settings.retry
    for attempt in range(1, policy.attempts + 1):
        sleep(policy.delay_before(attempt))
        try:
            client.put_object(Bucket=settings.bucket, Key=key, Body=data, ContentType=content_type)
            return attempt
        except (BotoCoreError, ClientError) as exc:
            if is_permanent(exc) or attempt == policy.attempts:
                raise UploadError(failure_reason(exc), attempt) from None
    raise AssertionError("unreachable: RetryPolicy.attempts is at least 1")


def presigned_get_url(client: BaseClient, settings: S3Settings, key: str) -> str:
    """A GET URL for the object that works without credentials until it expires."""
    return client.generate_presigned_url(
        "get_object", Params={"Bucket": settings.bucket, "Key": key}, ExpiresIn=settings.expiry_seconds
    )

"""Where outputs go: S3 settings resolved from a job's `s3Config` or the environment.

A job's `s3Config` is taken as a whole (endpoint, credentials and bucket together): the
worker's own credentials are never combined with an endpoint chosen by a caller, which
would hand them to that caller's server. Its endpoint must be a public address, like a job's
image URLs: the worker must not become a way into its own network.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from runpod.serverless.utils.rp_ssrf import resolve_and_validate

from core.jsontypes import json_type

DEFAULT_REGION = "us-east-1"
# SigV4 presigned URLs cannot live longer than 7 days.
MAX_PRESIGNED_EXPIRY = 7 * 24 * 3600
DEFAULT_PRESIGNED_EXPIRY = MAX_PRESIGNED_EXPIRY
DEFAULT_UPLOAD_ATTEMPTS = 3
DEFAULT_UPLOAD_BACKOFF = 0.5
# All of a job's uploads together, retries and waits included; then the images go inline.
DEFAULT_UPLOAD_TIMEOUT = 30.0

# Environment names, in order of preference (RunPod's names first, then the seed's).
ENDPOINT_VARS = ("BUCKET_ENDPOINT_URL",)
ACCESS_KEY_VARS = ("BUCKET_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
SECRET_KEY_VARS = ("BUCKET_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")
BUCKET_VARS = ("BUCKET_NAME", "S3_Bucket")

_AWS_REGION_IN_HOST = re.compile(r"(?:^|\.)s3[.-]([a-z]{2}(?:-gov)?-[a-z]+-\d)\.amazonaws\.com(?:\.cn)?$")


class StorageConfigError(ValueError):
    """The bucket settings are present but unusable; the message never holds a secret."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often an upload is tried and how long to wait between tries (doubling each time)."""

    attempts: int = DEFAULT_UPLOAD_ATTEMPTS
    backoff_seconds: float = DEFAULT_UPLOAD_BACKOFF

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_seconds < 0:
            raise ValueError("RetryPolicy needs attempts >= 1 and backoff_seconds >= 0")

    def delay_before(self, attempt: int) -> float:
        """Seconds to sleep before try number `attempt` (1-based); 0 before the first."""
        return 0.0 if attempt <= 1 else self.backoff_seconds * 2 ** (attempt - 2)


@dataclass(frozen=True)
class S3Settings:
    """Everything needed to upload one job's images and sign URLs for them.

    `secret_access_key` is left out of `repr` so that logging a settings object, or a
    traceback that shows it, cannot leak it.
    """

    bucket: str
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    region: str = DEFAULT_REGION
    prefix: str = ""
    expiry_seconds: int = DEFAULT_PRESIGNED_EXPIRY
    retry: RetryPolicy = RetryPolicy()
    upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT
    # The endpoint's address as checked for a job's s3Config (connections go there, with the
    # name kept for the Host header and TLS); None: connect by name (the worker's own bucket).
    address: str | None = None
    source: str = "environment"  # or "s3Config": logged with a failure so operators know which to fix

    def object_key(self, job_id: str, index: int, extension: str) -> str:
        """`<prefix>/<job id>/<index>.<ext>`, with the job id reduced to key-safe characters.

        A `/` in the job id nests (the worker stores masks under `<job id>/mask`); empty and
        dot-only segments are dropped so that no key can climb out of the prefix.
        """
        segments = [re.sub(r"[^A-Za-z0-9._-]", "_", part) for part in job_id.split("/")]
        safe_job = "/".join(part for part in segments if part.strip(".")) or "job"
        name = f"{safe_job}/{index}.{extension.lstrip('.')}"
        return f"{self.prefix}/{name}" if self.prefix else name


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = (env.get(name) or "").strip()
        if value:
            return value
    return None


def region_from_endpoint(endpoint_url: str | None) -> str | None:
    """The AWS region named in an endpoint host such as `s3.eu-west-1.amazonaws.com`, if any."""
    if not endpoint_url:
        return None
    host = urlsplit(endpoint_url).hostname or ""
    match = _AWS_REGION_IN_HOST.search(host)
    return match.group(1) if match else None


def _number_setting(env: Mapping[str, str], name: str, default: float, low: float, high: float,
                    cast: type = int):
    """`env[name]` as `cast` within [low, high], `default` when unset; a clear error otherwise."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise StorageConfigError(f"{name} must be {'an integer' if cast is int else 'a number'}, "
                                 f"not {raw!r}") from None
    if not low <= value <= high:
        raise StorageConfigError(f"{name} must be between {low} and {high}, not {value}")
    return value


def _endpoint(url: str | None, origin: str) -> str | None:
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        _ = parts.port  # reading it validates it
    except ValueError:
        raise StorageConfigError(f"{origin} must be an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StorageConfigError(f"{origin} must be an http(s) URL")
    if parts.username or parts.password:
        raise StorageConfigError(f"{origin} must not carry credentials in the URL")
    return url


def _checked_address(url: str) -> str:
    """Resolve a job's endpoint once, refuse it unless public, and return the address to dial.

    A job chooses its `s3Config` endpoint, so without this a job could make the worker send
    requests to loopback, the private network or the cloud metadata address, and read which
    of them answer from the warning. Nothing is sent to a refused endpoint, and the message is
    the same whatever the address is. The uploads then connect to the returned address
    (`S3Settings.address`): a name that answers a public address to this check and a private
    one a moment later (DNS rebinding) is never looked up a second time. The runpod SDK's
    override (RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS, local testing) skips the refusal only.
    """
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        return resolve_and_validate(parts.hostname, port)[0]
    except ValueError:  # SSRFError, and the UnicodeError of a host name that cannot be encoded
        raise StorageConfigError(
            "the job's s3Config endpoint is not allowed (it must resolve to a public address)"
        ) from None


def _job_settings(s3_config: object) -> dict:
    """The connection part of RunPod's per-job `s3Config`, all of it or none."""
    if not isinstance(s3_config, Mapping):
        raise StorageConfigError(
            "s3Config must be a JSON object (endpointUrl, accessId, accessSecret, bucketName), "
            f"not {json_type(s3_config)}"
        )
    keys = ("endpointUrl", "accessId", "accessSecret", "bucketName")
    # Named, never shown: the values are credentials (and str() of a huge number would raise).
    not_text = [key for key in keys if s3_config.get(key) and not isinstance(s3_config.get(key), str)]
    if not_text:
        raise StorageConfigError(f"s3Config {', '.join(not_text)} must be text")
    values = {key: (s3_config.get(key) or "").strip() for key in keys}
    missing = [key for key, value in values.items() if not value]
    if missing:
        raise StorageConfigError(f"s3Config is missing {', '.join(missing)}")
    endpoint = _endpoint(values["endpointUrl"], "s3Config.endpointUrl")
    return {
        "bucket": values["bucketName"],
        "endpoint_url": endpoint,
        "address": _checked_address(endpoint),
        "access_key_id": values["accessId"],
        "secret_access_key": values["accessSecret"],
        "source": "s3Config",
    }


def _env_settings(env: Mapping[str, str]) -> dict | None:
    endpoint = _first(env, ENDPOINT_VARS)
    bucket = _first(env, BUCKET_VARS)
    if bucket is None:
        if endpoint is not None:
            # The user meant to upload: say why nothing was, rather than going quiet.
            raise StorageConfigError(
                "BUCKET_ENDPOINT_URL is set but no bucket name (BUCKET_NAME or S3_Bucket)"
            )
        return None
    return {
        "bucket": bucket,
        "endpoint_url": _endpoint(endpoint, "BUCKET_ENDPOINT_URL"),
        "access_key_id": _first(env, ACCESS_KEY_VARS),
        "secret_access_key": _first(env, SECRET_KEY_VARS),
        "source": "environment",
    }


def load_settings(
    s3_config: object = None, env: Mapping[str, str] | None = None
) -> S3Settings | None:
    """Resolve where to upload, or None when no bucket is configured (images go inline).

    A non-empty `s3Config` (whatever JSON the job sent; it must be an object with a public
    endpoint) wins over the environment. Prefix, region, expiry and retry settings always
    come from the environment (they carry no secret). Raises
    StorageConfigError when the settings are present but unusable, so a worker can check
    its environment at start-up instead of discovering it after a GPU run.
    """
    env = os.environ if env is None else env
    connection = _job_settings(s3_config) if s3_config else _env_settings(env)
    if connection is None:
        return None
    named = region_from_endpoint(connection["endpoint_url"])
    configured = (env.get("BUCKET_REGION") or "").strip()
    # BUCKET_REGION describes the worker's own bucket; a job's endpoint speaks for itself.
    region = ((named or configured) if s3_config else (configured or named)) or DEFAULT_REGION
    return S3Settings(
        region=region,
        prefix=(env.get("BUCKET_PREFIX") or "").strip().strip("/"),
        expiry_seconds=_number_setting(
            env, "PRESIGNED_URL_EXPIRY", DEFAULT_PRESIGNED_EXPIRY, 1, MAX_PRESIGNED_EXPIRY
        ),
        retry=RetryPolicy(
            attempts=_number_setting(env, "BUCKET_UPLOAD_ATTEMPTS", DEFAULT_UPLOAD_ATTEMPTS, 1, 10),
            backoff_seconds=_number_setting(
                env, "BUCKET_UPLOAD_BACKOFF", DEFAULT_UPLOAD_BACKOFF, 0, 30, cast=float
            ),
        ),
        upload_timeout=_number_setting(
            env, "BUCKET_UPLOAD_TIMEOUT", DEFAULT_UPLOAD_TIMEOUT, 0.1, 3600, cast=float
        ),
        **connection,
    )

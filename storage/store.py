"""store_images: upload a job's outputs when a bucket is configured, and never lose them.

Whatever happens on the way to S3, every image comes back: uploaded ones as presigned
URLs, the others inline as base64 with a warning that says why. Deciding whether an
inline result is too large for RunPod is the caller's job.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from botocore.exceptions import BotoCoreError

from storage.result import StorageResult, StoredImage
from storage.s3 import UploadError, client_for, failure_reason, presigned_get_url, put_with_retries
from storage.settings import StorageConfigError, load_settings

logger = logging.getLogger(__name__)


def _inline(images: Sequence[bytes], content_type: str) -> list[StoredImage]:
    return [StoredImage.inline(data, content_type) for data in images]


def store_images(
    job_id: str,
    images: Sequence[bytes],
    *,
    extension: str,
    content_type: str,
    s3_config: object = None,
    env: Mapping[str, str] | None = None,
) -> StorageResult:
    """Upload `images` to `<prefix>/<job_id>/<n>.<extension>` and return URLs, or inline data.

    No bucket configured: all images inline, no warning. A failed upload: that image and
    the ones after it inline (once S3 has failed after its retries, trying the next image
    would only add the same wait), plus one warning.
    """
    try:
        settings = load_settings(s3_config, env)
    except StorageConfigError as exc:
        message = f"S3 upload skipped: {exc}; returning images inline"
        logger.warning(message)
        return StorageResult(_inline(images, content_type), [message])
    if settings is None:
        return StorageResult(_inline(images, content_type))

    try:
        client = client_for(settings)
    except (BotoCoreError, ValueError) as exc:
        message = f"S3 upload skipped: cannot create a client ({type(exc).__name__}); returning images inline"
        logger.warning(message)
        return StorageResult(_inline(images, content_type), [message])

    stored: list[StoredImage] = []
    for index, data in enumerate(images):
        key = settings.object_key(job_id, index, extension)
        try:
            attempts = put_with_retries(client, settings, key, data, content_type)
            url = presigned_get_url(client, settings, key)
        except UploadError as exc:
            plural = "s" if exc.attempts != 1 else ""
            message = (
                f"upload to S3 failed after {exc.attempts} attempt{plural} ({exc.reason}); "
                "returning images inline"
            )
            logger.warning("%s [bucket %s from %s, key %s]", message, settings.bucket, settings.source, key)
            return StorageResult(stored + _inline(images[index:], content_type), [message])
        except BotoCoreError as exc:  # presigning is local, but a broken config can still fail here
            message = f"signing the S3 URL failed ({failure_reason(exc)}); returning images inline"
            logger.warning(message)
            return StorageResult(stored + _inline(images[index:], content_type), [message])
        logger.info("uploaded s3://%s/%s (%d bytes, try %d)", settings.bucket, key, len(data), attempts)
        stored.append(StoredImage(content_type=content_type, url=url))
    return StorageResult(stored)

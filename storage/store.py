"""Storing a job's outputs: upload them when a bucket is configured, and never lose them.

One decision per job: either every file is uploaded and comes back as a presigned URL, or
every file comes back inline as base64 with one warning that says why. The files upload in
parallel under one deadline (BUCKET_UPLOAD_TIMEOUT); once one has failed after its retries
the others are not tried again, and what did reach the bucket is removed, so the bucket
never holds half of a job that was answered inline. Deciding whether an inline result is
too large for RunPod is the caller's job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

from botocore.client import BaseClient
from botocore.exceptions import BotoCoreError

from storage.result import StorageResult, StoredImage
from storage.s3 import (
    MAX_PARALLEL_UPLOADS,
    UploadError,
    client_for,
    delete_quietly,
    failure_reason,
    presigned_get_url,
    put_with_retries,
)
from storage.settings import S3Settings, StorageConfigError, load_settings

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class OutputFile:
    """One file of a job's outputs; it goes to `<prefix>/<job id>[/<group>]/<index>.<extension>`."""

    data: bytes
    content_type: str
    extension: str
    index: int
    group: str = ""

    def key(self, settings: S3Settings, job_id: str) -> str:
        owner = f"{job_id}/{self.group}" if self.group else job_id
        return settings.object_key(owner, self.index, self.extension)

    def inline(self) -> StoredImage:
        return StoredImage.inline(self.data, self.content_type)


def store_images(
    job_id: str,
    images: Sequence[bytes],
    *,
    extension: str,
    content_type: str,
    s3_config: object = None,
    env: Mapping[str, str] | None = None,
) -> StorageResult:
    """Store images of one type as `<prefix>/<job_id>/<n>.<extension>` (see `store_outputs`)."""
    files = [OutputFile(data, content_type, extension, index) for index, data in enumerate(images)]
    return store_outputs(job_id, files, s3_config=s3_config, env=env)


def store_outputs(
    job_id: str,
    files: Sequence[OutputFile],
    *,
    s3_config: object = None,
    env: Mapping[str, str] | None = None,
) -> StorageResult:
    """Upload `files` and return their URLs in order, or all of them inline with one warning.

    No bucket configured: all inline, no warning.
    """
    try:
        settings = load_settings(s3_config, env)
    except StorageConfigError as exc:
        return _all_inline(files, f"S3 upload skipped: {exc}; returning images inline")
    if settings is None:
        return StorageResult([file.inline() for file in files])
    try:
        client = client_for(settings)
    except (BotoCoreError, ValueError) as exc:
        return _all_inline(
            files,
            f"S3 upload skipped: cannot create a client ({type(exc).__name__}); returning images inline",
        )

    keys = [file.key(settings, job_id) for file in files]
    problem = _upload_all(client, settings, files, keys)
    if problem is None:
        try:
            urls = [presigned_get_url(client, settings, key) for key in keys]
        except BotoCoreError as exc:  # presigning is local, but a broken config can still fail here
            problem = f"signing the S3 URL failed ({failure_reason(exc)})"
            logger.warning(problem)
    if problem is not None:
        return _all_inline(files, f"{problem}; returning images inline", logged=True)
    return StorageResult(
        [StoredImage(content_type=f.content_type, url=u) for f, u in zip(files, urls, strict=True)]
    )


def _upload_all(
    client: BaseClient, settings: S3Settings, files: Sequence[OutputFile], keys: list[str]
) -> str | None:
    """Put every file, in parallel, by the upload deadline; None when all arrived, else why not.

    On failure the files that did arrive are deleted again. A PUT still running when the
    deadline passes is abandoned (its thread ends within botocore's timeouts, which are
    capped by the deadline); an object is stored whole or not at all, so what it may still
    leave behind is a complete object no result points to, never a partial one.
    """
    if not files:
        return None
    stop = threading.Event()
    deadline = time.monotonic() + settings.upload_timeout
    pool = ThreadPoolExecutor(max_workers=min(len(files), MAX_PARALLEL_UPLOADS), thread_name_prefix="upload")
    futures = []
    try:
        futures += [
            pool.submit(put_with_retries, client, settings, key, file.data, file.content_type, stop=stop)
            for file, key in zip(files, keys, strict=True)
        ]
        done, pending = wait(futures, timeout=settings.upload_timeout, return_when=FIRST_EXCEPTION)
        failed = [future for future in futures if future in done and future.exception() is not None]
        if not failed and not pending:
            for key, future, file in zip(keys, futures, files, strict=True):
                logger.info(
                    "uploaded s3://%s/%s (%d bytes, try %d)",
                    settings.bucket,
                    key,
                    len(file.data),
                    future.result(),
                )
            return None
        stop.set()  # no further tries, and no waiting between tries
        if failed:
            error = failed[0].exception()
            if not isinstance(error, UploadError):
                raise error
            plural = "s" if error.attempts != 1 else ""
            problem = f"upload to S3 failed after {error.attempts} attempt{plural} ({error.reason})"
        else:
            problem = (
                f"upload to S3 did not finish within {settings.upload_timeout:g} s (BUCKET_UPLOAD_TIMEOUT)"
            )
        # Uploads already under way finish or fail by themselves (bounded by the deadline's
        # timeouts); wait for them briefly so that the ones that arrived can be removed.
        wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        arrived = [key for key, future in zip(keys, futures, strict=True) if _succeeded(future)]
        if arrived and not delete_quietly(client, settings, arrived):
            logger.warning("could not remove %d uploaded object(s) of a job answered inline", len(arrived))
        logger.warning(
            "%s [bucket %s from %s, first key %s]", problem, settings.bucket, settings.source, keys[0]
        )
        return problem
    finally:
        # Join finished threads (none outlives the job); never wait for a PUT that is still
        # running past the deadline: botocore's timeouts, capped by it, end that one.
        pool.shutdown(wait=all(future.done() for future in futures), cancel_futures=True)


def _succeeded(future) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _all_inline(files: Sequence[OutputFile], message: str, logged: bool = False) -> StorageResult:
    if not logged:
        logger.warning(message)
    return StorageResult([file.inline() for file in files], [message])

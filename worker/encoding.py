"""Encoding a job's output pictures (up to 4 samples and the mask) in parallel threads.

PNG (zlib), JPEG (libjpeg) and WebP (libwebp) encoders run in Pillow's C code with the GIL
released, so threads encode several pictures at once: a 4-sample PNG job waits for about one
encoding instead of four (bench/README.md). One pool per process, created on first use and
kept: a job must not pay for starting threads. Results come back in the order given.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from worker.images import encode_image

MAX_THREADS = 5
"""One per picture of the largest job: 4 samples and the mask."""

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            threads = max(1, min(MAX_THREADS, os.cpu_count() or 1))
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="encode")
        return _pool


def encode_images(pictures: Sequence[tuple[Image.Image, str]]) -> list[bytes]:
    """Encode each (image, format) pair, in parallel threads; the bytes in the same order.

    A single picture is encoded on the calling thread (no hand-off to pay for).
    """
    if len(pictures) <= 1:
        return [encode_image(image, output_format) for image, output_format in pictures]
    futures = [_executor().submit(encode_image, image, output_format) for image, output_format in pictures]
    return [future.result() for future in futures]

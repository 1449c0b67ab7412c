"""Encoding the output pictures: the formats a request may ask for, how each is written, and
encoding a job's pictures (up to 4 samples and the mask) in parallel threads.

Kept apart from `worker.images` (which fetches through the runpod SDK) so that code with no
RunPod around it, such as the GPU benchmark, encodes exactly as the worker does.

PNG (zlib), JPEG (libjpeg) and WebP (libwebp) encoders run in Pillow's C code with the GIL
released, so threads encode several pictures at once: a 4-sample job waits for about one
encoding instead of four (bench/README.md). One pool per process, created on first use and
kept: a job must not pay for starting threads. Like the other pools (`worker.threads`), it is
sized from the CPUs the container may use, not the host's cores: on a 128-core host with a
2-CPU quota, five encoder threads would fight over two CPUs.
"""

import io
from collections.abc import Sequence

from PIL import Image

from worker.threads import LazyPool, container_cpus

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
# PNG level 1, measured at 768x1024 (bench/bench_encoding.py, table in bench/README.md): 2.8x
# faster than zlib's default 6 for 13 % more bytes; levels 2-3 gain nothing, 4-9 cost as much as 6.
_ENCODE_OPTIONS = {
    "png": {"format": "PNG", "compress_level": 1},
    "jpeg": {"format": "JPEG", "quality": 92, "subsampling": 0},
    "webp": {"format": "WEBP", "quality": 90, "method": 4},
}
MAX_THREADS = 5
"""One per picture of the largest job: 4 samples and the mask."""

_executor = LazyPool("encode", lambda: min(MAX_THREADS, container_cpus()))


def encode_image(image: Image.Image, output_format: str) -> bytes:
    """Encode an output picture as png, jpeg or webp."""
    buffer = io.BytesIO()
    image.save(buffer, **_ENCODE_OPTIONS[output_format])
    return buffer.getvalue()


def encode_images(pictures: Sequence[tuple[Image.Image, str]]) -> list[bytes]:
    """Encode each (image, format) pair, in parallel threads; the bytes in the same order.

    A single picture is encoded on the calling thread (no hand-off to pay for).
    """
    if len(pictures) <= 1:
        return [encode_image(image, output_format) for image, output_format in pictures]
    futures = [_executor().submit(encode_image, image, output_format) for image, output_format in pictures]
    return [future.result() for future in futures]

"""Encoding the output pictures: the formats a request may ask for and how each is written.

Kept apart from `worker.images` (which fetches through the runpod SDK) so that code with no
RunPod around it, such as the GPU benchmark, encodes exactly as the worker does.
"""

import io

from PIL import Image

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_ENCODE_OPTIONS = {
    "png": {"format": "PNG", "compress_level": 6},
    "jpeg": {"format": "JPEG", "quality": 92, "subsampling": 0},
    "webp": {"format": "WEBP", "quality": 90, "method": 4},
}


def encode_image(image: Image.Image, output_format: str) -> bytes:
    """Encode an output picture as png, jpeg or webp."""
    buffer = io.BytesIO()
    image.save(buffer, **_ENCODE_OPTIONS[output_format])
    return buffer.getvalue()

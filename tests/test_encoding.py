"""Parallel encoding of a job's pictures: the same bytes, in the same order, as one by one."""

import io

import numpy as np
from PIL import Image

from worker.encoding import encode_images
from worker.images import encode_image


def picture(seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (96, 72, 3) if mode == "RGB" else (96, 72)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def test_parallel_encoding_gives_the_sequential_bytes_in_order() -> None:
    pictures = [(picture(seed), fmt) for seed, fmt in enumerate(("png", "jpeg", "webp", "png"))]
    pictures.append((picture(9, "L"), "png"))
    encoded = encode_images(pictures)
    assert encoded == [encode_image(image, fmt) for image, fmt in pictures]
    formats = [Image.open(io.BytesIO(data)).format for data in encoded]
    assert formats == ["PNG", "JPEG", "WEBP", "PNG", "PNG"]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encoded[-1]))), np.asarray(pictures[-1][0]))


def test_one_picture_and_none() -> None:
    image = picture(1)
    assert encode_images([(image, "png")]) == [encode_image(image, "png")]
    assert encode_images([]) == []

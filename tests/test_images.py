"""Photos in the modes users really send come out as upright 8-bit RGB (and masks as 8-bit L)."""

import io

import numpy as np
import pytest
from PIL import Image

from preprocess.images import load_mask, load_rgb


def reopen(image: Image.Image, fmt: str, **save_args: object) -> Image.Image:
    """Save and decode again, so the test sees what a fetched file looks like."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    buffer.seek(0)
    return Image.open(buffer)


def test_rgb_passes_through_unchanged() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    out = load_rgb(Image.fromarray(pixels))
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), pixels)


def test_rgba_transparency_is_flattened_on_white() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: kept
    rgba[0, 1] = (0, 0, 0, 0)  # transparent black: white, not black
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black: mid grey
    rgba[1, 1] = (200, 0, 0, 0)
    out = np.asarray(load_rgb(reopen(Image.fromarray(rgba), "PNG")))
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert out[1, 1].tolist() == [255, 255, 255]
    assert all(abs(int(v) - 127) <= 1 for v in out[1, 0])


def test_la_and_palette_transparency() -> None:
    la = Image.fromarray(np.array([[[50, 255], [0, 0]]], np.uint8), "LA")
    assert np.asarray(load_rgb(la)).tolist() == [[[50, 50, 50], [255, 255, 255]]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    decoded = reopen(palette, "PNG", transparency=0)
    assert np.asarray(load_rgb(decoded)).tolist() == [[[255, 255, 255], [255, 0, 0]]]


def test_greyscale_and_bilevel() -> None:
    grey = Image.fromarray(np.array([[0, 77, 255]], np.uint8))
    assert np.asarray(load_rgb(grey)).tolist() == [[[0, 0, 0], [77, 77, 77], [255, 255, 255]]]
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    assert np.asarray(load_rgb(bilevel)).tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # full magenta + yellow = red
    out = load_rgb(reopen(cmyk, "JPEG", quality=100))
    assert out.mode == "RGB"
    r, g, b = np.asarray(out).reshape(-1, 3).mean(axis=0)
    assert r > 245 and g < 10 and b < 10


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_greyscale_is_scaled_not_clipped(fmt: str) -> None:
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    decoded = reopen(Image.fromarray(values), fmt)
    assert decoded.mode.startswith("I")
    assert np.asarray(load_rgb(decoded))[..., 0].tolist() == [[0, 1, 128, 255]]
    assert np.asarray(load_mask(decoded)).tolist() == [[0, 1, 128, 255]]


def test_32_bit_integer_and_float() -> None:
    eight_bit_in_i = Image.fromarray(np.array([[0, 100, 255]], np.int32))
    assert eight_bit_in_i.mode == "I"
    assert np.asarray(load_rgb(eight_bit_in_i))[..., 0].tolist() == [[0, 100, 255]]
    sixteen_bit_in_i = Image.fromarray(np.array([[0, 65535]], np.int32))
    assert np.asarray(load_rgb(sixteen_bit_in_i))[..., 0].tolist() == [[0, 255]]
    unit_float = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert np.asarray(load_rgb(unit_float))[..., 0].tolist() == [[0, 128, 255]]


def test_exif_orientation_is_applied() -> None:
    """A phone stores a portrait photo as landscape pixels plus "rotate 90° clockwise" (tag 6)."""
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high as stored
    stored[:, :10] = (255, 0, 0)  # red on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = reopen(Image.fromarray(stored), "PNG", exif=exif)
    out = load_rgb(decoded)
    assert out.size == (20, 40)  # upright: portrait
    pixels = np.asarray(out)
    assert (pixels[:10, :, 0] == 255).all() and (pixels[-10:, :, 0] == 0).all()  # red on top now


def test_mask_transparency_means_keep() -> None:
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (255, 255, 255, 255)  # painted white: repaint
    rgba[0, 1] = (255, 255, 255, 0)  # unpainted (transparent): keep
    rgba[0, 2] = (0, 0, 0, 255)
    out = load_mask(Image.fromarray(rgba))
    assert out.mode == "L"
    assert np.asarray(out).tolist() == [[255, 0, 0]]

"""Turn any photo Pillow can open into the 8-bit RGB (or mask) image the networks expect.

Users send phone photos (EXIF-rotated JPEGs), PNGs with transparency, CMYK JPEGs from print
workflows, greyscale and 16-bit scans. A bare `image.convert("RGB")` gets several of these
wrong: it ignores EXIF orientation (the person lies on their side), turns transparent pixels into
whatever colour they happen to store (often black), and clips 16-bit values instead of scaling
them. The published code simply opened the file, so every such photo failed or degraded silently.
"""

import numpy as np
from PIL import Image, ImageOps

from core.images import BLACK, WHITE, flatten, has_alpha

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


def load_rgb(image: Image.Image) -> Image.Image:
    """Return `image` as an 8-bit RGB image, upright, with transparency flattened onto white.

    White is the background the published try-on data (and its garment photos) use, so a cut-out
    person on a transparent background looks like the training images.
    """
    image = _upright(image)
    if image.mode == "RGB":
        return image.copy()
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return _to_8bit_grey(image).convert("RGB")
    if has_alpha(image):
        return flatten(image, WHITE)
    # CMYK, YCbCr, LAB, HSV, L, 1, P without transparency, RGBX: Pillow's own conversions.
    return image.convert("RGB")


def load_mask(image: Image.Image) -> Image.Image:
    """Return a caller-supplied mask as an upright 8-bit `L` image (not yet binarised).

    Transparency means "keep": a mask painted on a transparent layer is flattened onto black, the
    opposite of `load_rgb`, so unpainted pixels are never repainted.
    """
    image = _upright(image)
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return _to_8bit_grey(image)
    if has_alpha(image):
        return flatten(image, BLACK).convert("L")
    return image.convert("L")


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (phones store portrait photos sideways plus a tag)."""
    image.load()
    upright = ImageOps.exif_transpose(image)
    return image if upright is None else upright


def _to_8bit_grey(image: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit integer or float greyscale image to 8 bits.

    16-bit modes span 0-65535 and are divided by 257 (so 65535 -> 255 exactly). "I" is ambiguous
    (Pillow also uses it for 8-bit data): values that fit in 0-255 are kept, larger ones are read
    as 16-bit. "F" is read as 0-1 when it fits there (the usual float convention), else as 0-255.
    """
    values = np.asarray(image, dtype=np.float64)
    peak = float(values.max()) if values.size else 0.0
    if image.mode in _SIXTEEN_BIT_MODES or (image.mode == "I" and peak > 255.0):
        values = values / 257.0
    elif image.mode == "F" and peak <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))

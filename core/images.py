"""The one way transparency is flattened, for every picture that enters the models.

The networks take 3 opaque channels. A transparent pixel's stored colour is arbitrary (often
black), so it is composited over a chosen background instead: white for photos (the published
garment and person photos are shot on white), black for a caller's mask (unpainted = keep).
"""

from PIL import Image

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def has_alpha(image: Image.Image) -> bool:
    """Whether `image` carries transparency (an alpha band, or a palette's transparent entry)."""
    return image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)


def flatten(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """`image` composited over an opaque `background`, as RGB (Pillow's integer alpha blend)."""
    if not has_alpha(image):
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (*background, 255)), rgba).convert("RGB")

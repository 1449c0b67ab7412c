"""Garments photographed on a person: find the garment's pixels and cut them out onto white.

Both models were trained on flat garment photos (a garment alone on white, 3:4). A garment worn
by someone in the shop's photo carries a face, arms and a background the garment UNet would try
to copy. The human parser that builds the person's mask also labels the garment photo; the
garment's labels for the category are kept, everything else becomes white, and the result is
cropped to the garment and padded to the model's 3:4 frame, which is what a flat photo looks like.

Whether a photo shows a person at all is read from the same parse: visible skin and hair (face,
arms, legs, neck) over a small share of the picture. A flat lay has none, or a few stray pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from core.images import WHITE
from core.vocabulary import MODEL_FRAME, PUBLISHED_CATEGORIES
from preprocess import labels as L
from preprocess.errors import NoWornGarmentError

WORN_GARMENT_LABELS: dict[str, tuple[int, ...]] = {
    "upper_body": (L.UPPER_CLOTHES,),
    "lower_body": (L.PANTS, L.SKIRT),
    "dresses": (L.DRESS, L.UPPER_CLOTHES, L.SKIRT),  # parsers often split a dress into top and skirt
}
"""The labels that make up the garment of each category (published names) when it is worn."""

PERSON_LABELS: tuple[int, ...] = (L.HAIR, L.FACE, L.NECK, L.LEFT_ARM, L.RIGHT_ARM, L.LEFT_LEG, L.RIGHT_LEG)
PERSON_MIN_SHARE = 0.02
"""Share of the parse map that must be skin or hair for a garment photo to count as worn."""


def person_in_parse(parse: np.ndarray) -> bool:
    """Whether the parse map shows a person (skin or hair over `PERSON_MIN_SHARE` of it)."""
    parse = np.asarray(parse)
    return bool(parse.size) and float(np.isin(parse, PERSON_LABELS).mean()) >= PERSON_MIN_SHARE


def extract_garment(image: Image.Image, parse: np.ndarray, category: str) -> Image.Image:
    """The pixels of `image` parsed as the `category` garment, on white, cropped to them and
    padded with white to the model frame's 3:4 (centred). `parse` may be of any size (it is
    scaled to the photo, nearest neighbour); `category` is a published name.

    Raises `NoWornGarmentError` when no pixel of the garment is found.
    """
    if category not in PUBLISHED_CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(PUBLISHED_CATEGORIES)}, not {category!r}")
    image = image.convert("RGB")
    labels = Image.fromarray(np.asarray(parse, dtype=np.uint8)).resize(image.size, Image.Resampling.NEAREST)
    garment = np.isin(np.asarray(labels), WORN_GARMENT_LABELS[category])
    if not garment.any():
        names = ", ".join(L.ATR_NAMES[label] for label in WORN_GARMENT_LABELS[category])
        raise NoWornGarmentError(
            f"no {category} garment found on the person in the garment photo (no pixel parsed as {names}); "
            "choose the category of the garment worn, or send a flat photo of the garment"
        )
    pixels = np.where(garment[:, :, None], np.asarray(image), np.array(WHITE, dtype=np.uint8))
    rows, cols = np.flatnonzero(garment.any(axis=1)), np.flatnonzero(garment.any(axis=0))
    cut = pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return _pad_to_frame_aspect(Image.fromarray(cut))


def _pad_to_frame_aspect(image: Image.Image) -> Image.Image:
    """`image` centred on the smallest white canvas with the model frame's aspect ratio."""
    width, height = image.size
    frame_w, frame_h = MODEL_FRAME
    # The smallest canvas of (nearly, to the pixel) 3:4 that holds the image: nothing is scaled.
    canvas_w = max(width, -(-height * frame_w // frame_h))
    canvas_h = max(height, -(-width * frame_h // frame_w))
    canvas = Image.new("RGB", (canvas_w, canvas_h), WHITE)
    canvas.paste(image, ((canvas_w - width) // 2, (canvas_h - height) // 2))
    return canvas

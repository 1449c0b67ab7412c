"""One vocabulary for what the caller, the published code and the models call things.

The API speaks of `upper_body`, `lower_body` and `dress` (and, from the earlier Flask API,
0/1/2 in that order); the published OOTDiffusion code, and so the pipeline and the mask rules,
say `dresses`. VITON-HD (`hd`) was trained on upper-body garments only, Dress Code (`dc`) on
all three. Sizes are written "HxW" (height first, as in `1024x768`, the API's resolution names)
and held as `Size(width, height)` (Pillow's order). Everything here is pure Python: the builder
stage imports it without torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

MODEL_TYPES: tuple[str, ...] = ("hd", "dc")

# The API's names; the position of each is its alias in the earlier API (0, 1, 2).
CATEGORIES: tuple[str, ...] = ("upper_body", "lower_body", "dress")
# API name -> the published code's name (what the pipeline and the mask rules are keyed by).
PUBLISHED_NAMES: dict[str, str] = {"upper_body": "upper_body", "lower_body": "lower_body", "dress": "dresses"}
PUBLISHED_CATEGORIES: tuple[str, ...] = tuple(PUBLISHED_NAMES[name] for name in CATEGORIES)
# Every spelling accepted for a category (case-insensitive) -> its API name.
_SPELLINGS: dict[str, str] = {
    "upper_body": "upper_body", "upperbody": "upper_body", "upper": "upper_body",
    "lower_body": "lower_body", "lowerbody": "lower_body", "lower": "lower_body",
    "dress": "dress", "dresses": "dress",
}  # fmt: skip
# Which categories each model was trained on: the one statement of "HD is upper body only".
MODEL_CATEGORIES: dict[str, tuple[str, ...]] = {"hd": ("upper_body",), "dc": CATEGORIES}
# `category` / `model_type` "auto": the worker decides (the category from the garment photo).
AUTO = "auto"
# "auto" picks the first loaded model type that dresses the category: HD first, because VITON-HD
# was trained on upper-body garments alone (at the same 768x1024), so for them it is the
# specialist; Dress Code's model shares its capacity among three categories.
AUTO_MODEL_TYPE_ORDER: tuple[str, ...] = ("hd", "dc")

# Outfits (`garments`): the order of the passes, one per garment, each dressing the previous
# pass's result. "lower_first" (the default) puts the top on last, so its hem falls over the
# waistband, as most outfits are worn; "upper_first" tucks the top in. A dress goes alone.
OUTFIT_ORDERS: dict[str, tuple[str, ...]] = {
    "lower_first": ("lower_body", "upper_body", "dress"),
    "upper_first": ("upper_body", "lower_body", "dress"),
}


def outfit_passes(categories: Sequence[str], order: str) -> list[int]:
    """The positions of an outfit's garments (their categories, API names) in the order their
    passes run (`OUTFIT_ORDERS[order]`)."""
    rank = OUTFIT_ORDERS[order]
    return sorted(range(len(categories)), key=lambda position: rank.index(categories[position]))


def outfit_problem(categories: Sequence[str]) -> str | None:
    """Why garments of these categories (API names) cannot make one outfit, or None when they can:
    at most one per category, and a dress alone."""
    repeated = sorted({name for name in categories if categories.count(name) > 1})
    if repeated:
        several = " and ".join(f"several {name}" for name in repeated)
        return f"garments: an outfit takes at most one garment per category, not {several}"
    if "dress" in categories and len(categories) > 1:
        return "garments: a dress goes alone (it covers the upper and the lower body), not with others"
    return None


# How the garment was photographed: "flat" (laid flat or on a hanger, on a plain background:
# what both models were trained on), "model" (worn by a person: the garment is cut out first),
# "auto" (decided from whether a person is found in the garment photo).
GARMENT_PHOTO_TYPES: tuple[str, ...] = ("flat", "model", "auto")


class Size(NamedTuple):
    """A picture size, (width, height) like Pillow's; written "HxW" by `size_name`."""

    width: int
    height: int


# What both published models were trained on: 3:4 portraits, 1024 high and 768 wide.
MODEL_FRAME = Size(768, 1024)


def parse_size(text: str) -> Size:
    """"1024x768" (height x width) -> Size(768, 1024); raises ValueError for anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"a size is written HxW (height x width, like 1024x768), not {text!r}")
    return Size(width=int(match.group(2)), height=int(match.group(1)))


def size_name(size: tuple[int, int]) -> str:
    """Size(768, 1024) -> "1024x768" (height x width), the inverse of `parse_size`."""
    width, height = size
    return f"{height}x{width}"


def check_model_type(model_type: str) -> str:
    """Return `model_type` if it is a published one, else raise ValueError naming it."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, not {model_type!r}")
    return model_type


def parse_model_types(text: str) -> tuple[str, ...]:
    """`"hd, DC"` -> `("hd", "dc")` (order kept, repeats dropped); raises ValueError naming an
    unknown type or an empty list."""
    names = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    if not names:
        raise ValueError(f"no model type given; choose from {', '.join(MODEL_TYPES)}")
    return tuple(check_model_type(name) for name in names)


def category_name(value: object) -> str | None:
    """The API name for any accepted spelling (`"dresses"`, `"Upper"`, `2`, `2.0`), or None."""
    if isinstance(value, str):
        return _SPELLINGS.get(value.strip().lower())
    if isinstance(value, float) and value.is_integer():  # JSON may send 1.0 for 1
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return CATEGORIES[value] if 0 <= value < len(CATEGORIES) else None


def auto_model_type(category: str, loaded: Sequence[str] = MODEL_TYPES) -> str | None:
    """The model type "auto" means for `category` (an API name) among the `loaded` ones, or None."""
    fits = [name for name in AUTO_MODEL_TYPE_ORDER if name in loaded and category in MODEL_CATEGORIES[name]]
    return fits[0] if fits else None


def unsupported(model_type: str, category: str) -> str | None:
    """Why `model_type` cannot dress `category` (any accepted spelling), or None when it can."""
    name = category_name(category)
    if name is None or model_type not in MODEL_CATEGORIES or name in MODEL_CATEGORIES[model_type]:
        return None
    others = [other for other, names in MODEL_CATEGORIES.items() if name in names]
    supported = ", ".join(repr(n) for n in MODEL_CATEGORIES[model_type])
    return (
        f"model_type {model_type!r} supports only category {supported}, not {category!r} "
        f"(use model_type {' or '.join(repr(o) for o in others)} for {name})"
    )


def check_published(model_type: str, category: str) -> None:
    """Raise ValueError unless `category` is a published name that `model_type` was trained on.

    The pipeline and the preprocessor speak the published code's names only (their tables are
    keyed by them); the worker translates the API's names with `PUBLISHED_NAMES`."""
    check_model_type(model_type)
    if category not in PUBLISHED_CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(PUBLISHED_CATEGORIES)}, not {category!r}")
    problem = unsupported(model_type, category)
    if problem is not None:
        raise ValueError(problem)

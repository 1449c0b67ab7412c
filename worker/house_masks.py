"""The preprocessing result of a bundled house model photo, kept between jobs.

The worker's main clients render many garments on a few house models (`person_index`, the seed
API's `modelSelection`). For a house photo the mask depends only on the photo, the model type,
the category, the fit and the resolution, never on the garment, so pose detection, both parsing
networks and the mask are computed once per combination and reused: a repeated job's `mask`
stage is a dictionary look-up. The cached `PreprocessResult` is the very object the first job
computed (its pictures are never modified in place), so a hit gives the same bytes.

The key holds the photo's content hash, not its index or file name: replacing a photo in
`MODEL_IMAGES_DIR` (or adding one that shifts the sorted order) can never serve a stale mask.

Size of an entry at 1024x768: the person picture (RGB, 2.36 MB), the mask (L, 0.79 MB) and the
384x512 parse map (0.2 MB), about 3.3 MB; four per photo for `hd,dc` (HD upper body, DC's three
categories) at the default fit and resolution.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from ootd.lru import ByteBoundedLru

if TYPE_CHECKING:
    from preprocess.preprocessor import PreprocessResult

DEFAULT_HOUSE_MASK_CACHE_MB = 256
"""Host memory: ~75 entries at 1024x768, every combination of ~19 house photos with `hd,dc`."""

HouseMaskKey = tuple[str, str, str, str, str]


def photo_digest(data: bytes) -> str:
    """The content hash that identifies a house photo in the key."""
    return hashlib.sha256(data).hexdigest()


def house_mask_key(digest: str, model_type: str, category: str, fit: str, resolution: str) -> HouseMaskKey:
    return (digest, model_type, category, fit, resolution)


def result_nbytes(result: PreprocessResult) -> int:
    """Bytes a cached result holds (the pictures' pixels and the arrays)."""
    images = (result.mask, result.person)
    pictures = sum(len(image.getbands()) * image.width * image.height for image in images)
    arrays = sum(array.nbytes for array in (result.keypoints, result.parse) if array is not None)
    return pictures + arrays


class HouseMaskCache(ByteBoundedLru["PreprocessResult"]):
    """Least recently used house-model preprocessing results within `max_bytes` (0 disables)."""

    def __init__(self, max_bytes: int = DEFAULT_HOUSE_MASK_CACHE_MB * 1_000_000) -> None:
        super().__init__(max_bytes, size_of=result_nbytes)

"""Preprocessing of the person photo: pose keypoints, human parsing and the try-on mask.

Importing the package is cheap: the errors load eagerly (the worker maps them to user errors),
everything that pulls in OpenCV, onnxruntime or torch loads on first attribute access.
"""

from typing import TYPE_CHECKING

from core.lazy import lazy_names
from preprocess.errors import NoGarmentRegionError, NoPersonDetectedError, NoWornGarmentError, PreprocessError

if TYPE_CHECKING:
    from preprocess.images import load_rgb
    from preprocess.mask import agnostic_mask
    from preprocess.preprocessor import Preprocessor, PreprocessResult

__all__ = [
    "NoGarmentRegionError",
    "NoPersonDetectedError",
    "NoWornGarmentError",
    "PreprocessError",
    "PreprocessResult",
    "Preprocessor",
    "agnostic_mask",
    "load_rgb",
]

_LAZY = {
    "Preprocessor": "preprocess.preprocessor",
    "PreprocessResult": "preprocess.preprocessor",
    "agnostic_mask": "preprocess.mask",
    "load_rgb": "preprocess.images",
}


__getattr__ = lazy_names(__name__, _LAZY)

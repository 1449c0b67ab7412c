"""Preprocessing of the person photo: pose keypoints, human parsing and the try-on mask.

Importing the package is cheap: the errors load eagerly (the worker maps them to user errors),
everything that pulls in OpenCV, onnxruntime or torch loads on first attribute access.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    """Import the heavy parts only when they are first used."""
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'preprocess' has no attribute {name!r}")

"""Packages whose public names load on first use (PEP 562), so that importing them is cheap.

`ootd` and `preprocess` export classes that need torch, diffusers, OpenCV or onnxruntime; a caller
that needs only a light part of the package (a layout, a cache bound, an error type) must not pay
for those at import.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_names(package: str, modules: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: name -> the module it is imported from on first
    access (then kept as a plain attribute of the package)."""

    def __getattr__(name: str) -> Any:
        if name in modules:
            value = getattr(import_module(modules[name]), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__

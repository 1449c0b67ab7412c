"""OOTDiffusion virtual try-on on stock diffusers: the pipeline (`ootd.pipeline`) and its loader
(`ootd.loading`).

Importing the package is cheap: the names below load torch and diffusers on first access, so
that what needs only the package's pure-Python parts (`ootd.layout` for the builder, the cache
bounds for the worker's settings) starts without them. This package must stay free of the
worker's transport concerns (runpod, boto3, requests) and of the preprocessing package.
"""

from typing import TYPE_CHECKING

from core.lazy import lazy_names

if TYPE_CHECKING:
    from ootd.loading import load_pipelines
    from ootd.pipeline import CATEGORIES, OOTDiffusionPipeline

__all__ = ["CATEGORIES", "OOTDiffusionPipeline", "load_pipelines"]

_LAZY = {
    "CATEGORIES": "ootd.pipeline",
    "OOTDiffusionPipeline": "ootd.pipeline",
    "load_pipelines": "ootd.loading",
}


__getattr__ = lazy_names(__name__, _LAZY)

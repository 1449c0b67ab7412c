"""OOTDiffusion virtual try-on on stock diffusers: the pipeline and its loader.

Import cost matters for the worker's cold start, but everything here needs torch and diffusers
anyway, so the public names are imported eagerly. This package must stay free of the worker's
transport concerns (runpod, boto3, requests) and of the preprocessing package.
"""

from ootd.pipeline import CATEGORIES, OOTDiffusionPipeline, load_pipelines

__all__ = ["CATEGORIES", "OOTDiffusionPipeline", "load_pipelines"]

"""One short run of every GPU stage before the worker takes its first job.

The first call of each network pays for work that later calls reuse: cuDNN picks its convolution
kernels, onnxruntime's CUDA provider plans its graph and grows its memory arena, torch's caching
allocator fills up. Without a warm-up the first RunPod job pays all of it (seconds on top of the
job). `warm_up` runs pose and parsing on a synthetic person picture and a 2-step diffusion at the
smallest published resolution, decode included, for every loaded model type.

This module must not import runpod, boto3 or requests: the GPU benchmark (`bench/gpu.py`) imports
it on a machine that has only torch, diffusers, transformers, onnxruntime and OpenCV.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from PIL import Image, ImageDraw

from core.generation import DEFAULT_GUIDANCE, smallest_resolution
from core.vocabulary import CATEGORIES, MODEL_CATEGORIES, PUBLISHED_NAMES
from preprocess.errors import PreprocessError
from preprocess.parsing import PARSE_SIZE

if TYPE_CHECKING:
    from ootd.pipeline import OOTDiffusionPipeline
    from preprocess.preprocessor import Preprocessor


WARMUP_STEPS = 2
"""Denoising steps of the warm-up run: 2 is the fewest that runs the full UniPC update (1 step
only returns the initial noise, see `OOTDiffusionPipeline.__call__`)."""
WARMUP_SEED = 0
WARMUP_CATEGORY = next(
    PUBLISHED_NAMES[name] for name in CATEGORIES if all(name in names for names in MODEL_CATEGORIES.values())
)
"""The one category both model types accept (published name: the pipeline's argument)."""


def warm_up(pipelines: Mapping[str, OOTDiffusionPipeline], preprocessor: Preprocessor | None) -> float:
    """Run pose, parsing and a short try-on per model type once; returns the seconds it took.

    The pictures are synthetic: the warm-up must not depend on any file beside the weights, and
    what the networks see does not matter, only that every kernel runs once at the shapes a
    job uses (pose and parsing always run at 384x512, whatever the output size). A pose network
    that finds nobody in the synthetic picture has still run, so that refusal is ignored.
    """
    start = time.perf_counter()
    person = synthetic_person(PARSE_SIZE)
    if preprocessor is not None and preprocessor.pose is not None:
        with contextlib.suppress(PreprocessError):
            preprocessor.pose(person)
    if preprocessor is not None and preprocessor.parser is not None:
        preprocessor.parser(person)
    width, height = smallest_resolution()
    person = synthetic_person((width, height))
    garment = synthetic_garment((width, height))
    mask = synthetic_mask((width, height))
    for pipeline in pipelines.values():
        # Without the garment cache: the garment networks must run here, whatever an earlier
        # warm-up left, and a synthetic garment must not take a real one's place in it.
        cache, pipeline.garment_cache = getattr(pipeline, "garment_cache", None), None
        try:
            _run(pipeline, person, garment, mask, width, height)
        finally:
            pipeline.garment_cache = cache
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _run(
    pipeline: OOTDiffusionPipeline, person: Image.Image, garment: Image.Image, mask: Image.Image,
    width: int, height: int,
) -> None:  # fmt: skip
    """One short try-on with decode, as a job at the smallest published resolution runs it."""
    pipeline(
        person,
        garment,
        mask,
        category=WARMUP_CATEGORY,
        num_inference_steps=WARMUP_STEPS,
        image_guidance_scale=DEFAULT_GUIDANCE,
        num_images_per_prompt=1,
        generator=WARMUP_SEED,
        height=height,
        width=width,
        output_type="pil",
    )


def synthetic_person(size: tuple[int, int]) -> Image.Image:
    """A light figure (head, torso, arms, legs) on a grey studio background, at `size` (W, H)."""
    width, height = size
    image = Image.new("RGB", size, (200, 200, 200))
    draw = ImageDraw.Draw(image)
    cx = width / 2
    draw.ellipse((cx - 0.08 * width, 0.05 * height, cx + 0.08 * width, 0.17 * height), fill=(224, 172, 140))
    draw.rectangle((cx - 0.2 * width, 0.2 * height, cx + 0.2 * width, 0.55 * height), fill=(40, 70, 160))
    draw.rectangle((cx - 0.3 * width, 0.2 * height, cx - 0.22 * width, 0.5 * height), fill=(224, 172, 140))
    draw.rectangle((cx + 0.22 * width, 0.2 * height, cx + 0.3 * width, 0.5 * height), fill=(224, 172, 140))
    draw.rectangle((cx - 0.18 * width, 0.55 * height, cx + 0.18 * width, 0.95 * height), fill=(30, 30, 40))
    return image


def synthetic_garment(size: tuple[int, int]) -> Image.Image:
    """A red T-shirt shape on white, as garment photos are shot."""
    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    ImageDraw.Draw(image).polygon(
        [(0.3 * width, 0.15 * height), (0.7 * width, 0.15 * height), (0.9 * width, 0.35 * height),
         (0.75 * width, 0.4 * height), (0.75 * width, 0.85 * height), (0.25 * width, 0.85 * height),
         (0.25 * width, 0.4 * height), (0.1 * width, 0.35 * height)],
        fill=(200, 30, 40),
    )  # fmt: skip
    return image


def synthetic_mask(size: tuple[int, int]) -> Image.Image:
    """An "L" mask over the torso (255 = repaint), where an upper-body mask would be."""
    width, height = size
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((0.2 * width, 0.18 * height, 0.8 * width, 0.6 * height), fill=255)
    return mask

"""What a try-on may ask the diffusion for: output sizes, samples, steps and guidance, with defaults.

One place for these facts: the request schema validates against them, the warm-up and the job
use the defaults, the pipeline bounds its sample count by them, and `ootd.compile` counts the
shapes they allow (one compiled graph each). Pure Python (see `core`): no torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from core.vocabulary import Size, parse_size

RESOLUTIONS: dict[str, Size] = {name: parse_size(name) for name in ("1024x768", "768x576", "512x384")}
"""The published output sizes by their "HxW" names: the models' 3:4 frame and two smaller ones."""
DEFAULT_RESOLUTION = "1024x768"

STEPS_RANGE = (1, 50)
DEFAULT_STEPS = 20
SAMPLES_RANGE = (1, 4)
DEFAULT_SAMPLES = 1
MAX_BATCH_ROWS = SAMPLES_RANGE[1]
"""Images per try-on UNet batch (before the guidance halves): a job's `samples`, or a catalog's
people x samples. The same bound keeps every batch among the shapes `diffusion_shapes` counts."""
MAX_PEOPLE = 8
"""People a catalog job dresses (`person` / `person_index` given as a list)."""
MAX_GARMENTS = 3
"""Garments an outfit job puts on one person (`garments`), one pass each."""
GUIDANCE_RANGE = (1.0, 5.0)
DEFAULT_GUIDANCE = 2.0
GUIDANCE_OFF = 1.0
"""At this scale and below the guided prediction equals the conditional one, so the zero-garment
half is not run: guidance on or off changes the try-on UNet's batch (2N or N rows)."""


def is_guided(scale: float) -> bool:
    """Whether `scale` runs the zero-garment half of the batch (see `GUIDANCE_OFF`)."""
    return scale > GUIDANCE_OFF


def people_per_batch(samples: int) -> int:
    """How many people go through the try-on UNet together when each gets `samples` images."""
    return max(1, MAX_BATCH_ROWS // samples)


def smallest_resolution() -> Size:
    """The smallest published output size (512x384 today): what the warm-up runs."""
    return min(RESOLUTIONS.values(), key=lambda size: size.width * size.height)


class DiffusionShape(NamedTuple):
    """What fixes the try-on UNet's input shapes: output size, samples and guidance on/off."""

    size: Size
    samples: int
    guided: bool


def diffusion_shapes(extra_resolutions: Iterable[str] = ()) -> list[DiffusionShape]:
    """Every shape a request can give the try-on UNet: the published resolutions (and the
    operator's `extra_resolutions`, "HxW") x each sample count x guidance on/off where
    `GUIDANCE_RANGE` allows it."""
    names = dict.fromkeys([*RESOLUTIONS, *extra_resolutions])
    low, high = GUIDANCE_RANGE
    modes = [guided for guided in (False, True) if (is_guided(high) if guided else not is_guided(low))]
    return [
        DiffusionShape(parse_size(name), samples, guided)
        for name in names
        for samples in range(SAMPLES_RANGE[0], SAMPLES_RANGE[1] + 1)
        for guided in modes
    ]

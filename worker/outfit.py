"""An outfit: several garments (`garments`, 1 to `MAX_GARMENTS`) put on one person in one job.

The person is dressed in passes, one per garment, each starting from the previous pass's result:
by default the lower-body garment first, then the upper-body one, so that the top's hem falls
over the waistband as most outfits are worn (`order: "upper_first"` tucks it in; a dress goes
alone, see `core.vocabulary.OUTFIT_ORDERS`). Each pass is a single job's diffusion on its own
input: its own mask from its own picture (the new trousers are in the picture the top's pass
parses), the model its category needs, the garment cache. What the passes share is fetched and
decided once: the person photo, the seed, the garments' categories ("auto" ones are classified
before any pass, so the order and the combination are known up front).

Each pass starts from the previous pass's images exactly as a caller would get them (at the
output size, composited over the photo as `composite` asks), framed again as a person photo is:
the outfit is the chain of single jobs, each on the last one's result. Outside every pass's mask
the photo's own pixels stay (with `composite`), and each pass's mask is returned at the output
size (`return_mask`).

Noise: every pass draws the seed's noise; sample k of every pass takes row k of it. With
`samples` > 1 each sample carries its own chain (sample k of the second pass starts from sample
k of the first and is masked on its own), and the chains go through the UNet together. So a
one-garment outfit gives exactly the single job's bytes, and with one sample a two-garment
outfit gives exactly what two single jobs give when the second one dresses the first one's
image (PNG) with the same seed. With several samples the later passes run the chains in one
batch, which on the CPU rounds a little differently from a batch of one (see `worker.catalog`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from core.framing import PadBox
from core.vocabulary import AUTO, outfit_passes, outfit_problem
from worker.errors import InputError
from worker.job import (
    GpuStages,
    JobContext,
    Person,
    check_size,
    classify_garment,
    cut_out_garment,
    diffuse,
    encode_and_store,
    garment_facts,
    garment_stages,
    load_pictures,
    on_gpu,
    output_images,
    pad_to_frame,
    prepare_people,
    timed,
)
from worker.schema import TryOnRequest

if TYPE_CHECKING:
    import torch

    from ootd.classify import CategoryGuess
    from preprocess.preprocessor import GarmentResult

log = logging.getLogger(__name__)


@dataclass
class Pass:
    """One garment's pass: its request (as a single job's: category and model type decided),
    the garment picture, and what the pass produced."""

    request: TryOnRequest
    garment: Image.Image
    guess: CategoryGuess | None = None
    embeds: torch.Tensor | None = None
    worn: GarmentResult | None = None
    masks: list[Image.Image] | None = None
    timings: dict[str, float] | None = None


def run(context: JobContext, request: TryOnRequest, photos: list[Path]) -> dict:
    """The outfit job from its fetch to its result (validation is the caller's)."""
    settings, timings = context.settings, context.timings
    log.info("job %s: outfit of %d garments, %s", context.job_id, len(request.garments), _summary(request))
    with timed(timings, "fetch"):
        refs = [item.garment for item in request.garments]
        photo, garments, _, house_digest = load_pictures(request, refs, photos, settings)

    passes = [
        Pass(replace(request, garment=item.garment, category=item.category, model_type=item.model_type,
                     garment_photo_type=item.garment_photo_type), garment)
        for item, garment in zip(request.garments, garments, strict=True)
    ]  # fmt: skip
    images = on_gpu(
        request, timings, lambda stages: _dress(context, request, passes, photo, house_digest, stages)
    )

    extras = []  # (group, index, picture): each pass's masks, and a cut-out garment
    if request.return_mask:
        for number, done in enumerate(passes, start=1):
            extras += [(f"pass{number}-mask", k, mask) for k, mask in enumerate(done.masks)]
            if (cut_out := cut_out_garment(done.worn)) is not None:
                extras.append((f"pass{number}-garment", 0, cut_out))
    entries, named, warnings = encode_and_store(
        context.job_id, request, images, extras, context.s3_config, timings
    )

    timings["total"] = time.perf_counter() - context.started
    result: dict[str, Any] = {
        "images": entries,
        "seed": request.seed,
        "order": request.order,
        "passes": [_pass_entry(done, named, number) for number, done in enumerate(passes, 1)],
        "timings": {name: round(seconds, 3) for name, seconds in timings.items()},
    }
    if warnings:
        result["warnings"] = warnings
    check_size(result, settings, warnings)
    log.info("job %s done in %.2f s: %s", context.job_id, timings["total"], result["timings"])
    return result


def _dress(
    context: JobContext,
    request: TryOnRequest,
    passes: list[Pass],
    photo: Image.Image,
    house_digest: str | None,
    stages: GpuStages,
) -> list[Image.Image]:
    """Decide the garments, order the passes, run them; returns the finished images (one per
    sample). Each pass is a single job's work on the previous pass's images (at the output size,
    composited as the request asks), framed again as a person photo is."""
    runtime, settings = context.runtime, context.settings
    for one in passes:
        one.timings = {}
        if one.request.category == AUTO:
            with stages.part(one.timings)("classify"):
                one.request, one.guess, one.embeds = classify_garment(runtime, one.request, one.garment)
    problem = outfit_problem([one.request.category for one in passes])
    if problem:
        raise InputError(f"{problem} (categories found: {', '.join(one.request.category for one in passes)})")
    passes[:] = [passes[k] for k in outfit_passes([one.request.category for one in passes], request.order)]

    samples, (width, height) = request.samples, request.size
    pipeline = runtime.pipelines[passes[0].request.model_type]
    noise = pipeline.initial_noise(1, samples, height, width, request.seed)  # sample k: row k, every pass
    pictures = [photo]  # what each chain has become: one before the first pass, one per sample after it
    for number, one in enumerate(passes, start=1):
        pass_stages = stages.part(one.timings)
        decided, garment, one.worn, _, _ = garment_stages(runtime, one.request, one.garment, pass_stages)
        one.request = decided
        framed = [_framed(picture, request.fit) for picture in pictures]
        digest = house_digest if number == 1 else None  # the house photo's cached mask
        people = [Person(person, None, digest) for person, _, _ in framed]
        try:
            prepared = prepare_people(runtime, decided, people, pass_stages)
        except InputError as error:
            if number == 1:
                raise
            raise InputError(
                f"garments: pass {number} ({decided.category}), on the result of pass {number - 1}: {error}"
            ) from None
        with pass_stages("diffusion"):
            frames = diffuse(
                runtime, decided, [result.person for result in prepared], garment,
                [result.mask for result in prepared], context.progress, settings.progress_every, one.embeds,
                samples=samples if len(pictures) == 1 else 1, latents=noise,
                context={"pass": number, "passes": len(passes)},
            )  # fmt: skip
        with pass_stages("composite"):
            spread = samples // len(pictures)  # the first pass's one picture serves every sample
            chains = zip(pictures * spread, framed * spread, prepared * spread, frames, strict=True)
            outputs = [
                output_images(request, picture, [frame], result.mask, pad, settings)
                for picture, (_, _, pad), result, frame in chains
            ]
        pictures = [images[0] for images, _ in outputs]
        one.masks = [mask for _, mask in outputs[: len(prepared)]]
    return pictures


def _framed(picture: Image.Image, fit: str) -> tuple[Image.Image, None, PadBox | None]:
    """A picture as a single job frames its person photo (see `worker.job.pad_to_frame`)."""
    return pad_to_frame(picture, None) if fit == "pad" else (picture, None, None)


def _pass_entry(done: Pass, named: dict[tuple[str, int], dict], number: int) -> dict:
    """What the result says about one pass: its garment's category and model, its timings and,
    with `return_mask`, its masks (one per sample after the first pass) and cut-out garment."""
    entry: dict[str, Any] = {
        "category": done.request.category,
        "model_type": done.request.model_type,
        "timings": {name: round(seconds, 3) for name, seconds in (done.timings or {}).items()},
    }
    entry.update(garment_facts(done.guess, done.worn))
    masks = [stored for (group, _), stored in named.items() if group == f"pass{number}-mask"]
    if masks:
        entry["masks"] = masks
    if (f"pass{number}-garment", 0) in named:
        entry["garment"] = named[(f"pass{number}-garment", 0)]
    return entry


def _summary(request: TryOnRequest) -> str:
    """A log line about the outfit that holds no URL path, query or image data."""
    person = request.person.describe() if request.person else f"house model {request.person_index}"
    garments = ", ".join(f"{item.category} ({item.garment.describe()})" for item in request.garments)
    return (
        f"{request.resolution} fit={request.fit} steps={request.steps} samples={request.samples} "
        f"seed={request.seed}, order {request.order}; person {person}; garments {garments}"
    )

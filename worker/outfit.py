"""An outfit: several garments (`garments`, 1 to `MAX_GARMENTS`) put on one person in one job.

The person is dressed in passes, one per garment, each starting from the previous pass's result:
by default the lower-body garment first, then the upper-body one, so that the top's hem falls
over the waistband as most outfits are worn (`order: "upper_first"` tucks it in; a dress goes
alone, see `core.vocabulary.OUTFIT_ORDERS`). Each pass is a single job's diffusion on its own
input: its own mask from its own picture (the new trousers are in the picture the top's pass
parses), the model its category needs, the garment cache. What the passes share is fetched and
decided once: the person photo, the seed, the garments' categories ("auto" ones are classified
before any pass, so the order and the combination are known up front).

Between passes, the next pass's input is the pass's result laid over its input in the model's
frame (`worker.composite`, with the job's `composite` setting): outside the mask the picture
stays what it was, so the face goes through the VAE once per pass only where it always does, in
the diffusion. After the last pass the result is laid over the photo like a single job's, with
the union of the passes' masks as the area that changed.

Noise: every pass draws the seed's noise; sample k of every pass takes row k of it. With
`samples` > 1 each sample carries its own chain (sample k of the second pass starts from sample
k of the first, and is masked on its own), and the chains go through the UNet together. So a
one-garment outfit gives exactly the single job's bytes, and with one sample a two-garment
outfit gives exactly what two chained single jobs on frames would.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageChops

from core.framing import PadBox
from core.vocabulary import AUTO, OUTFIT_ORDERS, category_name, outfit_problem
from worker.composite import composite, output_mask
from worker.encoding import encode_images
from worker.errors import InputError
from worker.job import (
    GpuStages,
    JobContext,
    Person,
    check_size,
    classify_garment,
    diffuse,
    garment_stages,
    load_pictures,
    on_gpu,
    output_images,
    pad_to_frame,
    prepare_people,
    store,
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
        person, garments, _, house_digest = load_pictures(request, refs, photos, settings)

    photo = person
    pad: PadBox | None = None
    if request.fit == "pad":
        person, _, pad = pad_to_frame(person, None)

    passes = [
        Pass(replace(request, garment=item.garment, category=item.category, model_type=item.model_type,
                     garment_photo_type=item.garment_photo_type), garment)
        for item, garment in zip(request.garments, garments, strict=True)
    ]  # fmt: skip
    first = Person(person, None, house_digest)
    frames, changed = on_gpu(request, timings, lambda stages: _dress(context, request, passes, first, stages))

    with timed(timings, "composite"):
        images = []
        for frame, mask in zip(frames, changed, strict=True):
            (image,), _ = output_images(request, photo, [frame], mask, pad, settings)
            images.append(image)
        size = images[0].size
        extras = []  # (group, index, picture): each pass's masks, and a cut-out garment
        if request.return_mask:
            for number, done in enumerate(passes, start=1):
                masks = [output_mask(mask, pad, size) for mask in done.masks]
                extras += [(f"pass{number}-mask", k, mask) for k, mask in enumerate(masks)]
                if done.worn is not None and done.worn.photo_type == "model":
                    extras.append((f"pass{number}-garment", 0, done.worn.image))

    with timed(timings, "encode"):
        pictures = [(image, request.output_format) for image in images]
        encoded = encode_images([*pictures, *((picture, "png") for _, _, picture in extras)])

    with timed(timings, "store"):
        groups = [(group, index) for group, index, _ in extras]
        entries, extra_entries, warnings = store(
            context.job_id, request, encoded[: len(images)], groups, encoded[len(images) :], context.s3_config
        )

    timings["total"] = time.perf_counter() - context.started
    result: dict[str, Any] = {
        "images": entries,
        "seed": request.seed,
        "order": request.order,
        "passes": [_pass_entry(done, groups, extra_entries, number) for number, done in enumerate(passes, 1)],
        "timings": {name: round(seconds, 3) for name, seconds in timings.items()},
    }
    if warnings:
        result["warnings"] = warnings
    check_size(result, settings, warnings)
    log.info("job %s done in %.2f s: %s", context.job_id, timings["total"], result["timings"])
    return result


def _dress(
    context: JobContext, request: TryOnRequest, passes: list[Pass], person: Person, stages: GpuStages
) -> tuple[list[Image.Image], list[Image.Image]]:
    """Decide the garments, order the passes, run them; returns the last pass's frames (one per
    sample) and, per sample, the union of its passes' masks (what changed)."""
    runtime = context.runtime
    for one in passes:
        one.timings = {}
        if one.request.category == AUTO:
            with stages.part(one.timings)("classify"):
                one.request, one.guess, one.embeds = classify_garment(runtime, one.request, one.garment)
    problem = outfit_problem([one.request.category for one in passes])
    if problem:
        raise InputError(f"{problem} (categories found: {', '.join(one.request.category for one in passes)})")
    rank = OUTFIT_ORDERS[request.order]
    passes.sort(key=lambda one: rank.index(one.request.category))

    samples, (width, height) = request.samples, request.size
    pipeline = runtime.pipelines[passes[0].request.model_type]
    noise = pipeline.initial_noise(1, samples, height, width, request.seed)  # sample k: row k, every pass
    inputs = [person]  # one picture before the first pass, one per sample after it
    frames: list[Image.Image] = []
    changed: list[Image.Image] = []
    for number, one in enumerate(passes, start=1):
        pass_stages = stages.part(one.timings)
        decided, garment, one.worn, _, _ = garment_stages(runtime, one.request, one.garment, pass_stages)
        one.request = decided
        prepared = prepare_people(runtime, decided, inputs, pass_stages)
        one.masks = [result.mask for result in prepared]
        with pass_stages("diffusion"):
            pictures = [result.person for result in prepared]
            frames = diffuse(
                runtime, decided, pictures, garment, one.masks, context.progress,
                context.settings.progress_every, one.embeds, samples=samples if len(inputs) == 1 else 1,
                latents=noise, context={"pass": number, "passes": len(passes)},
            )  # fmt: skip
        masks = one.masks * samples if len(one.masks) == 1 else one.masks
        if changed:
            changed = [ImageChops.lighter(before, mask) for before, mask in zip(changed, masks, strict=True)]
        else:
            changed = list(masks)
        if number < len(passes):
            inputs = [
                Person(_laid_over(source.image, frame, mask, request.composite))
                for source, frame, mask in zip(inputs * (samples // len(inputs)), frames, masks, strict=True)
            ]
    return frames, changed


def _laid_over(picture: Image.Image, frame: Image.Image, mask: Image.Image, keep: bool) -> Image.Image:
    """The next pass's input: the pass's `frame` over its input `picture` (in the model's frame),
    the picture kept outside the mask when the job composites."""
    (laid,), _ = composite(picture, [frame], mask, None, picture.size, keep_photo=keep)
    return laid


def _pass_entry(done: Pass, groups: list[tuple[str, int]], entries: list[dict], number: int) -> dict:
    """What the result says about one pass: its garment's category and model, its timings and,
    with `return_mask`, its masks (one per sample after the first pass) and cut-out garment."""
    entry: dict[str, Any] = {
        "category": done.request.category,
        "model_type": done.request.model_type,
        "timings": {name: round(seconds, 3) for name, seconds in (done.timings or {}).items()},
    }
    if done.guess is not None:
        entry["category_scores"] = {category_name(name): score for name, score in done.guess.scores.items()}
    if done.worn is not None:
        entry["garment_photo_type"] = done.worn.photo_type
    mine = [entries[i] for i, (group, _) in enumerate(groups) if group == f"pass{number}-mask"]
    if mine:
        entry["masks"] = mine
    garment = [entries[i] for i, (group, _) in enumerate(groups) if group == f"pass{number}-garment"]
    if garment:
        entry["garment"] = garment[0]
    return entry


def _summary(request: TryOnRequest) -> str:
    """A log line about the outfit that holds no URL path, query or image data."""
    person = request.person.describe() if request.person else f"house model {request.person_index}"
    garments = ", ".join(f"{item.category} ({item.garment.describe()})" for item in request.garments)
    return (
        f"{request.resolution} fit={request.fit} steps={request.steps} samples={request.samples} "
        f"seed={request.seed}, order {request.order}; person {person}; garments {garments}"
    )

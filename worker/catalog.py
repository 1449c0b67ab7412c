"""A catalog: one garment on several people (`person_index` or `person` as a list, up to
`MAX_PEOPLE`) in one job.

What a shop does when a new garment comes in: show it on each of its house models. As one job,
the garment is fetched, decided ("auto"), cut out (a worn photo) and conditioned once (one CLIP
pass, one garment-UNet pass: the pipeline takes the people as a list), and the people go through
the try-on UNet together, `people_per_batch(samples)` at a time (`MAX_BATCH_ROWS` images per
batch, the bound on today's `samples`), instead of one job after another.

Each person is an entry of `results`, in request order. A person whose photo cannot be used
(download, decoding, no person found in it) fails that entry with its own error and the others
are served; the job fails only when no one could be dressed (or for what concerns them all: the
garment, the GPU). All photos are fetched under the job's one download deadline and all outputs
stored with one upload decision.

Same seed, same person, same garment: the person gets the noise of the single-person job (the
pipeline seeds each person's rows on their own), and their pictures are encoded by the VAE one at
a time as in that job. The try-on UNet then runs on a batch of several people; on the CPU a
batch's rows come out exactly as they would in any batch of the same size, but not bit for bit
as in a batch of one (matrix kernels block differently: about 4e-6 on the mid tree's UNet). So a
person's images equal the single-person job's byte for byte when their batch holds them alone
(a catalog of one, or `samples` 3 or 4), and otherwise differ from them by that rounding.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from PIL import Image

from core.framing import PadBox
from preprocess.images import load_rgb
from worker.errors import InputError, JobError, join_capped
from worker.house_masks import photo_digest
from worker.images import check_aspect, read_images
from worker.job import (
    MAX_PAD_RATIO,
    JobContext,
    Person,
    check_size,
    converted,
    cut_out_garment,
    diffuse,
    encode_and_store,
    garment_facts,
    garment_stages,
    house_photo,
    on_gpu,
    output_images,
    pad_to_frame,
    prepare_people,
    timed,
)
from worker.schema import ImageRef, TryOnRequest

log = logging.getLogger(__name__)


class _Sitter:
    """One person of the catalog: where they came from, their photo as it came and in the
    model's frame, and what happened to them."""

    def __init__(self, position: int, entry: ImageRef | int) -> None:
        self.position = position
        self.entry = entry
        self.photo: Image.Image | None = None
        self.person: Person | None = None
        self.pad: PadBox | None = None
        self.error: InputError | None = None
        self.frames: list[Image.Image] = []
        self.mask: Image.Image | None = None

    @property
    def label(self) -> dict[str, int]:
        """How the result names the person: the house model's index, or the photo's position."""
        return {"person": self.position} if isinstance(self.entry, ImageRef) else {"person_index": self.entry}


def run(context: JobContext, request: TryOnRequest, photos: list[Path]) -> dict:
    """The catalog job from its fetch to its result (validation is the caller's)."""
    settings, timings = context.settings, context.timings
    log.info("job %s: catalog of %d people, %s", context.job_id, len(request.people), _summary(request))
    sitters = [_Sitter(position, entry) for position, entry in enumerate(request.people)]
    with timed(timings, "fetch"):
        garment = _fetch(request, sitters, photos, context)
    for sitter in sitters:
        if sitter.error is None and request.fit == "pad":
            image, _, sitter.pad = pad_to_frame(sitter.person.image, None)
            sitter.person = Person(image, None, sitter.person.house_digest)

    decided, worn, guess = on_gpu(
        request, timings, lambda stages: _dress(context, request, garment, sitters, stages)
    )
    served = [sitter for sitter in sitters if sitter.error is None]
    if not served:
        problems = [str(sitter.error) for sitter in sitters]  # each names its person
        raise JobError(
            "no person of the catalog could be dressed: " + join_capped(problems, "; ", "problems")
        )

    with timed(timings, "composite"):
        pictures: list[Image.Image] = []
        extras: list[tuple[str, int, Image.Image]] = []
        for sitter in served:
            images, mask = output_images(
                request, sitter.photo, sitter.frames, sitter.mask, sitter.pad, settings
            )
            pictures += images
            if request.return_mask:
                extras.append((f"person{sitter.position}-mask", 0, mask))
        if request.return_mask and (cut_out := cut_out_garment(worn)) is not None:
            extras.append(("garment", 0, cut_out))

    entries, named, warnings = encode_and_store(
        context.job_id, decided, pictures, extras, context.s3_config, timings
    )

    timings["total"] = time.perf_counter() - context.started
    results = []
    for sitter in sitters:
        if sitter.error is not None:
            results.append({**sitter.label, "error": str(sitter.error)})
            continue
        taken, entries = entries[: request.samples], entries[request.samples :]
        one: dict[str, Any] = {**sitter.label, "images": taken, "seed": request.seed}
        if (f"person{sitter.position}-mask", 0) in named:
            one["mask"] = named[(f"person{sitter.position}-mask", 0)]
        results.append(one)
    result: dict[str, Any] = {
        "results": results,
        "succeeded": len(served),
        "seed": request.seed,
        "model_type": decided.model_type,
        "category": decided.category,
        "timings": {name: round(seconds, 3) for name, seconds in timings.items()},
    }
    result.update(garment_facts(guess, worn))
    if ("garment", 0) in named:
        result["garment"] = named[("garment", 0)]
    if warnings:
        result["warnings"] = warnings
    check_size(result, settings, warnings)
    log.info(
        "job %s done in %.2f s, %d of %d people: %s",
        context.job_id, timings["total"], len(served), len(sitters), result["timings"],
    )  # fmt: skip
    return result


def _fetch(
    request: TryOnRequest, sitters: list[_Sitter], photos: list[Path], context: JobContext
) -> Image.Image:
    """The garment (its failure fails the job) and each person's photo (a failure is theirs),
    the URLs among them under one deadline."""
    settings = context.settings
    refs = [request.garment, *(sitter.entry for sitter in sitters if isinstance(sitter.entry, ImageRef))]
    read = iter(read_images(refs, settings, each=True))
    garment = next(read)
    if isinstance(garment, InputError):
        raise garment
    garment = converted(garment, "garment", load_rgb)
    for sitter in sitters:
        try:
            if isinstance(sitter.entry, ImageRef):
                picture = next(read)
                if isinstance(picture, InputError):
                    raise picture
                image, digest = converted(picture, sitter.entry.field, load_rgb), None
            else:
                data = photos[sitter.entry].read_bytes()
                image, digest = house_photo(data, settings, _name(sitter)), photo_digest(data)
            if request.fit == "pad":
                check_aspect(image.size, _name(sitter), MAX_PAD_RATIO)
        except InputError as error:
            sitter.error = error
            continue
        sitter.photo, sitter.person = image, Person(image, None, digest)
    return garment


def _dress(context: JobContext, request: TryOnRequest, garment: Image.Image, sitters: list[_Sitter], stages):
    """The garment's stages once, each person's mask, then one diffusion for everyone left."""
    runtime = context.runtime
    decided, garment, worn, guess, embeds = garment_stages(runtime, request, garment, stages)
    waiting = [sitter for sitter in sitters if sitter.error is None]
    prepared = prepare_people(runtime, decided, [sitter.person for sitter in waiting], stages, each=True)
    for sitter, outcome in zip(waiting, prepared, strict=True):
        if isinstance(outcome, InputError):
            sitter.error = InputError(f"{_name(sitter)}: {str(outcome).removeprefix('person: ')}")
        else:
            sitter.person, sitter.mask = Person(outcome.person), outcome.mask
    ready = [sitter for sitter in waiting if sitter.error is None]
    if ready:
        with stages("diffusion"):
            frames = diffuse(
                runtime, decided, [sitter.person.image for sitter in ready], garment,
                [sitter.mask for sitter in ready], context.progress, context.settings.progress_every, embeds,
            )  # fmt: skip
        for index, sitter in enumerate(ready):
            sitter.frames = frames[index * request.samples : (index + 1) * request.samples]
    return decided, worn, guess


def _name(sitter: _Sitter) -> str:
    """The field naming the person in messages: `person[2]` or `person_index[2]`."""
    return sitter.entry.field if isinstance(sitter.entry, ImageRef) else f"person_index[{sitter.position}]"


def _summary(request: TryOnRequest) -> str:
    """A log line about the catalog that holds no URL path, query or image data."""
    people = [ref.describe() if isinstance(ref, ImageRef) else f"house model {ref}" for ref in request.people]
    return (
        f"{request.model_type}/{request.category} {request.resolution} fit={request.fit} "
        f"steps={request.steps} samples={request.samples} seed={request.seed}; "
        f"garment {request.garment.describe()}; people {', '.join(people)}"
    )

"""One try-on job: validate -> fetch -> mask -> diffusion -> encode -> store -> result.

`handle` is the whole RunPod handler minus model loading. Expected failures (bad input, an
unusable photo, the GPU running out of memory or losing its context in any stage, a result too
large to return) end as RunPod's `{"error": "<one sentence>"}` (with `refresh_worker` after a
GPU failure, see `worker.gpu_errors`), so the caller never sees a traceback and the worker takes
the next job; anything else, a cuDNN status that the input alone causes included, is a bug and
is raised for the SDK to report (with its traceback, on this same worker). Each stage is timed and the times
are returned.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import runpod
import torch
from PIL import Image

from core.framing import PadBox, fit_to_frame
from core.generation import DEFAULT_RESOLUTION, RESOLUTIONS, people_per_batch
from core.images import WHITE
from core.vocabulary import (
    AUTO,
    MODEL_CATEGORIES,
    MODEL_FRAME,
    PUBLISHED_NAMES,
    auto_model_type,
    category_name,
    unsupported,
)
from ootd.errors import NonFiniteOutputError
from preprocess import PreprocessError, PreprocessResult
from preprocess.images import load_mask, load_rgb
from storage import OutputFile, store_outputs
from worker.composite import capped_size, composite, region_size
from worker.config import MB, Settings
from worker.encoding import encode_images
from worker.errors import (
    GpuFailureJobError,
    InputError,
    JobError,
    OutOfMemoryJobError,
    ResultTooLargeError,
    bounded,
)
from worker.gpu_errors import ORT_ERRORS, GpuFailure, classify_gpu_failure, failure_detail, free_gpu_memory
from worker.house_masks import house_mask_key, photo_digest
from worker.images import CONTENT_TYPES, EXTENSIONS, check_aspect, decode_image, read_images
from worker.runtime import Runtime, house_model_photos
from worker.schema import FIELDS, ImageRef, TryOnRequest, parse_request

if TYPE_CHECKING:
    from ootd.classify import CategoryGuess
    from preprocess.preprocessor import GarmentResult

log = logging.getLogger(__name__)

# fit "pad" refuses photos more than this many times as wide as tall (or tall as wide): the
# photo would be a thin strip in the frame (8:1 leaves 768x96), and nothing a try-on can use.
MAX_PAD_RATIO = 8.0

ProgressSink = Callable[[dict], None]


@dataclass
class JobContext:
    """What every form of job (single, outfit, catalog) runs with, past validation."""

    job_id: str
    job: Mapping[str, Any]
    runtime: Runtime
    settings: Settings
    progress: ProgressSink
    timings: dict[str, float]
    started: float

    @property
    def s3_config(self) -> object:
        return self.job.get("s3Config") or None

# What a GPU failure's sentence calls each stage's GPU work (the mask stage: see `_gpu_part`).
GPU_PARTS = {"classify": "category detection", "garment": "garment parsing", "diffusion": "diffusion"}


def handle(
    job: Mapping[str, Any], runtime: Runtime, settings: Settings, progress: ProgressSink | None = None
) -> dict:
    """Run one RunPod job and return its result dict, or `{"error": ...}` for an expected failure."""
    job_id = str(job.get("id") or "job")
    try:
        return run(job, runtime, settings, progress or runpod_progress(job))
    except JobError as error:
        log.warning("job %s failed: %s", job_id, error)
        result: dict[str, Any] = {"error": str(error)}
        if error.refresh_worker:
            result["refresh_worker"] = True
        return result


def run(job: Mapping[str, Any], runtime: Runtime, settings: Settings, progress: ProgressSink) -> dict:
    """The job's stages; raises `JobError` for an expected failure."""
    job_id = str(job.get("id") or "job")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    runtime.configure_caches(settings)

    with timed(timings, "validate"):
        photos = house_model_photos(settings.model_images_dir)
        request = validate(job.get("input"), runtime, settings, photos)

    if request.garments or request.people:
        # Imported here: these forms build on this module's stages.
        from worker import catalog, outfit

        form = outfit if request.garments else catalog
        context = JobContext(job_id, job, runtime, settings, progress, timings, started)
        return form.run(context, request, photos)

    log.info("job %s: %s", job_id, _summary(request))

    with timed(timings, "fetch"):
        person, (garment,), user_mask, house_digest = load_pictures(
            request, [request.garment], photos, settings
        )

    photo = person  # as it came: upright, on white, at its own size (what `composite` keeps)
    pad: PadBox | None = None
    if request.fit == "pad":
        person, user_mask, pad = pad_to_frame(person, user_mask)

    outputs, mask_image, worn, request, guess = _generate(
        runtime, request, person, garment, user_mask, house_digest, progress, settings, timings
    )
    with timed(timings, "composite"):
        outputs, mask_image = output_images(request, photo, outputs, mask_image, pad, settings)

    extras = []
    if request.return_mask:
        extras.append(("mask", 0, mask_image))
        if (cut_out := cut_out_garment(worn)) is not None:
            extras.append(("garment", 0, cut_out))
    s3_config = job.get("s3Config") or None
    images, named, warnings = encode_and_store(job_id, request, outputs, extras, s3_config, timings)
    mask_entry, garment_entry = named.get(("mask", 0)), named.get(("garment", 0))

    timings["total"] = time.perf_counter() - started
    result: dict[str, Any] = {
        "images": images,
        "seed": request.seed,
        "model_type": request.model_type,
        "category": request.category,
        "timings": {name: round(seconds, 3) for name, seconds in timings.items()},
    }
    result.update(garment_facts(guess, worn))
    if mask_entry is not None:
        result["mask"] = mask_entry
    if garment_entry is not None:
        result["garment"] = garment_entry
    if warnings:
        result["warnings"] = warnings
    check_size(result, settings, warnings)
    log.info("job %s done in %.2f s: %s", job_id, timings["total"], result["timings"])
    return result


def garment_facts(guess: CategoryGuess | None, worn: GarmentResult | None) -> dict[str, Any]:
    """What a result says of how the garment was read: `category_scores` (category "auto") and
    `garment_photo_type` (the one used, when the request asked for "model" or "auto")."""
    facts: dict[str, Any] = {}
    if guess is not None:
        facts["category_scores"] = {category_name(name): score for name, score in guess.scores.items()}
    if worn is not None:
        facts["garment_photo_type"] = worn.photo_type
    return facts


def validate(
    raw: Any, runtime: Runtime, settings: Settings, photos: list[Path] | None = None
) -> TryOnRequest:
    """The job's input as a request, or `InputError`: every check that needs no picture and no
    GPU (the load-balancing endpoint runs it before a request waits for the GPU)."""
    if photos is None:
        photos = house_model_photos(settings.model_images_dir)
    return parse_request(
        raw,
        person_count=len(photos),
        loaded_model_types=runtime.model_types,
        extra_resolutions=settings.extra_resolutions,
    )


def load_pictures(
    request: TryOnRequest, garment_refs: Sequence[ImageRef], photos: list, settings: Settings
) -> tuple[Image.Image, list[Image.Image], Image.Image | None, str | None]:
    """Fetch and decode the person (or house photo), the garments and the caller's mask; the
    last item is the house photo's content hash (None for the caller's own photo).

    The URLs among them are fetched at once, under one deadline for all (DOWNLOAD_TIMEOUT).
    """
    refs = [ref for ref in (request.person, *garment_refs, request.mask) if ref is not None]
    pictures = dict(zip((ref.field for ref in refs), read_images(refs, settings), strict=True))
    house_digest = None
    if request.person is not None:
        person = converted(pictures["person"], "person", load_rgb)
    else:
        data = photos[request.person_index].read_bytes()
        house_digest = photo_digest(data)
        person = house_photo(data, settings)
    if request.fit == "pad":
        check_aspect(person.size, "person" if request.person is not None else "person_index", MAX_PAD_RATIO)
    garments = [converted(pictures[ref.field], ref.field, load_rgb) for ref in garment_refs]
    user_mask = None
    if request.mask is not None:
        user_mask = converted(pictures["mask"], "mask", load_mask)
    if user_mask is not None and user_mask.size != person.size:
        # A mask is drawn over the person photo: bring it to the photo's frame before any padding.
        user_mask = user_mask.resize(person.size, Image.Resampling.NEAREST)
    return person, garments, user_mask, house_digest


def house_photo(data: bytes, settings: Settings, field: str = "person_index") -> Image.Image:
    image = decode_image(data, field, settings.max_input_pixels)
    return converted(image, field, load_rgb)


def converted(image: Image.Image, field: str, convert: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """`convert(image)`, with Pillow's refusals as an input error naming the field.

    Pillow decodes some colour modes it cannot convert (a CIELab TIFF, for one); that is the
    caller's picture, not a bug, so it must end the job with a sentence, not a traceback.
    """
    try:
        return convert(image)
    except (ValueError, OSError):
        raise InputError(
            f"{field}: unsupported colour mode {image.mode} (send an RGB or greyscale image)"
        ) from None


def output_images(
    request: TryOnRequest,
    photo: Image.Image,
    frames: list[Image.Image],
    mask: Image.Image,
    pad: PadBox | None,
    settings: Settings,
) -> tuple[list[Image.Image], Image.Image]:
    """The samples and the mask as the caller gets them: at the photo's own size (capped at
    MAX_OUTPUT_MEGAPIXELS) or the frame's, over the photo unless `composite` is false."""
    if request.output_size == "input":
        size = capped_size(photo.size, settings.max_output_pixels)
    else:
        size = region_size(mask.size, pad)
    return composite(photo, frames, mask, pad, size, keep_photo=request.composite)


def pad_to_frame(
    person: Image.Image, user_mask: Image.Image | None
) -> tuple[Image.Image, Image.Image | None, PadBox]:
    """Fit the person photo (and the caller's mask, aligned with it) into the model's frame.

    Always the published frame (`MODEL_FRAME`), not the requested resolution: the preprocessor derives its
    pose and parsing input from a 768x1024 picture and the pipeline resizes to the resolution
    itself. The frame also bounds memory, whatever the photo's size and shape.
    """
    person, pad = fit_to_frame(person, MODEL_FRAME, WHITE)
    if user_mask is not None:
        user_mask, _ = fit_to_frame(user_mask, MODEL_FRAME, 0, Image.Resampling.NEAREST)
    return person, user_mask, pad


def _generate(
    runtime: Runtime,
    request: TryOnRequest,
    person: Image.Image,
    garment: Image.Image,
    user_mask: Image.Image | None,
    house_digest: str | None,
    progress: ProgressSink,
    settings: Settings,
    timings: dict[str, float],
) -> tuple[list[Image.Image], Image.Image, GarmentResult | None, TryOnRequest, CategoryGuess | None]:
    """Category (when "auto"), garment (when not flat), mask, then diffusion: the GPU stages,
    where CUDA can run out of memory or fail. Returns the images, the mask, the prepared garment
    (None when flat), the request with its category and model type decided, and the guess."""

    def work(stages: GpuStages):
        decided, garment_image, worn, guess, embeds = garment_stages(runtime, request, garment, stages)
        (prepared,) = prepare_people(runtime, decided, [Person(person, user_mask, house_digest)], stages)
        with stages("diffusion"):
            outputs = diffuse(runtime, decided, [prepared.person], garment_image, [prepared.mask], progress,
                              settings.progress_every, embeds)  # fmt: skip
        return outputs, prepared.mask, worn, decided, guess

    return on_gpu(request, timings, work)


@dataclass(frozen=True)
class Person:
    """One person to dress: the picture in the model's frame, the caller's mask over it (None:
    computed) and the house photo's content hash (None: the caller's photo; the mask is cached)."""

    image: Image.Image
    user_mask: Image.Image | None = None
    house_digest: str | None = None


class GpuStages:
    """Times the GPU stages of a job and remembers which one runs (`with stages("mask"): ...`),
    for the sentence of a GPU failure (`on_gpu`). A part of a job with timings of its own (an
    outfit's pass) gets `part(timings)`: its stages are timed there and still named to the job."""

    def __init__(self, timings: dict[str, float], job: GpuStages | None = None) -> None:
        self.timings = timings
        self.job = job
        self.current = ""

    def part(self, timings: dict[str, float]) -> GpuStages:
        return GpuStages(timings, self)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.current = name
        if self.job is not None:
            self.job.current = name
        with timed(self.timings, name):
            yield


def on_gpu(request: TryOnRequest, timings: dict[str, float], work: Callable[[GpuStages], Any]) -> Any:
    """`work(stages)`, the GPU stages of a job, with a GPU failure in any of them (out of memory,
    a lost context) turned into the job's error sentence (and `refresh_worker`)."""
    stages = GpuStages(timings)
    try:
        return work(stages)
    except Exception as error:
        failure = classify_gpu_failure(error)
        if failure is None:
            raise
        detail = failure_detail(error)
        stage = stages.current
        part = _gpu_part(stage, error)
    # Only reached after a GPU failure. Freeing happens here, outside the except block, because
    # until it ends the traceback keeps the failed run's frames and tensors alive.
    free_gpu_memory()
    if failure is GpuFailure.OUT_OF_MEMORY:
        if stage == "diffusion":  # the only stage whose memory grows with samples and resolution
            asked = f"{request.samples} sample(s) at {request.resolution}"
            raise OutOfMemoryJobError(
                f"the GPU ran out of memory in {part} for {asked}; try fewer samples or a smaller "
                "resolution (this worker will be restarted)"
            )
        raise OutOfMemoryJobError(
            f"the GPU ran out of memory in {part}; send the job again (this worker will be restarted)"
        )
    log.error("GPU failure in %s, asking RunPod for a new worker: %s", part, detail)
    raise GpuFailureJobError(
        f"the GPU failed in {part} ({detail}); send the job again (this worker will be restarted)"
    )


def garment_stages(
    runtime: Runtime, request: TryOnRequest, garment: Image.Image, stages: GpuStages
) -> tuple[TryOnRequest, Image.Image, GarmentResult | None, CategoryGuess | None, torch.Tensor | None]:
    """The garment's stages: its category (when "auto"), then the garment as the model must see
    it (when not flat). Returns the request with category and model type decided, the garment
    picture, the prepared garment (None when flat), the guess and the CLIP embedding (both None
    unless classified)."""
    worn = guess = embeds = None
    if request.category == AUTO:
        with stages("classify"):
            request, guess, embeds = classify_garment(runtime, request, garment)
    if request.garment_photo_type != "flat":
        with stages("garment"):
            worn = _garment(runtime, request, garment)
        garment = worn.image
    return request, garment, worn, guess, embeds


def prepare_people(
    runtime: Runtime,
    request: TryOnRequest,
    people: Sequence[Person],
    stages: GpuStages,
    *,
    each: bool = False,
) -> list[PreprocessResult | InputError]:
    """The mask stage for each person (pose, parsing, mask; or the cached house mask). A person
    in whom none is found ends the job, or with `each` is that person's `InputError`."""
    results: list[PreprocessResult | InputError] = []
    model_type, category = request.model_type, request.pipeline_category
    with stages("mask"):
        for person in people:
            key = None
            if person.house_digest is not None and person.user_mask is None:
                key = house_mask_key(
                    person.house_digest, model_type, category, request.fit, request.resolution
                )
            try:
                results.append(
                    _prepare(runtime, person.image, model_type, category, person.user_mask, request.size, key)
                )
            except InputError as error:
                if not each:
                    raise
                results.append(error)
    return results


def _gpu_part(stage: str, error: BaseException) -> str:
    """What ran on the GPU when `error` came, as a failure's sentence names it.

    Pose estimation (torch) and human parsing (onnxruntime) share the mask stage; the library
    that raised tells them apart. Both always see a 384x512 picture and category detection one
    224x224 garment: of a job's GPU work only the diffusion's memory (CLIP, UNets, VAE) depends on
    the samples and the resolution asked for.
    """
    if stage == "mask":
        return "human parsing" if isinstance(error, ORT_ERRORS) else "pose estimation"
    return GPU_PARTS[stage]


def _prepare(
    runtime: Runtime,
    person: Image.Image,
    model_type: str,
    category: str,
    user_mask: Image.Image | None,
    size: tuple[int, int],
    house_key: tuple | None,
) -> PreprocessResult:
    """Pose + parsing + mask (or the caller's mask); for a house photo (`house_key`) the cached
    result when there is one, else computed and cached."""
    cached = runtime.house_masks.get(house_key) if house_key is not None else None
    if cached is not None:
        return cached
    try:
        prepared = runtime.preprocessor(person, model_type, category, mask=user_mask, size=size)
    except PreprocessError as error:
        raise InputError(f"{'mask' if user_mask is not None else 'person'}: {error}") from None
    if house_key is not None:
        runtime.house_masks.put(house_key, prepared)
    return prepared


def precompute_house_masks(runtime: Runtime, settings: Settings) -> int:
    """Fill the house-mask cache for every house photo, loaded model type and category it takes,
    at the default fit and resolution (what a job that names only `person_index` gets), so that
    no job pays for them. Returns how many were computed; a photo where no person is found is
    logged and skipped (its jobs will fail with the same sentence)."""
    fit, resolution = FIELDS["fit"], DEFAULT_RESOLUTION
    computed = 0
    for path in house_model_photos(settings.model_images_dir):
        data = path.read_bytes()
        digest = photo_digest(data)
        try:
            person = house_photo(data, settings)
            if fit == "pad":
                check_aspect(person.size, "person_index", MAX_PAD_RATIO)
                person, _, _ = pad_to_frame(person, None)
        except InputError as error:
            log.warning("house photo %s skipped: %s", path.name, error)
            continue
        for model_type in runtime.model_types:
            # Only the categories the model type takes (HD is upper body only).
            for category in (PUBLISHED_NAMES[name] for name in MODEL_CATEGORIES[model_type]):
                key = house_mask_key(digest, model_type, category, fit, resolution)
                try:
                    _prepare(runtime, person, model_type, category, None, RESOLUTIONS[resolution], key)
                except InputError as error:
                    log.warning("house photo %s, %s/%s: %s", path.name, model_type, category, error)
                    continue
                computed += 1
    return computed


def classify_garment(
    runtime: Runtime, request: TryOnRequest, garment: Image.Image
) -> tuple[TryOnRequest, CategoryGuess, torch.Tensor]:
    """Decide category "auto" (and model type "auto") from the garment's CLIP image embedding,
    the one the pipeline conditions on: it is returned to be passed on, not computed again."""
    if runtime.classifier is None:
        raise InputError("category 'auto' is not available on this worker; name the category")
    # Every pipeline shares one CLIP image encoder: any of them gives the same embedding.
    pipe = runtime.pipelines.get(request.model_type) or next(iter(runtime.pipelines.values()))
    width, height = request.size
    with torch.inference_mode():
        embeds = pipe.garment_image_embeds(garment, height=height, width=width)
    guess = runtime.classifier.classify(embeds)
    category = category_name(guess.category)
    model_type = request.model_type
    if model_type == AUTO:
        model_type = auto_model_type(category, runtime.model_types)
    problem = unsupported(model_type, category) if model_type else f"no model for {category} is loaded"
    if problem:
        raise InputError(f"category 'auto' found a {category} garment, but {problem}")
    return replace(request, category=category, model_type=model_type), guess, embeds


def _garment(runtime: Runtime, request: TryOnRequest, garment: Image.Image) -> GarmentResult:
    """The garment photo as the model must see it (`garment_photo_type` "model" or "auto")."""
    try:
        return runtime.preprocessor.garment(garment, request.pipeline_category, request.garment_photo_type)
    except PreprocessError as error:
        raise InputError(f"garment_photo_type {request.garment_photo_type!r}: {error}") from None


def cut_out_garment(worn: GarmentResult | None) -> Image.Image | None:
    """The garment as cut out of a person's photo, returned beside the mask (what the model saw);
    None for a flat garment photo."""
    return worn.image if worn is not None and worn.photo_type == "model" else None


def encode_and_store(
    job_id: str,
    request: TryOnRequest,
    images: Sequence[Image.Image],
    extras: Sequence[tuple[str, int, Image.Image]],
    s3_config: object,
    timings: dict[str, float],
) -> tuple[list[dict], dict[tuple[str, int], dict], list[str]]:
    """Encode the images (in the request's format) and the PNG `extras` (masks, cut-out garments,
    each `(group, index, picture)`, stored at `<group>/<index>`) in the worker's threads, then
    upload (or inline) them all with one decision. Returns the images' entries, the extras'
    entries by `(group, index)` in their order, and the warnings."""
    with timed(timings, "encode"):
        encoded = encode_images([
            *((image, request.output_format) for image in images),
            *((picture, "png") for _, _, picture in extras),
        ])  # fmt: skip
    with timed(timings, "store"):
        extension, content_type = EXTENSIONS[request.output_format], CONTENT_TYPES[request.output_format]
        pictures, pngs = encoded[: len(images)], encoded[len(images) :]
        files = [OutputFile(data, content_type, extension, index) for index, data in enumerate(pictures)]
        files += [
            OutputFile(data, "image/png", "png", index, group=group)
            for (group, index, _), data in zip(extras, pngs, strict=True)
        ]
        stored = store_outputs(job_id, files, s3_config=s3_config)
    entries = [image.to_dict() for image in stored.images]
    groups = [(group, index) for group, index, _ in extras]
    # Bounded like errors: a warning can carry an error code sent by the job's own S3 endpoint.
    warnings = [bounded(message) for message in stored.warnings]
    return entries[: len(images)], dict(zip(groups, entries[len(images) :], strict=True)), warnings


def diffuse(
    runtime: Runtime,
    request: TryOnRequest,
    people: Sequence[Image.Image],
    garment: Image.Image,
    masks: Sequence[Image.Image],
    progress: ProgressSink,
    every: int,
    garment_image_embeds: torch.Tensor | None = None,
    *,
    samples: int | None = None,
    latents: torch.Tensor | None = None,
    context: Mapping[str, int] | None = None,
) -> list[Image.Image]:
    """Run the pipeline for `people` (their images person by person, `samples` each, by default
    the request's), reporting progress every `every` steps of each batch (never on its last);
    `context` (an outfit's pass, say) goes into every update, and a batch number when the people
    take several batches."""
    samples = request.samples if samples is None else samples
    batches = math.ceil(len(people) / people_per_batch(samples))
    calls = 0

    def on_step_end(pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        nonlocal calls
        calls += 1
        done = step_index + 1
        if done % every == 0 and done < request.steps:
            update = {"stage": "diffusion", "step": done, "steps": request.steps, **(context or {})}
            if batches > 1:
                update.update(batch=(calls - 1) // request.steps + 1, batches=batches)
            progress(update)
        return callback_kwargs

    width, height = request.size
    with torch.inference_mode(), _non_finite_as_job_error():
        return runtime.pipelines[request.model_type](
            list(people),
            garment,
            list(masks),
            category=request.pipeline_category,
            num_inference_steps=request.steps,
            image_guidance_scale=request.guidance_scale,
            num_images_per_prompt=samples,
            generator=request.seed,  # the pipeline seeds a CPU generator (device-independent noise)
            height=height,
            width=width,
            output_type="pil",
            callback_on_step_end=on_step_end,
            garment_image_embeds=garment_image_embeds,
            latents=latents,
        ).images


@contextmanager
def _non_finite_as_job_error() -> Iterator[None]:
    """A NaN or infinite result (the pipeline retried the decode in float32 already) ends the job
    with a sentence; the GPU is fine, so the worker stays."""
    try:
        yield
    except NonFiniteOutputError as error:
        raise JobError(
            f"the try-on produced no usable image: {error}; "
            "send the job again with another seed or a lower guidance_scale"
        ) from None


def runpod_progress(job: Mapping[str, Any]) -> ProgressSink:
    """Progress updates through RunPod when deployed; locally (no job-done URL) only a log line."""
    deployed = bool(os.environ.get("RUNPOD_WEBHOOK_POST_OUTPUT"))

    def send(update: dict) -> None:
        log.info("job %s progress: %s", job.get("id"), update)
        if deployed:
            runpod.serverless.progress_update(dict(job), update)

    return send


def check_size(result: dict, settings: Settings, warnings: list[str]) -> None:
    """Refuse a result RunPod would drop (it answers 400 and the client sees no output)."""
    size = len(json.dumps(result))
    if size <= settings.max_inline_bytes:
        return
    because = f" ({'; '.join(warnings)})" if warnings else ""
    raise ResultTooLargeError(
        f"the result is {size / MB:.1f} MB, over the {settings.max_inline_bytes / MB:g} MB RunPod accepts "
        f"inline{because}: configure an S3 bucket (BUCKET_ENDPOINT_URL or the job's s3Config) "
        "or ask for output_format 'jpeg' or 'webp', fewer samples or output_size 'frame'"
    )


def _summary(request: TryOnRequest) -> str:
    """A log line about the request that holds no URL path, query or image data."""
    person = request.person.describe() if request.person else f"house model {request.person_index}"
    mask = f", mask {request.mask.describe()}" if request.mask else ""
    return (
        f"{request.model_type}/{request.category} {request.resolution} fit={request.fit} "
        f"steps={request.steps} samples={request.samples} seed={request.seed}; "
        f"person {person}, garment {request.garment.describe()}{mask}"
    )


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = time.perf_counter() - start

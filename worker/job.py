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
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import runpod
import torch
from PIL import Image

from core.framing import PadBox, fit_to_frame
from core.generation import DEFAULT_RESOLUTION, RESOLUTIONS
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
from worker.schema import FIELDS, TryOnRequest, parse_request

if TYPE_CHECKING:
    from ootd.classify import CategoryGuess
    from preprocess.preprocessor import GarmentResult

log = logging.getLogger(__name__)

# fit "pad" refuses photos more than this many times as wide as tall (or tall as wide): the
# photo would be a thin strip in the frame (8:1 leaves 768x96), and nothing a try-on can use.
MAX_PAD_RATIO = 8.0

ProgressSink = Callable[[dict], None]

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

    with _stage(timings, "validate"):
        photos = house_model_photos(settings.model_images_dir)
        request = validate(job.get("input"), runtime, settings, photos)
    log.info("job %s: %s", job_id, _summary(request))

    with _stage(timings, "fetch"):
        person, garment, user_mask, house_digest = _load_pictures(request, photos, settings)

    photo = person  # as it came: upright, on white, at its own size (what `composite` keeps)
    pad: PadBox | None = None
    if request.fit == "pad":
        person, user_mask, pad = _pad(person, user_mask)

    outputs, mask_image, worn, request, guess = _generate(
        runtime, request, person, garment, user_mask, house_digest, progress, settings, timings
    )
    with _stage(timings, "composite"):
        outputs, mask_image = _output(request, photo, outputs, mask_image, pad, settings)

    with _stage(timings, "encode"):
        pictures = [(image, request.output_format) for image in outputs]
        if request.return_mask:
            pictures.append((mask_image, "png"))
        # A garment cut out of a person's photo is returned beside the mask: what the model saw.
        cut_out = worn is not None and worn.photo_type == "model" and request.return_mask
        if cut_out:
            pictures.append((worn.image, "png"))
        encoded = encode_images(pictures)
        encoded_garment = encoded.pop() if cut_out else None
        encoded_mask = encoded.pop() if request.return_mask else None

    with _stage(timings, "store"):
        images, mask_entry, garment_entry, warnings = _store(
            job_id, request, encoded, encoded_mask, encoded_garment, job.get("s3Config") or None
        )

    timings["total"] = time.perf_counter() - started
    result: dict[str, Any] = {
        "images": images,
        "seed": request.seed,
        "model_type": request.model_type,
        "category": request.category,
        "timings": {name: round(seconds, 3) for name, seconds in timings.items()},
    }
    if guess is not None:
        result["category_scores"] = {category_name(name): score for name, score in guess.scores.items()}
    if worn is not None:
        result["garment_photo_type"] = worn.photo_type
    if mask_entry is not None:
        result["mask"] = mask_entry
    if garment_entry is not None:
        result["garment"] = garment_entry
    if warnings:
        result["warnings"] = warnings
    _check_size(result, settings, warnings)
    log.info("job %s done in %.2f s: %s", job_id, timings["total"], result["timings"])
    return result


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


def _load_pictures(
    request: TryOnRequest, photos: list, settings: Settings
) -> tuple[Image.Image, Image.Image, Image.Image | None, str | None]:
    """Fetch and decode the person (or house photo), the garment and the caller's mask; the
    last item is the house photo's content hash (None for the caller's own photo).

    The URLs among them are fetched at once, under one deadline for all (DOWNLOAD_TIMEOUT).
    """
    refs = [ref for ref in (request.person, request.garment, request.mask) if ref is not None]
    pictures = dict(zip((ref.field for ref in refs), read_images(refs, settings), strict=True))
    house_digest = None
    if request.person is not None:
        person = _converted(pictures["person"], "person", load_rgb)
    else:
        data = photos[request.person_index].read_bytes()
        house_digest = photo_digest(data)
        person = _house_photo(data, settings)
    if request.fit == "pad":
        check_aspect(person.size, "person" if request.person is not None else "person_index", MAX_PAD_RATIO)
    garment = _converted(pictures["garment"], "garment", load_rgb)
    user_mask = None
    if request.mask is not None:
        user_mask = _converted(pictures["mask"], "mask", load_mask)
    if user_mask is not None and user_mask.size != person.size:
        # A mask is drawn over the person photo: bring it to the photo's frame before any padding.
        user_mask = user_mask.resize(person.size, Image.Resampling.NEAREST)
    return person, garment, user_mask, house_digest


def _house_photo(data: bytes, settings: Settings) -> Image.Image:
    image = decode_image(data, "person_index", settings.max_input_pixels)
    return _converted(image, "person_index", load_rgb)


def _converted(image: Image.Image, field: str, convert: Callable[[Image.Image], Image.Image]) -> Image.Image:
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


def _output(
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


def _pad(
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
    stage = ""  # the stage running, for the sentence of a GPU failure
    try:
        worn = guess = embeds = None
        if request.category == AUTO:
            stage = "classify"
            with _stage(timings, stage):
                request, guess, embeds = _classify(runtime, request, garment)
        if request.garment_photo_type != "flat":
            stage = "garment"
            with _stage(timings, stage):
                worn = _garment(runtime, request, garment)
            garment = worn.image
        stage = "mask"
        with _stage(timings, stage):
            model_type, category = request.model_type, request.pipeline_category
            key = None
            if house_digest is not None and user_mask is None:
                key = house_mask_key(house_digest, model_type, category, request.fit, request.resolution)
            prepared = _prepare(runtime, person, model_type, category, user_mask, request.size, key)
        stage = "diffusion"
        with _stage(timings, stage):
            every = settings.progress_every
            outputs = _diffuse(
                runtime, request, prepared.person, garment, prepared.mask, progress, every, embeds
            )
        return outputs, prepared.mask, worn, request, guess
    except Exception as error:
        failure = classify_gpu_failure(error)
        if failure is None:
            raise
        detail = failure_detail(error)
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
            person = _house_photo(data, settings)
            if fit == "pad":
                check_aspect(person.size, "person_index", MAX_PAD_RATIO)
                person, _, _ = _pad(person, None)
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


def _classify(
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


def _store(
    job_id: str,
    request: TryOnRequest,
    encoded: list[bytes],
    encoded_mask: bytes | None,
    encoded_garment: bytes | None,
    s3_config: object,
) -> tuple[list[dict], dict | None, dict | None, list[str]]:
    """Upload (or inline) the images, the mask and the cut-out garment, one decision for all;
    entries and warnings."""
    extension, content_type = EXTENSIONS[request.output_format], CONTENT_TYPES[request.output_format]
    files = [OutputFile(data, content_type, extension, index) for index, data in enumerate(encoded)]
    extras = {"mask": encoded_mask, "garment": encoded_garment}
    for group, data in extras.items():
        if data is not None:
            files.append(OutputFile(data, "image/png", "png", 0, group=group))
    stored = store_outputs(job_id, files, s3_config=s3_config)
    entries = [image.to_dict() for image in stored.images]
    sent = [group for group, data in extras.items() if data is not None]
    extra_entries = dict(zip(sent, entries[len(encoded) :], strict=True))
    # Bounded like errors: a warning can carry an error code sent by the job's own S3 endpoint.
    warnings = [bounded(message) for message in stored.warnings]
    return entries[: len(encoded)], extra_entries.get("mask"), extra_entries.get("garment"), warnings


def _diffuse(
    runtime: Runtime,
    request: TryOnRequest,
    person: Image.Image,
    garment: Image.Image,
    mask: Image.Image,
    progress: ProgressSink,
    every: int,
    garment_image_embeds: torch.Tensor | None = None,
) -> list[Image.Image]:
    """Run the pipeline, reporting progress every `every` steps (never on the last one)."""

    def on_step_end(pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        done = step_index + 1
        if done % every == 0 and done < request.steps:
            progress({"stage": "diffusion", "step": done, "steps": request.steps})
        return callback_kwargs

    width, height = request.size
    with torch.inference_mode(), _non_finite_as_job_error():
        return runtime.pipelines[request.model_type](
            person,
            garment,
            mask,
            category=request.pipeline_category,
            num_inference_steps=request.steps,
            image_guidance_scale=request.guidance_scale,
            num_images_per_prompt=request.samples,
            generator=request.seed,  # the pipeline seeds a CPU generator (device-independent noise)
            height=height,
            width=width,
            output_type="pil",
            callback_on_step_end=on_step_end,
            garment_image_embeds=garment_image_embeds,
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


def _check_size(result: dict, settings: Settings, warnings: list[str]) -> None:
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
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = time.perf_counter() - start

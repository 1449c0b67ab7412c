"""`OOTDiffusionPipeline`: the published OOTDiffusion try-on maths on stock diffusers.

What runs per request, in the published order (see the architecture reference, sections 3-4):

1. person and garment -> RGB -> width x height; the pipeline makes the gray-127 masked person;
2. prompt embeddings: HD = text states of "" (2 tokens) with position 1 replaced by the garment's
   CLIP image embedding; DC = text states of the category word (3 tokens) + the image embedding;
3. VAE `mode()` latents (unscaled) of the garment, the masked person and the person;
4. the garment UNet once at t=0 on [garment ; zero garment] (`GarmentFusion`);
5. UniPC (bh2, order 2, Karras, final sigma = sigma_min) with garment-only guidance
   eps = eps(zero garment) + s * (eps(garment) - eps(zero garment)), and after every step a latent
   repaint of the unmasked area with the original latent noised to the next timestep with the
   initial noise (the clean original after the last step);
6. VAE decode, one image at a time, checked for NaN and infinity (a float16 overflow would come
   out as black pixels): non-finite pixels are decoded once more in float32, and whatever stays
   non-finite raises `ootd.errors.NonFiniteOutputError` naming the stage.

Several people (a list of persons and masks, one garment) share the garment's steps 2-4 and go
through steps 5-6 together, at most `core.generation.MAX_BATCH_ROWS` images per batch; each
person's pictures are encoded on their own and their noise drawn from the seed on its own, as for
a call with that person alone (see `initial_noise`).

Where this deliberately differs from the published code (same maths, less work): at guidance
scale exactly 1 only the conditional half runs; the garment UNet runs on 2 rows instead of 2N;
the garment-query rows of the fused self-attention are never computed; with a `garment_cache`,
steps 2-4 for the garment (its CLIP embedding, latents and garment-UNet features) are computed
once per garment, model type, category, size and guidance on/off and reused (`ootd.garment_cache`).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel, UniPCMultistepScheduler
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPImageProcessorPil, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from core.generation import DEFAULT_GUIDANCE, DEFAULT_STEPS, SAMPLES_RANGE, is_guided, people_per_batch
from core.images import WHITE, flatten
from core.vocabulary import MODEL_FRAME, PUBLISHED_CATEGORIES, check_published
from ootd import layout
from ootd.errors import NonFiniteOutputError
from ootd.fusion import GarmentFusion
from ootd.garment_cache import GarmentCache, GarmentConditioning, garment_key

log = logging.getLogger(__name__)

CATEGORIES = PUBLISHED_CATEGORIES  # the pipeline speaks the published code's names
# The words the published DC model was conditioned on; only the first BPE piece survives the
# 3-token truncation ("upperbody" -> "upper"), exactly as in the published code.
DC_PROMPT_WORDS: dict[str, str] = {"upper_body": "upperbody", "lower_body": "lowerbody", "dresses": "dress"}
HD_PROMPT_LENGTH = 2
DC_PROMPT_LENGTH = 3
MAX_STEPS = 1000
MAX_SIDE = 2048
SIZE_MULTIPLE = 64
OUTPUT_TYPES: tuple[str, ...] = ("pil", "np", "latent")
MASK_GRAY = (127, 127, 127)
MASK_THRESHOLD = 127


def build_scheduler(config: dict[str, Any]) -> UniPCMultistepScheduler:
    """UniPC from the checkpoint's (DPMSolverMultistep) scheduler config, as the published code did.

    `solver_type: midpoint` becomes bh2, `use_karras_sigmas` and `solver_order: 2` carry over.
    `final_sigmas_type="sigma_min"` reproduces diffusers 0.24; newer releases default to "zero",
    which moves the final latents by ~1 (fidelity notes).
    """
    return UniPCMultistepScheduler.from_config(config, final_sigmas_type="sigma_min")


def resolve_device_dtype(
    device: str | torch.device | None, dtype: torch.dtype | None
) -> tuple[torch.device, torch.dtype]:
    """CUDA + float16 when available, else CPU + float32; either can be overridden."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    return device, dtype


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB copy of any PIL image; transparency is flattened onto white (the published code would
    have fed 4 channels to the VAE, and garments are shot on white)."""
    return flatten(image, WHITE)


def masked_person_image(person: PIL.Image.Image, mask: PIL.Image.Image) -> PIL.Image.Image:
    """The person with the area to repaint filled with gray 127, as the published run script did."""
    return PIL.Image.composite(PIL.Image.new("RGB", person.size, MASK_GRAY), person, mask)


_PIXEL_PROCESSOR = VaeImageProcessor(vae_scale_factor=8, do_resize=False)


def image_to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 in [-1, 1] from diffusers' own `VaeImageProcessor.preprocess`.

    Not just the same values: the same memory layout too. The published pipeline feeds the VAE
    this channels-last-strided tensor, and CPU convolutions round differently on a contiguous
    one; measured against the published pipeline on the tiny checkpoints, a contiguous input
    shifted the masked-person latents by 5e-4 and the 3-step result by 8e-3 (vs 3e-5 with this).
    """
    return _PIXEL_PROCESSOR.preprocess(image)


def mask_to_tensor(mask: PIL.Image.Image) -> torch.Tensor:
    """(1, 1, H, W) float32: 1 where mask >= 127 (repaint), else 0."""
    array = (np.asarray(mask) >= MASK_THRESHOLD).astype(np.float32)
    return torch.from_numpy(array)[None, None]


@dataclass
class OOTDiffusionPipelineOutput(ImagePipelineOutput):
    """`images` as diffusers' `ImagePipelineOutput`, and how the decode went."""

    decoded_in_float32: bool = False
    """The VAE decode in the pipeline's dtype gave NaN or infinite pixels, and the float32 retry
    gave these finite ones (what a benchmark reports; a log line says it too)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


class OOTDiffusionPipeline(DiffusionPipeline):
    """Virtual try-on: person + garment + mask -> images of the person wearing the garment.

    Components: `vae`, `text_encoder`, `tokenizer`, `image_encoder` (CLIP vision + projection),
    `image_processor` (CLIP), `unet_garm` and `unet_vton` (stock `UNet2DConditionModel`s wired
    together by `GarmentFusion`) and `scheduler` (UniPC). `model_type` is "hd" (VITON-HD, upper
    body only) or "dc" (Dress Code: upper body, lower body, dresses).
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->unet_garm->unet_vton->vae"
    _callback_tensor_inputs: ClassVar[list[str]] = ["latents", "noise", "mask_latents", "original_latents"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        image_encoder: CLIPVisionModelWithProjection,
        image_processor: CLIPImageProcessorPil,
        unet_garm: UNet2DConditionModel,
        unet_vton: UNet2DConditionModel,
        scheduler: UniPCMultistepScheduler,
        model_type: str = "hd",
    ) -> None:
        super().__init__()
        layout.check_model_type(model_type)
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            image_encoder=image_encoder,
            image_processor=image_processor,
            unet_garm=unet_garm,
            unet_vton=unet_vton,
            scheduler=scheduler,
        )
        self.register_to_config(model_type=model_type)
        self.model_type = model_type
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.vae_image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.fusion = GarmentFusion.attach(unet_garm, unet_vton)
        # Not a registered component: a runtime memo (see `ootd.garment_cache`), None = off.
        self.garment_cache: GarmentCache | None = None

    # ----------------------------------------------------------------------------------- loading
    @classmethod
    def from_checkpoints(
        cls,
        root: str | Path,
        model_type: str = "hd",
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> OOTDiffusionPipeline:
        """Load one model type from the published tree under `root` (local files only).

        `dtype` applies to the UNets and the VAE (default float16 on CUDA, float32 on CPU); the
        CLIP text and image encoders stay float32 as in the published code.
        """
        from ootd.loading import load_pipelines

        return load_pipelines(root, model_types=(model_type,), device=device, dtype=dtype)[model_type]

    # ------------------------------------------------------------------------------ conditioning
    def _text_states(self, text: str, max_length: int, device: torch.device) -> torch.Tensor:
        ids = self.tokenizer(
            [text], max_length=max_length, padding="max_length", truncation=True, return_tensors="pt"
        ).input_ids
        return self.text_encoder(ids.to(device))[0]

    def garment_image_embeds(
        self, garment: PIL.Image.Image, height: int = MODEL_FRAME.height, width: int = MODEL_FRAME.width
    ) -> torch.Tensor:
        """(1, D) projected CLIP image embedding of the garment, exactly as `__call__` computes it
        for `height` x `width` (the garment is first stretched to that size). Pass it back as
        `garment_image_embeds` to reuse it (e.g. after classifying the garment with it)."""
        garment = to_rgb(garment).resize((width, height), PIL.Image.BICUBIC)
        pixels = self.image_processor(images=garment, return_tensors="pt").pixel_values
        device = self.text_encoder.device
        return self.image_encoder(pixels.to(device, self.image_encoder.dtype)).image_embeds

    def encode_prompt(
        self, garment: PIL.Image.Image, category: str, image_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(1, T, D) float32 prompt embeddings of one request: HD T=2, DC T=4 (see module doc).
        `image_embeds`: the garment's (1, D) CLIP embedding when already computed."""
        device = self.text_encoder.device
        if image_embeds is None:
            pixels = self.image_processor(images=garment, return_tensors="pt").pixel_values
            image_embeds = self.image_encoder(pixels.to(device, self.image_encoder.dtype)).image_embeds
        image_embeds = image_embeds.to(device).unsqueeze(1)
        if self.model_type == "hd":
            states = self._text_states("", HD_PROMPT_LENGTH, device).clone()
            states[:, 1:] = image_embeds
            return states
        states = self._text_states(DC_PROMPT_WORDS[category], DC_PROMPT_LENGTH, device)
        return torch.cat([states, image_embeds.to(states.dtype)], dim=1)

    def encode_image(self, image: PIL.Image.Image) -> torch.Tensor:
        """Unscaled VAE latent `mode()` of one RGB image, (1, 4, H/8, W/8) in the VAE's dtype."""
        pixels = image_to_tensor(image).to(self._execution_device, self.vae.dtype)
        return self.vae.encode(pixels).latent_dist.mode()

    def _encode_garment(
        self,
        cache_key: tuple,
        prompt_embeds: torch.Tensor,
        garment_latents: torch.Tensor,
        garment_batch: torch.Tensor,
        groups: int,
    ) -> None:
        """The garment UNet pass for this request (the fusion keeps the try-on blocks' garment
        keys/values), its recorded features kept in the garment cache when there is one. A method
        of its own so that the features are not held beyond it when nothing caches them."""
        features = self.fusion.encode_garment(garment_batch, torch.cat([prompt_embeds] * groups, dim=0))
        if self.garment_cache is not None:
            self.garment_cache.put(cache_key, GarmentConditioning(prompt_embeds, garment_latents, features))

    def initial_noise(
        self, people: int, samples: int, height: int, width: int, generator: torch.Generator | int
    ) -> torch.Tensor:
        """(people x samples, C, height/8, width/8) standard normal noise, person by person, in the
        try-on UNet's dtype on its device, as `__call__` draws it (pass it back as `latents`).
        With an integer seed each person's rows come from a fresh CPU generator seeded with it:
        the noise a call for that person alone draws, bit for bit; a generator draws the people's
        rows one after another."""
        factor = self.vae_scale_factor
        shape = (samples, self.unet_vton.config.out_channels, height // factor, width // factor)
        device, dtype = self._execution_device, self.unet_vton.dtype
        blocks = []
        for _ in range(people):
            source = generator
            if not isinstance(source, torch.Generator):
                source = torch.Generator("cpu").manual_seed(int(generator))
            blocks.append(randn_tensor(shape, generator=source, device=device, dtype=dtype))
        return torch.cat(blocks)

    def _encode_person(
        self, person: PIL.Image.Image, mask: PIL.Image.Image, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(masked person latents, scaled original latents, mask latents) of one person, each
        (1, C, h, w): the VAE sees one picture at a time, as for a call with that person alone."""
        person_latents = self.encode_image(masked_person_image(person, mask)).to(dtype)
        original_latents = self.encode_image(person).to(dtype) * self.vae.config.scaling_factor
        mask_latents = F.interpolate(mask_to_tensor(mask), size=person_latents.shape[-2:])
        return person_latents, original_latents, mask_latents.to(self._execution_device, dtype)

    def _denoise(
        self,
        people: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        noise: torch.Tensor,
        prompt_embeds: torch.Tensor,
        samples: int,
        guided: bool,
        guidance_scale: float,
        num_inference_steps: int,
        callback_on_step_end: Callable | None,
        callback_on_step_end_tensor_inputs: Sequence[str],
    ) -> torch.Tensor:
        """The denoising loop for one batch of people (`_encode_person`'s latents each) with the
        repaint after every step; returns the final latents, a row per image."""
        # A row per image, person by person ([cond x n ; uncond x n] halves with guidance, in the
        # order of the garment rows). torch.cat repeats, as published (see step 5 of __call__).
        rows = len(people) * samples
        batch_embeds = prompt_embeds.repeat(1, rows, 1).view(rows, prompt_embeds.shape[1], -1)
        person_latents = torch.cat([latents for latents, _, _ in people for _ in range(samples)], dim=0)
        original_latents = torch.cat([latents for _, latents, _ in people for _ in range(samples)], dim=0)
        mask_latents = torch.cat([latents for _, _, latents in people for _ in range(samples)], dim=0)
        if guided:
            batch_embeds = torch.cat([batch_embeds, batch_embeds])
            person_latents = torch.cat([person_latents] * 2, dim=0)

        # Timesteps, afresh for each batch (the scheduler counts its steps). With a begin index,
        # add_noise uses the scheduler's own step counter, i.e. exactly the sigma of the next
        # step. Looking the timestep up instead (the published code did) picks the wrong sigma,
        # or in diffusers 0.24 crashes, once Karras rounding repeats timesteps (45 steps and
        # more); below that both give the same index.
        self.scheduler.set_timesteps(num_inference_steps, device=noise.device)
        self.scheduler.set_begin_index(0)
        timesteps = self.scheduler.timesteps
        latents = noise.clone()

        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for index, timestep in enumerate(timesteps):
                model_input = torch.cat([latents] * 2) if guided else latents
                model_input = self.scheduler.scale_model_input(model_input, timestep)
                eps = self.unet_vton(
                    torch.cat([model_input, person_latents], dim=1),
                    timestep,
                    encoder_hidden_states=batch_embeds,
                    return_dict=False,
                )[0]
                if guided:
                    eps_garment, eps_zero = eps.chunk(2)
                    eps = eps_zero + guidance_scale * (eps_garment - eps_zero)
                latents = self.scheduler.step(eps, timestep, latents, return_dict=False)[0]

                # Repaint: outside the mask, the original latent at the noise level of the next step.
                known = original_latents
                if index < len(timesteps) - 1:
                    next_timestep = timesteps[index + 1 : index + 2]
                    known = self.scheduler.add_noise(original_latents, noise, next_timestep)
                latents = (1 - mask_latents) * known + mask_latents * latents

                if callback_on_step_end is not None:
                    available = {
                        "latents": latents,
                        "noise": noise,
                        "mask_latents": mask_latents,
                        "original_latents": original_latents,
                    }
                    callback_kwargs = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                    outputs = callback_on_step_end(self, index, timestep, callback_kwargs) or {}
                    latents = outputs.pop("latents", latents)
                progress_bar.update()
        return latents

    # ---------------------------------------------------------------------------------- decoding
    def _decode(self, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(N, 3, H, W) pixels in [-1, 1] of the scaled `latents`, handed to the VAE in `dtype`.
        One image at a time: decoding 4 samples at once needs 4x the decoder activations."""
        scaling = self.vae.config.scaling_factor
        decoded = [
            self.vae.decode(latents[i : i + 1].to(dtype) / scaling, return_dict=False)[0]
            for i in range(latents.shape[0])
        ]
        return torch.cat(decoded)

    def _decode_finite(self, latents: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The decoded pixels, all finite, and whether that took the float32 retry.

        float16 overflows where float32 does not (a VAE decoder's activations are the known
        place), and NaN or infinity would reach the caller as black pixels. The latents and the
        pixels are checked together (one device sync per job). Non-finite latents cannot be
        decoded into anything, so they fail at once; non-finite pixels from finite latents are
        decoded once more in float32 (unless the decoder already runs in it).
        """
        dtype = self.vae.dtype
        pixels = self._decode(latents, dtype)
        latents_finite, pixels_finite = torch.stack(
            [torch.isfinite(latents).all(), torch.isfinite(pixels).all()]
        ).tolist()
        if not latents_finite:
            raise self._non_finite("denoising", "the denoising produced NaN or infinite latents")
        if pixels_finite:
            return pixels, False
        if dtype == torch.float32:
            raise self._non_finite("VAE decode", "the VAE decoder produced NaN or infinite pixels in float32")
        name = str(dtype).removeprefix("torch.")
        log.warning("stage VAE decode: NaN or infinite pixels in %s; decoding again in float32", name)
        pixels = self._decode_in_float32(latents)
        if not torch.isfinite(pixels).all():
            raise self._non_finite(
                "VAE decode", f"the VAE decoder produced NaN or infinite pixels in {name} and in float32"
            )
        return pixels, True

    def _decode_in_float32(self, latents: torch.Tensor) -> torch.Tensor:
        """`_decode` with the VAE's decoding half (post-quant conv and decoder) cast to float32 for
        this call and back after. In place rather than a float32 copy: the parameters grow by
        half their float16 bytes while it runs (about 100 MB for SD-1.5's decoder) where a copy
        beside them would add twice that, and float16 -> float32 -> float16 is exact, so the
        weights come back bit for bit. Like the fusion, not for two requests at a time (the VAE
        is shared by both model types; the worker runs one job at a time)."""
        parts = [part for part in (self.vae.post_quant_conv, self.vae.decoder) if part is not None]
        dtypes = [next(part.parameters()).dtype for part in parts]
        try:
            for part in parts:
                part.to(torch.float32)
            return self._decode(latents, torch.float32)
        finally:
            for part, dtype in zip(parts, dtypes, strict=True):
                part.to(dtype)

    def _check_latents_finite(self, latents: torch.Tensor) -> None:
        """For `output_type="latent"`: the latents alone (one device sync)."""
        if not torch.isfinite(latents).all():
            raise self._non_finite("denoising", "the denoising produced NaN or infinite latents")

    def _non_finite(self, stage: str, message: str) -> NonFiniteOutputError:
        log.error("non-finite output, stage %s (model %s): %s", stage, self.model_type, message)
        return NonFiniteOutputError(stage, message)

    # -------------------------------------------------------------------------------- validation
    def check_inputs(
        self,
        person: Any,
        garment: Any,
        mask: Any,
        category: Any,
        num_inference_steps: Any,
        image_guidance_scale: Any,
        num_images_per_prompt: Any,
        generator: Any,
        height: Any,
        width: Any,
        output_type: Any,
        callback_on_step_end: Any,
        callback_on_step_end_tensor_inputs: Any,
    ) -> None:
        """Raise ValueError naming the first bad argument."""
        for name, image in (("person", person), ("garment", garment), ("mask", mask)):
            if not isinstance(image, PIL.Image.Image):
                raise ValueError(f"`{name}` must be a PIL image, got {type(image).__name__}")
        if mask.mode != "L":
            raise ValueError(
                f"`mask` must be a PIL image of mode 'L' (255 = repaint), got mode {mask.mode!r}"
            )
        try:
            check_published(self.model_type, category)
        except ValueError as error:
            raise ValueError(f"`category`: {error}") from None
        if not _is_int(num_inference_steps) or not 1 <= num_inference_steps <= MAX_STEPS:
            raise ValueError(
                f"`num_inference_steps` must be an integer in 1..{MAX_STEPS}, got {num_inference_steps!r}"
            )
        if (
            not isinstance(image_guidance_scale, int | float | np.floating)
            or isinstance(image_guidance_scale, bool)
            or not math.isfinite(image_guidance_scale)
            or image_guidance_scale < 0
        ):
            raise ValueError(
                f"`image_guidance_scale` must be a finite number >= 0, got {image_guidance_scale!r}"
            )
        low, high = SAMPLES_RANGE
        if not _is_int(num_images_per_prompt) or not low <= num_images_per_prompt <= high:
            raise ValueError(
                f"`num_images_per_prompt` must be an integer in {low}..{high}, "
                f"got {num_images_per_prompt!r}"
            )
        seed_ok = _is_int(generator) and generator >= 0
        if generator is not None and not isinstance(generator, torch.Generator) and not seed_ok:
            raise ValueError(f"`generator` must be a torch.Generator, a seed >= 0 or None, got {generator!r}")
        for name, side in (("height", height), ("width", width)):
            if not _is_int(side) or not SIZE_MULTIPLE <= side <= MAX_SIDE or side % SIZE_MULTIPLE:
                raise ValueError(
                    f"`{name}` must be a multiple of {SIZE_MULTIPLE} in {SIZE_MULTIPLE}..{MAX_SIDE}, "
                    f"got {side!r}"
                )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError("`callback_on_step_end` must be callable or None")
        unknown = [
            name for name in callback_on_step_end_tensor_inputs if name not in self._callback_tensor_inputs
        ]
        if unknown:
            raise ValueError(
                "`callback_on_step_end_tensor_inputs` must be among "
                f"{self._callback_tensor_inputs}, got {unknown}"
            )

    # -------------------------------------------------------------------------------------- call
    @torch.inference_mode()
    def __call__(
        self,
        person: PIL.Image.Image | Sequence[PIL.Image.Image],
        garment: PIL.Image.Image,
        mask: PIL.Image.Image | Sequence[PIL.Image.Image],
        category: str = "upper_body",
        num_inference_steps: int = DEFAULT_STEPS,
        image_guidance_scale: float = DEFAULT_GUIDANCE,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | int | None = None,
        height: int = MODEL_FRAME.height,
        width: int = MODEL_FRAME.width,
        output_type: str = "pil",
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        garment_image_embeds: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
    ) -> OOTDiffusionPipelineOutput:
        """Dress `person` in `garment` inside `mask` (PIL "L", 255 = repaint).

        `person` and `mask` may be lists of the same length (several people, each with their
        own mask, in one garment): the garment is conditioned once and the people go through
        the try-on UNet together, `people_per_batch(num_images_per_prompt)` at a time (at most
        `MAX_BATCH_ROWS` images per batch). Images come back person by person, each person's
        `num_images_per_prompt` samples in a row.

        `generator`: a torch.Generator (use `torch.Generator("cpu")` for device-independent noise),
        an integer seed, or None for a random seed. With a seed every person gets the noise a
        call for that person alone gets; a generator draws the people's noise one after another.
        `latents`: the initial noise itself (standard normal, one row per image, as
        `initial_noise` draws it), when the caller decides it; `generator` is then unused.
        `callback_on_step_end(pipe, step_index, timestep, callback_kwargs)` runs after every step
        (after the repaint) with the tensors named in `callback_on_step_end_tensor_inputs`, for
        each batch in turn; a returned "latents" replaces the latents.
        Returns `.images`: a list of PIL images, an (N, H, W, 3) float array in [0, 1], or the
        (N, 4, H/8, W/8) latents (scaled as the UNet sees them), by `output_type`.

        As in the published code, a 1-step Karras schedule starts and ends at sigma_max, so
        `num_inference_steps=1` returns the initial noise inside the mask: use 2 or more.

        `garment_image_embeds`: the garment's CLIP embedding from `garment_image_embeds()` at the
        same height and width, when the caller computed it already (no second vision pass).

        Raises `ootd.errors.NonFiniteOutputError` rather than return NaN or infinite values
        (black pixels); `.decoded_in_float32` says when the float32 decode retry was needed.
        """
        # 1. Check inputs
        people = list(person) if isinstance(person, list | tuple) else [person]
        masks = list(mask) if isinstance(mask, list | tuple) else [mask]
        if len(people) != len(masks) or not people:
            raise ValueError(f"`person` and `mask` must be as many (>= 1): {len(people)} and {len(masks)}")
        for one_person, one_mask in zip(people, masks, strict=True):
            self.check_inputs(
                one_person, garment, one_mask, category, num_inference_steps, image_guidance_scale,
                num_images_per_prompt, generator, height, width, output_type, callback_on_step_end,
                callback_on_step_end_tensor_inputs,
            )  # fmt: skip

        # 2. Define call parameters
        if generator is None:
            generator = secrets.randbelow(2**31)
        device = self._execution_device
        dtype = self.unet_vton.dtype
        samples = num_images_per_prompt
        guided = is_guided(image_guidance_scale)

        # 3. Preprocess the pictures as published: stretched to width x height (PIL's default
        # bicubic), the area to repaint of the person filled with gray 127
        size = (width, height)
        people = [to_rgb(image).resize(size, PIL.Image.BICUBIC) for image in people]
        garment = to_rgb(garment).resize(size, PIL.Image.BICUBIC)
        masks = [image if image.size == size else image.resize(size, PIL.Image.NEAREST) for image in masks]

        # 4. Encode the garment (prompt embeddings and latents, or the garment cache's), then
        # each person and mask on their own (the latents a call for that person alone gets)
        cache_key = garment_key(garment, self.model_type, category, guided)
        cached = self.garment_cache.get(cache_key) if self.garment_cache is not None else None
        if cached is not None:
            prompt_embeds, garment_latents = cached.prompt_embeds, cached.garment_latents
        else:
            prompt_embeds = self.encode_prompt(garment, category, garment_image_embeds).to(device, dtype)
            garment_latents = self.encode_image(garment).to(dtype)
        encoded = [self._encode_person(*pair, dtype) for pair in zip(people, masks, strict=True)]

        # 5. The garment rows: [garment ; zero garment] halves with guidance. Repeat with
        # torch.cat, as published: it keeps the VAE output's memory layout, and the convolutions
        # round differently on a layout change (fidelity notes).
        garment_batch = torch.cat([garment_latents], dim=0)
        if guided:
            garment_batch = torch.cat([garment_batch, torch.zeros_like(garment_batch)], dim=0)
        groups = garment_batch.shape[0]

        # 6. Prepare the initial noise: a row per image, person by person
        if latents is None:
            latents = self.initial_noise(len(people), samples, height, width, generator)
        expected = (len(people) * samples, self.unet_vton.config.out_channels, *encoded[0][0].shape[-2:])
        if tuple(latents.shape) != expected:
            raise ValueError(f"`latents` must have shape {expected}, got {tuple(latents.shape)}")
        noise = latents.to(device, dtype) * self.scheduler.init_noise_sigma

        outputs: list[torch.Tensor] = []
        try:
            # 7. Condition the try-on UNet on the garment: the garment UNet pass, or the cached
            # features; either way the try-on blocks' garment keys/values are ready before step 1
            if cached is not None:
                self.fusion.use_features(cached.features)
            else:
                self._encode_garment(cache_key, prompt_embeds, garment_latents, garment_batch, groups)

            # 8. Denoise the people in batches of at most MAX_BATCH_ROWS images
            together = people_per_batch(samples)
            for first in range(0, len(people), together):
                batch = encoded[first : first + together]
                rows = slice(first * samples, (first + len(batch)) * samples)
                denoised = self._denoise(
                    batch, noise[rows], prompt_embeds, samples, guided, image_guidance_scale,
                    num_inference_steps, callback_on_step_end, callback_on_step_end_tensor_inputs,
                )  # fmt: skip
                outputs.append(denoised)
        finally:
            self.fusion.clear()
        latents = torch.cat(outputs)

        # 9. Decode, and refuse NaN or infinite values (one check, one device sync)
        decoded_in_float32 = False
        if output_type == "latent":
            self._check_latents_finite(latents)
            images: Any = latents
        else:
            pixels, decoded_in_float32 = self._decode_finite(latents)
            images = self.vae_image_processor.postprocess(pixels, output_type=output_type)

        # 10. Offload all models
        self.maybe_free_model_hooks()
        return OOTDiffusionPipelineOutput(images=images, decoded_in_float32=decoded_in_float32)

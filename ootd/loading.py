"""Loading the published OOTDiffusion tree into `OOTDiffusionPipeline`s, from local files only.

`load_pipelines` checks that every file is there (naming the missing ones before any model is
built), loads the parts both model types share once (VAE, text encoder, tokenizer, CLIP image
encoder and processor, scheduler config: `load_shared_components`), then each model type's two
UNets (`load_unets`), and refuses a checkpoint whose keys do not match its model. Either form of
the weights loads: the hub's fp32 pickles or the fp16 safetensors of `builder.to_fp16`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel, UniPCMultistepScheduler
from transformers import CLIPImageProcessorPil, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from ootd import layout
from ootd.garment_cache import GarmentCache
from ootd.pipeline import OOTDiffusionPipeline, build_scheduler, resolve_device_dtype

# CLIP's text tower shares the hub file with the vision tower; loading only the vision half
# leaves these keys unused, which is expected and not an error.
CLIP_TEXT_TOWER_PREFIXES: tuple[str, ...] = ("text_model.", "text_projection.", "logit_scale")


@contextmanager
def _quiet_transformers():
    """transformers 5 prints a long table for expected unused keys (the loader checks them itself)
    and a progress bar per model."""
    previous = transformers.logging.get_verbosity()
    bars = transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(previous)
        if bars:
            transformers.logging.enable_progress_bar()


def _raise_on_bad_keys(what: str, info: dict[str, Any], allowed_unexpected: Sequence[str] = ()) -> None:
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(
        k for k in info.get("unexpected_keys") or [] if not k.startswith(tuple(allowed_unexpected))
    )
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or unexpected or mismatched:
        raise RuntimeError(
            f"{what}: checkpoint does not match the model: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)}), "
            f"mismatched {mismatched[:5]} ({len(mismatched)})"
        )


@dataclass
class SharedComponents:
    """The parts both model types use: loaded once, shared by the HD and DC pipelines."""

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    image_encoder: CLIPVisionModelWithProjection
    image_processor: CLIPImageProcessorPil
    scheduler_config: dict[str, Any]


def _check_files(root: Path, model_types: Sequence[str], clip_dir: Path) -> None:
    for model_type in model_types:
        layout.check_model_type(model_type)
    missing = layout.missing_files(root, layout.diffusion_files(tuple(model_types)))
    missing += [str(clip_dir / name) for name in layout.missing_files(clip_dir, layout.CLIP_FOLDER_FILES)]
    if missing:
        raise FileNotFoundError(f"checkpoint tree {root} lacks {len(missing)} files, e.g. {missing[:3]}")


def _is_safetensors(root: Path, listed: str) -> bool:
    """Whether the file standing for `listed` is the converted safetensors form (else the hub's
    pickle). Told to the loaders explicitly, so that they read the file `missing_files` found."""
    present = layout.present_form(root, listed)
    return present is not None and present.suffix == ".safetensors"


def load_shared_components(
    root: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    clip_dir: str | Path | None = None,
) -> SharedComponents:
    """Load VAE (`dtype`), text encoder + CLIP image encoder (float32, as published), tokenizer,
    CLIP image processor and the scheduler config from local files only.

    CLIP is read from `clip_dir` when given (a copy of its own hub repo, e.g. a Hugging Face
    cache snapshot: the OOTD repo does not hold it), else from `root/clip-vit-large-patch14`.
    """
    root = Path(root)
    clip_dir = Path(clip_dir) if clip_dir is not None else root / layout.CLIP_DIR
    device, dtype = resolve_device_dtype(device, dtype)
    # Either form of the weights (layout.CONVERTED_WEIGHTS): the hub's fp32 pickle, or the fp16
    # safetensors of `builder.to_fp16`, whose values are exactly this cast to fp16.
    vae, info = AutoencoderKL.from_pretrained(
        root / layout.VAE_DIR,
        torch_dtype=dtype,
        use_safetensors=_is_safetensors(root, layout.VAE_WEIGHTS),
        local_files_only=True,
        output_loading_info=True,
    )
    _raise_on_bad_keys("vae", info)
    with _quiet_transformers():
        text_encoder, info = CLIPTextModel.from_pretrained(
            root / layout.TEXT_ENCODER_DIR,
            dtype=torch.float32,
            use_safetensors=_is_safetensors(root, layout.TEXT_ENCODER_WEIGHTS),
            local_files_only=True,
            output_loading_info=True,
        )
        _raise_on_bad_keys("text_encoder", info)
        image_encoder, info = CLIPVisionModelWithProjection.from_pretrained(
            clip_dir, dtype=torch.float32, local_files_only=True, output_loading_info=True
        )
        _raise_on_bad_keys("image_encoder", info, allowed_unexpected=CLIP_TEXT_TOWER_PREFIXES)
        # The PIL backend explicitly: its pixel values match the published processor's, and the
        # torchvision one (picked whenever torchvision is installed) is untested for parity.
        image_processor = CLIPImageProcessorPil.from_pretrained(clip_dir, local_files_only=True)
    # Always from the folder: building a transformers-5 CLIPTokenizer from file arguments
    # silently yields a 3-token vocabulary (environment notes).
    tokenizer = CLIPTokenizer.from_pretrained(root / layout.TOKENIZER_DIR, local_files_only=True)
    scheduler_config = dict(
        UniPCMultistepScheduler.load_config(root / layout.SCHEDULER_DIR, local_files_only=True)
    )
    return SharedComponents(
        vae=vae.to(device).eval(),
        text_encoder=text_encoder.to(device).eval(),
        tokenizer=tokenizer,
        image_encoder=image_encoder.to(device).eval(),
        image_processor=image_processor,
        scheduler_config=scheduler_config,
    )


def load_unets(
    root: str | Path,
    model_type: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[UNet2DConditionModel, UNet2DConditionModel]:
    """The garment and try-on UNets of one model type as stock `UNet2DConditionModel`s."""
    root = Path(root)
    device, dtype = resolve_device_dtype(device, dtype)
    unets = []
    for which in ("unet_garm", "unet_vton"):
        unet, info = UNet2DConditionModel.from_pretrained(
            root / layout.unet_dir(model_type, which),
            torch_dtype=dtype,
            use_safetensors=True,
            local_files_only=True,
            output_loading_info=True,
        )
        _raise_on_bad_keys(f"{model_type}/{which}", info)
        unets.append(unet.to(device).eval())
    return unets[0], unets[1]



def load_pipelines(
    root: str | Path,
    model_types: Sequence[str] = layout.MODEL_TYPES,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    clip_dir: str | Path | None = None,
    garment_cache: GarmentCache | None = None,
) -> dict[str, OOTDiffusionPipeline]:
    """One pipeline per model type, sharing one VAE, text encoder, tokenizer, CLIP image encoder
    and processor (loaded once); each gets its own scheduler (it keeps per-run state).

    `clip_dir`: CLIP's own folder when it is not `root/clip-vit-large-patch14`.
    `garment_cache`: one cache for all the pipelines (its key holds the model type), so that
    its byte bound is the whole worker's; None runs without one."""
    root = Path(root)
    clip_dir = Path(clip_dir) if clip_dir is not None else root / layout.CLIP_DIR
    model_types = tuple(model_types)
    if not model_types:
        raise ValueError("`model_types` must name at least one of hd, dc")
    _check_files(root, model_types, clip_dir)
    device, dtype = resolve_device_dtype(device, dtype)
    shared = load_shared_components(root, device, dtype, clip_dir=clip_dir)
    pipelines: dict[str, OOTDiffusionPipeline] = {}
    for model_type in model_types:
        unet_garm, unet_vton = load_unets(root, model_type, device, dtype)
        pipelines[model_type] = OOTDiffusionPipeline(
            vae=shared.vae,
            text_encoder=shared.text_encoder,
            tokenizer=shared.tokenizer,
            image_encoder=shared.image_encoder,
            image_processor=shared.image_processor,
            unet_garm=unet_garm,
            unet_vton=unet_vton,
            scheduler=build_scheduler(shared.scheduler_config),
            model_type=model_type,
        )
        pipelines[model_type].garment_cache = garment_cache
    return pipelines

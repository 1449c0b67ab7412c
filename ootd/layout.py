"""Where each part of the published OOTDiffusion checkpoints lies, relative to the root.

The root is the published `checkpoints/` folder of the hub repo `levihsu/OOTDiffusion`
with `clip-vit-large-patch14/` (hub repo `openai/clip-vit-large-patch14`) beside `ootd/`.
The loader, the tiny-checkpoint writer and the Docker weight builder all read these names
from here so that they can never disagree. The model types are `core.vocabulary`'s.
"""

from pathlib import Path

from core.vocabulary import MODEL_TYPES, check_model_type

# The hub repos the published weights come from: the checkpoints root is the `checkpoints/`
# folder of the OOTD repo; the CLIP image encoder's files sit at the root of its own repo.
OOTD_REPO = "levihsu/OOTDiffusion"
OOTD_REPO_FOLDER = "checkpoints"
CLIP_REPO = "openai/clip-vit-large-patch14"

__all__ = ["MODEL_TYPES", "check_model_type"]  # re-exported: the folder names are the model types
CHECKPOINT_STEP = "checkpoint-36000"

OOTD_DIR = "ootd"
VAE_DIR = f"{OOTD_DIR}/vae"
TEXT_ENCODER_DIR = f"{OOTD_DIR}/text_encoder"
TOKENIZER_DIR = f"{OOTD_DIR}/tokenizer"
SCHEDULER_DIR = f"{OOTD_DIR}/scheduler"
CLIP_DIR = "clip-vit-large-patch14"

# The weights files as the hub publishes them (fp32): pickles for the VAE and the text encoder,
# safetensors for the UNets. `builder.to_fp16` rewrites the first two as safetensors (the names
# diffusers and transformers read) and the UNets in place under the same name.
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
VAE_WEIGHTS = f"{VAE_DIR}/diffusion_pytorch_model.bin"
TEXT_ENCODER_WEIGHTS = f"{TEXT_ENCODER_DIR}/pytorch_model.bin"
# Hub form -> converted form, for the files whose name changes. The file lists below name the
# hub form (what the download plan fetches); the loaders and `missing_files` accept either.
CONVERTED_WEIGHTS: dict[str, str] = {
    VAE_WEIGHTS: f"{VAE_DIR}/diffusion_pytorch_model.safetensors",
    TEXT_ENCODER_WEIGHTS: f"{TEXT_ENCODER_DIR}/model.safetensors",
}

# Files of the shared (model-type independent) parts that the loader reads.
SHARED_FILES: tuple[str, ...] = (
    f"{VAE_DIR}/config.json",
    VAE_WEIGHTS,
    f"{TEXT_ENCODER_DIR}/config.json",
    TEXT_ENCODER_WEIGHTS,
    f"{TOKENIZER_DIR}/vocab.json",
    f"{TOKENIZER_DIR}/merges.txt",
    f"{TOKENIZER_DIR}/special_tokens_map.json",
    f"{TOKENIZER_DIR}/tokenizer_config.json",
    f"{SCHEDULER_DIR}/scheduler_config.json",
)

# Files of the CLIP image encoder (hub repo openai/clip-vit-large-patch14, which also holds
# .bin/.h5/.msgpack copies of the same weights: only the safetensors file is needed).
CLIP_FILES: tuple[str, ...] = (
    f"{CLIP_DIR}/config.json",
    f"{CLIP_DIR}/model.safetensors",
    f"{CLIP_DIR}/preprocessor_config.json",
)
# The same files relative to the CLIP folder itself (a copy of the CLIP repo's root).
CLIP_FOLDER_FILES: tuple[str, ...] = tuple(name.removeprefix(f"{CLIP_DIR}/") for name in CLIP_FILES)


def unet_dir(model_type: str, which: str) -> str:
    """Relative folder of one UNet: `which` is "unet_garm" or "unet_vton"."""
    check_model_type(model_type)
    if which not in ("unet_garm", "unet_vton"):
        raise ValueError(f"which must be 'unet_garm' or 'unet_vton', not {which!r}")
    return f"{OOTD_DIR}/ootd_{model_type}/{CHECKPOINT_STEP}/{which}"


def unet_files(model_type: str) -> tuple[str, ...]:
    """The four files of one model type's two UNets."""
    return tuple(
        f"{unet_dir(model_type, which)}/{name}"
        for which in ("unet_garm", "unet_vton")
        for name in ("config.json", UNET_WEIGHTS)
    )


def ootd_files(model_types: tuple[str, ...] | list[str] = MODEL_TYPES) -> tuple[str, ...]:
    """Every file the diffusion loader needs for the given model types."""
    files = list(SHARED_FILES) + list(CLIP_FILES)
    for model_type in model_types:
        files.extend(unet_files(model_type))
    return tuple(files)


def diffusion_files(model_types: tuple[str, ...] | list[str] = MODEL_TYPES) -> tuple[str, ...]:
    """`ootd_files` without CLIP's: the part that comes from the OOTD repo (CLIP may sit apart)."""
    return tuple(name for name in ootd_files(model_types) if name not in CLIP_FILES)


def accepted_forms(name: str) -> tuple[str, ...]:
    """The files that satisfy the listed file `name`: its converted form first (the one the
    loaders prefer when both are present), then the hub form."""
    converted = CONVERTED_WEIGHTS.get(name)
    return (name,) if converted is None else (converted, name)


def present_form(root: str | Path, name: str) -> Path | None:
    """The file under `root` that stands for the listed file `name`, or None if neither form is there."""
    root = Path(root)
    return next((root / form for form in accepted_forms(name) if (root / form).is_file()), None)


def missing_files(root: str | Path, files: tuple[str, ...] | list[str]) -> list[str]:
    """The entries of `files` present under `root` in neither accepted form (empty when complete)."""
    return [name for name in files if present_form(root, name) is None]

"""Tiny, randomly initialised OOTDiffusion checkpoints in the exact published layout.

The published weights are about 15 GB and cannot be fetched on development or CI machines, so
every test, the demo and the benchmarks run on this tree instead. It has the same folders, file
names, file formats (fp32 `.bin` where the hub has `.bin`, safetensors where it has safetensors)
and config classes as `levihsu/OOTDiffusion` + `openai/clip-vit-large-patch14`; only the widths
are tiny. The UNets keep the SD-1.5 block layout, so the fusion sees exactly 16 transformer blocks.

Random initialisation leaves LayerNorm/GroupNorm weights at 1 and most biases at 0, which would
hide bugs such as normalising garment tokens with the wrong UNet's `norm1`. Every norm and bias is
therefore perturbed.

`python -m tiny_checkpoints.diffusion OUT_DIR [--seed N]` writes the diffusion part only;
`python -m tiny_checkpoints` also writes the preprocessing networks.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

from ootd import layout

# Widths of the tiny models. The text hidden size, the CLIP projection and the UNets'
# cross-attention width must agree (768 in the published models).
HIDDEN = 32
UNET_BLOCKS = (32, 64, 64, 64)  # SD-1.5: (320, 640, 1280, 1280)
# Heads per resolution level (diffusers' legacy `attention_head_dim` means heads). SD-1.5 has 8
# everywhere; at the top level the tiny model keeps 2 (still multi-head) because CPU attention over
# [person ; garment] tokens at 768x1024 with 4-wide heads costs ~5x more than with 16-wide ones.
UNET_HEADS = (2, 8, 8, 8)
VAE_BLOCKS = (8, 16, 16, 16)  # SD-1.5: (128, 256, 512, 512)

# The DC prompt words of the published code; the tiny BPE splits them as CLIP's does.
DC_WORD_PIECES: tuple[tuple[str, ...], ...] = (
    ("u", "p", "p", "e", "r"),
    ("l", "o", "w", "e", "r"),
    ("b", "o", "d", "y</w>"),
    ("d", "r", "e", "s", "s</w>"),
)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# The published ootd/scheduler/scheduler_config.json: a DPMSolverMultistep config that the
# published code turns into UniPC (see ootd.pipeline.build_scheduler).
SCHEDULER_CONFIG: dict = {
    "_class_name": "DPMSolverMultistepScheduler",
    "_diffusers_version": "0.20.0.dev0",
    "algorithm_type": "dpmsolver++",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "dynamic_thresholding_ratio": 0.995,
    "lambda_min_clipped": float("-inf"),
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "solver_order": 2,
    "solver_type": "midpoint",
    "steps_offset": 1,
    "thresholding": False,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": True,
    "variance_type": None,
}

# CLIP preprocessing as published (both the SD feature_extractor and clip-vit-large-patch14 use it).
CLIP_PREPROCESSOR_CONFIG: dict = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}

MODEL_INDEX: dict = {
    "_class_name": "OotdPipeline",
    "_diffusers_version": "0.24.0.dev0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "requires_safety_checker": True,
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet_garm": ["pipelines_ootd.unet_garm_2d_condition", "UNetGarm2DConditionModel"],
    "unet_vton": ["pipelines_ootd.unet_vton_2d_condition", "UNetVton2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

UNET_CLASS_NAMES = {"unet_garm": "UNetGarm2DConditionModel", "unet_vton": "UNetVton2DConditionModel"}


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte-level BPE alphabet: printable bytes map to themselves, the rest above U+0100."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    table: dict[int, str] = {}
    shifted = 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


def build_tokenizer_files() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A small CLIP BPE vocabulary: every byte (with and without `</w>`), the merges that make
    `upperbody` -> `upper` + `body`, `lowerbody` -> `lower` + `body`, `dress` -> `dress`, then the
    two special tokens. Ids are contiguous (a gap or duplicate breaks transformers 5's tokenizer)."""
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [char + "</w>" for char in alphabet]
    merges: list[tuple[str, str]] = []
    for pieces in DC_WORD_PIECES:
        merged = pieces[0]
        for piece in pieces[1:]:
            merges.append((merged, piece))
            merged += piece
            if merged not in tokens:
                tokens.append(merged)
    tokens += [BOS, EOS]
    return {token: index for index, token in enumerate(tokens)}, merges


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG for module construction without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Make norms and biases non-trivial so that a wrong norm or a dropped bias changes outputs."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm | torch.nn.GroupNorm) and module.weight is not None:
            module.weight.add_(0.3 * torch.randn(module.weight.shape, generator=generator))
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.nn.Parameter):
            bias.add_(0.1 * torch.randn(bias.shape, generator=generator))


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _tiny_unet(in_channels: int, seed: int) -> UNet2DConditionModel:
    """An SD-1.5-shaped UNet (3 cross-attention down blocks, a cross-attention mid block, 3
    cross-attention up blocks, 2 layers each: 16 transformer blocks) at tiny width."""
    with _seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=in_channels,
            out_channels=4,
            down_block_types=(
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=UNET_BLOCKS,
            layers_per_block=2,
            attention_head_dim=UNET_HEADS,
            cross_attention_dim=HIDDEN,
            norm_num_groups=32,
        )
    _perturb(unet, seed + 1)
    return unet


def save_unet(unet: UNet2DConditionModel, root: Path, model_type: str, which: str) -> None:
    """Write one UNet as the hub holds it: fp32 safetensors and the published class name."""
    folder = Path(root) / layout.unet_dir(model_type, which)
    unet.save_pretrained(folder, safe_serialization=True)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["_class_name"] = UNET_CLASS_NAMES[which]
    config["_diffusers_version"] = "0.24.0.dev0"
    _write_json(config_path, config)


def _write_unets(root: Path, model_type: str, seed: int) -> None:
    for offset, (which, in_channels) in enumerate((("unet_garm", 4), ("unet_vton", 8))):
        save_unet(_tiny_unet(in_channels, seed + 10 * offset), root, model_type, which)


def _write_vae(root: Path, seed: int) -> None:
    with _seeded(seed):
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=VAE_BLOCKS,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=512,
            scaling_factor=0.18215,
        )
    _perturb(vae, seed + 1)
    save_vae(vae, root)


def save_vae(vae: AutoencoderKL, root: Path) -> None:
    """Write the VAE as the hub holds it: an fp32 pickle (`.bin`), no safetensors."""
    folder = Path(root) / layout.VAE_DIR
    vae.save_config(folder)
    torch.save(vae.state_dict(), folder / "diffusion_pytorch_model.bin")


def _text_config_kwargs(vocab: dict[str, int]) -> dict:
    return {
        "vocab_size": len(vocab),
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "bos_token_id": vocab[BOS],
        "eos_token_id": vocab[EOS],
        "pad_token_id": vocab[EOS],
        "projection_dim": HIDDEN,
    }


def _write_text_parts(root: Path, seed: int) -> None:
    vocab, merges = build_tokenizer_files()
    tokenizer_dir = root / layout.TOKENIZER_DIR
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (tokenizer_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges), encoding="utf-8"
    )
    specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    _write_json(tokenizer_dir / "special_tokens_map.json", specials)
    _write_json(
        tokenizer_dir / "tokenizer_config.json",
        {
            **specials,
            "add_prefix_space": False,
            "do_lower_case": True,
            "errors": "replace",
            "model_max_length": 77,
            "tokenizer_class": "CLIPTokenizer",
        },
    )
    with _seeded(seed):
        text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config_kwargs(vocab)))
    _perturb(text_encoder, seed + 1)
    save_text_encoder(text_encoder, root)


def save_text_encoder(text_encoder: CLIPTextModel, root: Path) -> None:
    """Write the text encoder as the hub holds it (see below); the tokenizer is written apart."""
    folder = Path(root) / layout.TEXT_ENCODER_DIR
    text_encoder.config.architectures = ["CLIPTextModel"]
    text_encoder.config.save_pretrained(folder)
    # The hub holds an fp32 pickle here, not safetensors, written by transformers 4: its keys
    # carry the `text_model.` prefix and the then-persistent `position_ids` buffer, which
    # transformers 5 maps and drops on load. Write the same so the loader meets the real naming.
    state = {f"text_model.{name}": tensor for name, tensor in text_encoder.state_dict().items()}
    state["text_model.embeddings.position_ids"] = torch.arange(
        text_encoder.config.max_position_embeddings
    ).unsqueeze(0)
    torch.save(state, folder / "pytorch_model.bin")


def _write_clip(root: Path, seed: int) -> None:
    """The whole CLIP model (text + vision towers) as on the hub; the loader keeps the vision half."""
    vocab, _ = build_tokenizer_files()
    config = CLIPConfig(
        text_config=_text_config_kwargs(vocab),
        vision_config={
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 224,
            "patch_size": 32,
            "projection_dim": HIDDEN,
        },
        projection_dim=HIDDEN,
    )
    with _seeded(seed):
        model = CLIPModel(config)
    _perturb(model, seed + 1)
    save_clip(model, root)


def save_clip(model: CLIPModel, root: Path) -> None:
    """Write the whole CLIP model (both towers, safetensors) and its preprocessor config."""
    folder = Path(root) / layout.CLIP_DIR
    model.save_pretrained(folder, safe_serialization=True)
    _write_json(folder / "preprocessor_config.json", CLIP_PREPROCESSOR_CONFIG)


def write_tiny_ootd_checkpoints(root: Path, seed: int = 0) -> None:
    """Write every file of `layout.ootd_files()` under `root`, deterministically from `seed`."""
    root = Path(root)
    ootd_dir = root / layout.OOTD_DIR
    _write_json(ootd_dir / "model_index.json", MODEL_INDEX)
    _write_json(ootd_dir / "feature_extractor" / "preprocessor_config.json", CLIP_PREPROCESSOR_CONFIG)
    _write_json(root / layout.SCHEDULER_DIR / "scheduler_config.json", SCHEDULER_CONFIG)
    _write_vae(root, seed * 1000 + 1)
    _write_text_parts(root, seed * 1000 + 2)
    _write_clip(root, seed * 1000 + 3)
    for index, model_type in enumerate(layout.MODEL_TYPES):
        _write_unets(root, model_type, seed * 1000 + 100 * (index + 1))
    missing = layout.missing_files(root, layout.ootd_files())
    if missing:
        raise RuntimeError(f"tiny checkpoint writer left out {missing}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the tiny OOTDiffusion diffusion checkpoints.")
    parser.add_argument("out_dir", help="folder to write (the published checkpoints/ layout)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    start = time.perf_counter()
    write_tiny_ootd_checkpoints(Path(args.out_dir), seed=args.seed)
    print(f"wrote tiny OOTDiffusion checkpoints to {args.out_dir} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

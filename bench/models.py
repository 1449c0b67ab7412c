"""The published networks at their full sizes with random weights, in the published file layout.

The GPU benchmark must measure the worker's real work without downloading 15 GB, so it builds
every network from the published architecture: the SD-1.5 UNet (garment UNet with 4 input
channels, try-on UNet with 8; cross-attention width 768), the SD VAE, CLIP ViT-L/14 (both towers,
as the hub file holds them) and SD-1.5's text encoder, the OpenPose body network and the two
SCHP-shaped parsing graphs. Random weights cost the same arithmetic as the real ones. The files
are written by the same savers as the tiny tree (`tiny_checkpoints.diffusion`), so the production
loaders read them exactly as they read the published tree.

Three sizes of tree share that layout (`SIZES`): `tiny` (the test suite's, `tiny_checkpoints`),
`full` (the published widths) and `mid`: the published architectures with the UNets and the VAE
at half their channel widths (a quarter of their arithmetic) and everything else at full size,
so that CPU benchmarks see the real proportions of preprocessing, CLIP and diffusion within a
job in minutes rather than hours. `python -m bench.models --size mid DIR` writes one to reuse.

The tokenizer is the tiny one of `tiny_checkpoints.diffusion`: its ids lie inside CLIP's
49408-token vocabulary, and the prompts are 2-3 tokens long whatever the vocabulary, so the text
encoder does the same work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

from preprocess.labels import ATR_NUM_CLASSES, LIP_NUM_CLASSES
from preprocess.layout import BODY_POSE, PARSING_ATR, PARSING_LIP
from tiny_checkpoints.diffusion import (
    BOS,
    EOS,
    build_tokenizer_files,
    save_clip,
    save_text_encoder,
    save_unet,
    save_vae,
)

HOUSE_PHOTO = Path(__file__).resolve().parent.parent / "assets" / "models" / "0_astronaut.png"
"""The bundled house model photo (`person_index` 0): the person every benchmark dresses."""

UNET_IN_CHANNELS: dict[str, int] = {"unet_garm": 4, "unet_vton": 8}
"""The garment UNet sees the garment latent; the try-on UNet the noisy latent + the masked person."""

# stable-diffusion-v1-5 unet/config.json (OOTDiffusion's UNets keep it, only in_channels differ).
SD15_UNET: dict = {
    "sample_size": 64,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "norm_num_groups": 32,
}

# stable-diffusion-v1-5 vae/config.json
SD15_VAE: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

# openai/clip-vit-large-patch14: its text tower is also SD-1.5's text encoder.
CLIP_L14_TEXT: dict = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
CLIP_L14_VISION: dict = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}

SIZES: tuple[str, ...] = ("tiny", "mid", "full")
"""Tree sizes, smallest first: see the module docstring."""

_HALF = {"block_out_channels": tuple(width // 2 for width in SD15_UNET["block_out_channels"])}
UNET_CONFIGS: dict[str, dict] = {"mid": {**SD15_UNET, **_HALF}, "full": SD15_UNET}
VAE_CONFIGS: dict[str, dict] = {
    "mid": {**SD15_VAE, "block_out_channels": tuple(w // 2 for w in SD15_VAE["block_out_channels"])},
    "full": SD15_VAE,
}
"""UNet and VAE configs of the sizes this module builds (`tiny` is `tiny_checkpoints`' own)."""

PARSING_GRAPHS: tuple[tuple[str, int, int], ...] = (
    (PARSING_ATR, ATR_NUM_CLASSES, 512),
    (PARSING_LIP, LIP_NUM_CLASSES, 473),
)
"""(file, classes, square input side) of the two published SCHP exports."""


def text_config() -> CLIPTextConfig:
    """SD-1.5's text encoder, with the special-token ids of the tiny tokenizer it is fed by."""
    vocab, _ = build_tokenizer_files()
    ids = {"bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS], "pad_token_id": vocab[EOS]}
    return CLIPTextConfig(**CLIP_L14_TEXT, **ids)


def clip_config() -> CLIPConfig:
    """The whole CLIP ViT-L/14 (the hub file holds both towers; the loader keeps the vision one)."""
    return CLIPConfig(text_config=text_config().to_dict(), vision_config=CLIP_L14_VISION, projection_dim=768)


def unet(which: str, size: str = "full") -> UNet2DConditionModel:
    """One UNet of `size` with diffusers' default (random) initialisation, on torch's current device."""
    return UNet2DConditionModel(in_channels=UNET_IN_CHANNELS[which], **UNET_CONFIGS[size])


def unet_like(folder: Path) -> UNet2DConditionModel:
    """A random UNet with the architecture of the one saved in `folder` (any size)."""
    return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder))


def write_ootd(
    root: Path,
    model_type: str,
    size: str = "full",
    device: torch.device | str = "cpu",
    fp16: bool = False,
) -> None:
    """Overwrite the VAE, text encoder, CLIP and `model_type`'s two UNets under `root` (a tree
    written by `tiny_checkpoints.diffusion`, which supplies the tokenizer, scheduler and configs)
    with randomly initialised networks of `size` ("mid" or "full") in the hub's formats. One
    network at a time is in memory; each is built on `device` (initialising 0.9 G parameters takes
    a fraction of a second on a GPU, tens of seconds on two CPU cores) and saved from the CPU.

    `fp16`: the UNets and the VAE are saved in float16 (`FP16_GROUPS`, what `builder.to_fp16`
    casts), half the bytes to move and write; `write_tree` then finishes the converted form."""
    root = Path(root)

    def saved(model: torch.nn.Module) -> torch.nn.Module:
        # `half()`, not diffusers' `to(dtype)`, which warns about modules to keep in fp32 (none here).
        return (model.half() if fp16 else model).to("cpu")

    for which in UNET_IN_CHANNELS:
        with torch.device(device):
            model = unet(which, size)
        save_unet(saved(model), root, model_type, which)
        del model
    with torch.device(device):
        vae = AutoencoderKL(**VAE_CONFIGS[size])
    save_vae(saved(vae), root)
    del vae
    with torch.device(device):
        text_encoder = CLIPTextModel(text_config())
    save_text_encoder(text_encoder.to("cpu"), root)
    del text_encoder
    with torch.device(device):
        clip = CLIPModel(clip_config())
    save_clip(clip.to("cpu"), root)
    del clip


def write_full_preprocess(root: Path) -> None:
    """The OpenPose body network (published widths) and both parsing graphs (SCHP-shaped,
    exported to ONNX) at their published paths under `root`, which must hold the tiny tree.

    Both are random except for what makes them report one fixed person: the pose network's
    painted channels (`tiny_checkpoints.pose`) and the parsing graphs' logit prior (what the tiny
    graphs read in the house photo, `person_label_maps`). Purely random ones find nobody, and a
    job would end at the pose or mask step instead of running the diffusion and the caches being
    measured."""
    from bench.bench_preprocess_parsing import export
    from tiny_checkpoints.pose import person_body_pose_state_dict, published_weight_shapes

    root = Path(root)
    pose = root / BODY_POSE
    pose.parent.mkdir(parents=True, exist_ok=True)
    state = person_body_pose_state_dict(seed=0, shapes=published_weight_shapes())
    torch.save({key: value.contiguous() for key, value in state.items()}, pose)
    priors = person_label_maps(root)
    for seed, (name, classes, side) in enumerate(PARSING_GRAPHS):
        export(root / name, classes, side, seed=seed, prior=priors[name])


def person_label_maps(root: Path) -> dict[str, np.ndarray]:
    """What the tiny parsing graphs under `root` read in the house photo (per published file, at
    the network's output size): the full-size graphs report it for every image, so that the
    benchmarks' jobs find clothes where the (person-reporting) pose network puts the body."""
    import onnxruntime as ort

    from preprocess.parsing import FUSION_OUTPUT, INPUT_NAME, PARSE_SIZE, network_input, person_box_affine
    from preprocess.preprocessor import parse_input

    rgb = np.asarray(parse_input(Image.open(HOUSE_PHOTO).convert("RGB")))
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    maps = {}
    for name, _, side in PARSING_GRAPHS:
        session = ort.InferenceSession(str(root / name), providers=["CPUExecutionProvider"])
        feed = {INPUT_NAME: network_input(bgr, person_box_affine(*PARSE_SIZE, side))}
        maps[name] = np.argmax(session.run(None, feed)[FUSION_OUTPUT][0], axis=0)
    return maps


def write_tree(
    root: Path,
    size: str,
    model_types: tuple[str, ...] = ("hd",),
    device: torch.device | str = "cpu",
    fp16: bool = False,
) -> Path:
    """A whole checkpoint tree of `size` under `root`, in the published layout: the tiny tree
    first (tokenizer, scheduler, configs, and every network at `tiny`), then for `mid` and `full`
    the diffusion networks of `model_types` and the preprocessing networks replaced. Returns `root`.
    Model types not named keep their tiny UNets (loadable, but not of this size).

    `fp16`: the tree in the form the image ships (`builder.to_fp16`'s), written directly rather
    than as fp32 files converted afterwards: see `write_diffusion`."""
    from tiny_checkpoints import write_tiny_checkpoints

    check_size(size)
    root = Path(root)
    write_tiny_checkpoints(root)
    write_diffusion(root, size, model_types, device, fp16, tiny_written=True)
    if size != "tiny":
        write_full_preprocess(root)
    return root


def write_diffusion(
    root: Path,
    size: str,
    model_types: tuple[str, ...] = ("hd",),
    device: torch.device | str = "cpu",
    fp16: bool = False,
    tiny_written: bool = False,
) -> Path:
    """The diffusion part of a `size` tree under `root` (the preprocessing networks are left as
    they are): `tiny_checkpoints.diffusion`'s files, then `model_types`' networks of `size`.

    `fp16`: the UNets and the VAE are written in float16, and `builder.to_fp16.convert_tree`
    then renames the pickles (VAE, text encoder) into the safetensors the loaders prefer; the
    UNets it finds already converted. The result is the converted tree, file for file and dtype
    for dtype, without writing and reading back the fp32 bytes (the loaders accept either form).
    `tiny_written`: the tiny tree is already there (`write_tree` wrote it)."""
    from builder.to_fp16 import convert_tree
    from tiny_checkpoints.diffusion import write_tiny_ootd_checkpoints

    check_size(size)
    root = Path(root)
    if not tiny_written:
        write_tiny_ootd_checkpoints(root)
    if size != "tiny":
        for model_type in model_types:
            write_ootd(root, model_type, size, device, fp16=fp16)
    if fp16:
        convert_tree(root)
    return root


def check_size(size: str) -> None:
    """Refuse a tree size this module cannot build, before anything is written."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, not {size!r}")


def _numel(module: torch.nn.Module) -> int:
    return sum(tensor.numel() for tensor in module.state_dict().values())


def parameter_counts(size: str = "full") -> dict[str, int]:
    """Stored values per published file group of a `size` tree ("mid" or "full"), counted on the
    `meta` device (no memory, no time).

    Keys: unet_garm, unet_vton, vae, text_encoder, clip (both towers, as on the hub), pose,
    parsing (both graphs).
    """
    from bench.bench_preprocess_parsing import SchpLike
    from preprocess.pose import BodyPoseNet
    from tiny_checkpoints.pose import published_weight_shapes

    with torch.device("meta"):
        counts = {which: _numel(unet(which, size)) for which in UNET_IN_CHANNELS}
        counts["vae"] = _numel(AutoencoderKL(**VAE_CONFIGS[size]))
        counts["text_encoder"] = _numel(CLIPTextModel(text_config()))
        counts["clip"] = _numel(CLIPModel(clip_config()))
        shapes = {name: torch.Size(shape) for name, shape in published_weight_shapes().items()}
        counts["pose"] = _numel(BodyPoseNet(shapes))
        # ONNX folds batch norm into the convolutions: count the parameters, not the BN statistics.
        counts["parsing"] = sum(
            sum(p.numel() for p in SchpLike(classes).parameters()) for _, classes, _ in PARSING_GRAPHS
        )
    return counts


FP16_GROUPS: tuple[str, ...] = ("unet_garm", "unet_vton", "vae")
"""What `builder.to_fp16` casts to fp16 (the text encoder only changes format; CLIP and the
preprocessing networks stay as published); a test holds the two together."""


def weight_bytes(counts: dict[str, int], model_types: tuple[str, ...]) -> dict[str, int]:
    """Bytes of the weights the worker reads for `model_types`, all fp32 vs after the fp16 step."""
    groups = {"vae": 1, "text_encoder": 1, "clip": 1, "pose": 1, "parsing": 1}
    groups["unet_garm"] = groups["unet_vton"] = len(model_types)
    fp32 = sum(4 * counts[name] * n for name, n in groups.items())
    fp16 = sum((2 if name in FP16_GROUPS else 4) * counts[name] * n for name, n in groups.items())
    return {"fp32": fp32, "fp16": fp16}


def main() -> None:
    import argparse

    from core.vocabulary import parse_model_types

    parser = argparse.ArgumentParser(description="Write a random checkpoint tree in the published layout.")
    parser.add_argument("out", type=Path, help="folder to write (created)")
    parser.add_argument("--size", choices=SIZES, default="mid")
    parser.add_argument("--model-types", default="hd", help="whose UNets get the size (e.g. hd or hd,dc)")
    parser.add_argument("--fp16", action="store_true", help="builder.to_fp16's form (as the image ships)")
    args = parser.parse_args()
    root = write_tree(args.out, args.size, parse_model_types(args.model_types), fp16=args.fp16)
    written = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    print(f"{args.size} tree in {root}: {written / 1e9:.2f} GB")


if __name__ == "__main__":
    main()

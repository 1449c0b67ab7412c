"""Rewrite a downloaded checkpoints tree in place so that it loads fast and reads half the bytes.

    python -m builder.to_fp16 /weights

The hub publishes every diffusion weight in fp32 (about 15 GB with CLIP), and the VAE and text
encoder as pickles. On CUDA the worker runs the UNets and the VAE in fp16 anyway, casting at
every start. This writes what that cast gives, once, at build time:

- the four UNets (hd/dc x garm/vton) and the VAE: fp16 safetensors (`diffusion_pytorch_model.safetensors`);
- the text encoder: safetensors (`model.safetensors`) in its own dtype, fp32, because the loader
  runs it in fp32 as the published code did;
- CLIP and the preprocessing networks: untouched.

Round-to-nearest fp32 -> fp16 is what `Tensor.half()` and the loaders' `torch_dtype=float16`
cast both do, so loading the converted files in fp16 gives bit for bit the weights that loading
the fp32 files in fp16 gives. (Loading them in fp32, on CPU, gives the fp16-rounded values:
the CPU reference runs want the fp32 tree.)

Each file is written to a temporary name and renamed into place, and the replaced pickle is
removed only after that, so an interrupted run leaves a loadable tree and a re-run finishes the
job. A tree that is already converted is left alone, and a partial tree (an image that bakes
only CLIP, or only the HD model) converts what it holds. Which files exist and what they are
called comes from `ootd.layout`; this module imports nothing else of the project, so the image
build can run it next to `builder.fetch_weights`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ootd.layout import (
    MODEL_TYPES,
    TEXT_ENCODER_WEIGHTS,
    UNET_WEIGHTS,
    VAE_WEIGHTS,
    accepted_forms,
    present_form,
    unet_dir,
)

logger = logging.getLogger("builder.to_fp16")

# safetensors' own names for the floating dtypes a weights file may hold.
_FLOAT_CODES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_CODES = {torch.float16: "F16", torch.float32: "F32"}


@dataclass(frozen=True)
class Part:
    """One weights file of the tree: its hub name (as listed in `ootd.layout`) and the dtype its
    floating tensors get (None: keep theirs)."""

    listed: str
    dtype: torch.dtype | None

    @property
    def target(self) -> str:
        """Where the converted file lives (the form the loaders prefer)."""
        return accepted_forms(self.listed)[0]


def parts() -> list[Part]:
    """Every weights file the conversion handles, in a fixed order."""
    unets = [
        Part(f"{unet_dir(model_type, which)}/{UNET_WEIGHTS}", torch.float16)
        for model_type in MODEL_TYPES
        for which in ("unet_garm", "unet_vton")
    ]
    return [*unets, Part(VAE_WEIGHTS, torch.float16), Part(TEXT_ENCODER_WEIGHTS, None)]


@dataclass(frozen=True)
class FileResult:
    """What happened to one part: `converted` (written now) or `unchanged` (already done)."""

    name: str  # the converted file, relative to the root
    action: str
    bytes_before: int  # every form present before (both, after an interrupted run)
    bytes_after: int


@dataclass
class ConversionReport:
    """The parts found under `root` and their sizes before and after."""

    root: Path
    files: list[FileResult] = field(default_factory=list)

    @property
    def bytes_before(self) -> int:
        return sum(item.bytes_before for item in self.files)

    @property
    def bytes_after(self) -> int:
        return sum(item.bytes_after for item in self.files)

    @property
    def converted(self) -> list[str]:
        return [item.name for item in self.files if item.action == "converted"]


def safetensors_dtypes(path: Path) -> set[str]:
    """The dtype codes ("F32", "F16", "I64", ...) in a safetensors file, from its header only."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return {entry["dtype"] for name, entry in header.items() if name != "__metadata__"}


def _is_done(path: Path, dtype: torch.dtype | None) -> bool:
    """True when `path` is a safetensors file whose floating tensors already have `dtype`."""
    if path.suffix != ".safetensors":
        return False
    if dtype is None:
        return True
    return safetensors_dtypes(path) & _FLOAT_CODES <= {_CODES[dtype]}


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """A floating tensor in `dtype` (integer buffers such as `position_ids` keep theirs), in its
    own contiguous storage, which safetensors requires."""
    if dtype is not None and tensor.is_floating_point():
        return tensor.to(dtype).contiguous()
    return tensor.clone().contiguous()


def read_converted(path: Path, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Every tensor of a weights file, cast one at a time from a memory map, so that the peak is
    the converted size plus one tensor rather than both whole files."""
    if path.suffix == ".safetensors":
        with safe_open(path, framework="pt") as handle:
            return {name: _cast(handle.get_tensor(name), dtype) for name in handle.keys()}  # noqa: SIM118
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a pre-zip (legacy) pickle cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    return {name: _cast(tensor, dtype) for name, tensor in state.items()}


def _write_atomically(tensors: dict[str, torch.Tensor], target: Path) -> None:
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, temporary, metadata={"format": "pt"})
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def convert_part(root: Path, part: Part) -> FileResult | None:
    """Convert one part under `root` (None when the tree does not hold it)."""
    source = present_form(root, part.listed)
    if source is None:
        return None
    forms = [root / form for form in accepted_forms(part.listed) if (root / form).is_file()]
    before = sum(path.stat().st_size for path in forms)
    target = root / part.target
    action = "unchanged"
    if not (source == target and _is_done(target, part.dtype)):
        tensors = read_converted(source, part.dtype)
        _write_atomically(tensors, target)
        del tensors
        action = "converted"
    for path in forms:  # the pickle it replaces, once the converted file is in place
        if path != target:
            path.unlink()
            action = "converted"
    return FileResult(part.target, action, before, target.stat().st_size)


def convert_tree(root: str | Path) -> ConversionReport:
    """Convert, in place, every part of `ootd.layout` found under `root`; see the module docstring.

    Idempotent: on a converted tree every result is `unchanged` and no file is written.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoints root {root} is not a folder")
    report = ConversionReport(root)
    for part in parts():
        result = convert_part(root, part)
        if result is not None:
            report.files.append(result)
            logger.info("%s: %s, %.1f MB -> %.1f MB", result.name, result.action, result.bytes_before / 1e6,
                        result.bytes_after / 1e6)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m builder.to_fp16", description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="checkpoints root to convert in place (e.g. /weights)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
    try:
        report = convert_tree(args.root)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not report.files:
        logger.info("no UNet, VAE or text encoder weights under %s: nothing to convert", args.root)
        return 0
    logger.info("weights: %d bytes before, %d bytes after (%.2f GB -> %.2f GB); %d files converted",
                report.bytes_before, report.bytes_after, report.bytes_before / 1e9, report.bytes_after / 1e9,
                len(report.converted))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which files to fetch from which hub repo, and where each lands under the checkpoints root.

The lists come from `ootd.layout` and `preprocess.layout`, the same ones the loaders read,
so the image can never be built without a file the worker needs, nor with extra copies of
the same weights (the CLIP repo also holds .bin/.h5/.msgpack variants; the OOTD repo holds
both model types and older preprocessing checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass

from ootd.layout import (
    CLIP_DIR,
    CLIP_FILES,
    CLIP_REPO,
    OOTD_REPO,
    OOTD_REPO_FOLDER,
    ootd_files,
)
from preprocess.layout import PREPROCESS_FILES

# What an image bakes (build argument BAKE_WEIGHTS): "all" = every file the worker loads for its
# model types; "clip" = only the CLIP image encoder, for endpoints that take the OOTD checkpoints
# (the UNets, VAE, text encoder and preprocessing networks) from RunPod's cached model
# `levihsu/OOTDiffusion`, which does not hold CLIP; "none" = nothing (all weights from outside).
BAKE_CHOICES: tuple[str, ...] = ("all", "clip", "none")


@dataclass(frozen=True)
class HubFile:
    """One file to download: where it is on the hub and where it goes under the root."""

    repo_id: str
    filename: str  # path inside the hub repo
    dest: str  # path relative to the checkpoints root
    revision: str = "main"


def required_files(model_types: tuple[str, ...]) -> tuple[str, ...]:
    """Every file (relative to the checkpoints root) the worker loads for these model types."""
    return ootd_files(model_types) + PREPROCESS_FILES


def check_bake(bake: str) -> str:
    """Return `bake` if it is one of BAKE_CHOICES, else raise ValueError naming it."""
    if bake not in BAKE_CHOICES:
        raise ValueError(f"bake must be one of {', '.join(BAKE_CHOICES)}, not {bake!r}")
    return bake


def baked_files(model_types: tuple[str, ...], bake: str = "all") -> tuple[str, ...]:
    """The files (relative to the checkpoints root) an image bakes for this BAKE_WEIGHTS choice."""
    check_bake(bake)
    if bake == "all":
        return required_files(model_types)
    return CLIP_FILES if bake == "clip" else ()


def weight_plan(
    model_types: tuple[str, ...], ootd_revision: str = "main", clip_revision: str = "main", bake: str = "all"
) -> list[HubFile]:
    """The downloads that produce exactly `baked_files(model_types, bake)`."""
    plan = []
    for dest in baked_files(model_types, bake):
        if dest.startswith(f"{CLIP_DIR}/"):
            plan.append(HubFile(CLIP_REPO, dest.removeprefix(f"{CLIP_DIR}/"), dest, clip_revision))
        else:
            plan.append(HubFile(OOTD_REPO, f"{OOTD_REPO_FOLDER}/{dest}", dest, ootd_revision))
    return plan

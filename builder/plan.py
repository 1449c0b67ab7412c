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
    CLIP_REPO,
    MODEL_TYPES,
    OOTD_REPO,
    OOTD_REPO_FOLDER,
    check_model_type,
    ootd_files,
)
from preprocess.layout import PREPROCESS_FILES


@dataclass(frozen=True)
class HubFile:
    """One file to download: where it is on the hub and where it goes under the root."""

    repo_id: str
    filename: str  # path inside the hub repo
    dest: str  # path relative to the checkpoints root
    revision: str = "main"


def parse_model_types(text: str) -> tuple[str, ...]:
    """`"hd,dc"` -> `("hd", "dc")`; raises ValueError naming an unknown type or an empty list."""
    names = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    if not names:
        raise ValueError(f"no model type given; choose from {', '.join(MODEL_TYPES)}")
    return tuple(check_model_type(name) for name in names)


def required_files(model_types: tuple[str, ...]) -> tuple[str, ...]:
    """Every file (relative to the checkpoints root) the worker loads for these model types."""
    return ootd_files(model_types) + PREPROCESS_FILES


def weight_plan(
    model_types: tuple[str, ...], ootd_revision: str = "main", clip_revision: str = "main"
) -> list[HubFile]:
    """The downloads that produce exactly `required_files(model_types)`."""
    plan = []
    for dest in required_files(model_types):
        if dest.startswith(f"{CLIP_DIR}/"):
            plan.append(HubFile(CLIP_REPO, dest.removeprefix(f"{CLIP_DIR}/"), dest, clip_revision))
        else:
            plan.append(HubFile(OOTD_REPO, f"{OOTD_REPO_FOLDER}/{dest}", dest, ootd_revision))
    return plan

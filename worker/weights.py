"""Where each part of the weights is read from: an explicit folder, the image, or RunPod's model cache.

A worker can get its weights three ways: `CHECKPOINTS_DIR` names a complete checkpoints tree
(a local run, a network volume); the Docker image bakes all of them, only CLIP, or none into
`/weights`; or the endpoint caches the hub repo `levihsu/OOTDiffusion`, which RunPod mounts in
the Hugging Face cache layout before the worker starts. The three parts are located one by one
(the diffusion weights, the CLIP image encoder, the preprocessing networks) because a slim image
bakes only CLIP, which the OOTD repo does not hold, and takes the rest from the cache.

Order per part: an explicit `CHECKPOINTS_DIR` is the only place looked (an operator who names a
folder means it); otherwise the baked folder when it is complete for that part, then the cache.
Only file existence is checked here (symlinks into the cache's `blobs/` must resolve); nothing is
downloaded, and when a part is complete nowhere one error names every place that was looked in.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from huggingface_hub.file_download import repo_folder_name

from ootd.layout import (
    CLIP_DIR,
    CLIP_FILES,
    CLIP_FOLDER_FILES,
    CLIP_REPO,
    OOTD_REPO,
    OOTD_REPO_FOLDER,
    diffusion_files,
    missing_files,
)
from preprocess.layout import PREPROCESS_FILES
from worker.config import Settings

DIFFUSION = "OOTD diffusion weights"
CLIP = "CLIP image encoder"
PREPROCESSING = "preprocessing networks"

EXPLICIT = "CHECKPOINTS_DIR"
BAKED = "baked weights"
CACHE = "model cache"

SHOWN_MISSING = 3  # missing file names quoted per place; the rest are counted
TINY_TREE_WRITER = "tiny_checkpoints"  # the checkout's package that writes the tiny test tree


class WeightsMissingError(RuntimeError):
    """No complete copy of some part of the weights anywhere (raised at start-up, never per job)."""


@dataclass(frozen=True)
class Place:
    """A folder that may hold weights, and why it cannot be read at all (empty when it can)."""

    source: str  # EXPLICIT, BAKED or CACHE: how the operator put it there
    path: Path
    problem: str = ""

    def __str__(self) -> str:
        return f"{EXPLICIT}={self.path}" if self.source == EXPLICIT else f"{self.source} {self.path}"


@dataclass(frozen=True)
class Found:
    """Where one part will be loaded from."""

    part: str
    source: str
    folder: Path


@dataclass(frozen=True)
class WeightSources:
    """The folder each part is loaded from: give `diffusion` and `clip` to `load_pipelines`."""

    diffusion: Found
    clip: Found
    preprocessing: Found

    def describe(self) -> list[str]:
        """One line per part for the start-up log: which source, which folder."""
        return [f"{found.part} from {found.source}: {found.folder}" for found in self.parts()]

    def parts(self) -> tuple[Found, Found, Found]:
        """The three parts in loading order."""
        return (self.diffusion, self.clip, self.preprocessing)


@dataclass(frozen=True)
class _Candidate:
    place: Place
    files: tuple[str, ...]  # what the part needs, relative to place.path
    folder: Path  # what the loader gets


def cached_snapshots(cache: Path, repo_id: str) -> list[Place]:
    """The snapshot folders of `repo_id` in a Hugging Face hub cache that may hold its files.

    With `refs/main` present only its snapshot counts (what Hugging Face itself would load);
    without it every snapshot is a candidate, in name order. A repo that is not cached at all
    comes back as one Place with its problem set, so the error can say where it looked.
    """
    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    if not repo.is_dir():
        return [Place(CACHE, repo, f"({repo_id}) is not cached")]
    ref = repo / "refs" / "main"
    if ref.is_file():
        return [Place(CACHE, repo / "snapshots" / ref.read_text().strip())]
    snapshots = sorted(path for path in (repo / "snapshots").glob("*") if path.is_dir())
    return [Place(CACHE, path) for path in snapshots] or [Place(CACHE, repo, "has no snapshot")]


def locate_weights(settings: Settings) -> WeightSources:
    """Choose the folder of each part (see the module docstring), or raise WeightsMissingError."""
    if settings.checkpoints_dir is not None:
        roots = [Place(EXPLICIT, settings.checkpoints_dir)]
        clip_snapshots: list[Place] = []
    else:
        roots = [Place(BAKED, settings.baked_weights_dir)]
        for snapshot in cached_snapshots(settings.hf_hub_cache, OOTD_REPO):
            roots.append(
                snapshot if snapshot.problem else replace(snapshot, path=snapshot.path / OOTD_REPO_FOLDER)
            )
        clip_snapshots = cached_snapshots(settings.hf_hub_cache, CLIP_REPO)

    diffusion = tuple(diffusion_files(settings.model_types))
    wanted = {
        DIFFUSION: [_Candidate(root, diffusion, root.path) for root in roots],
        # CLIP beside the checkpoints in a baked or explicit tree, or in its own cached repo (the
        # OOTD repo does not hold it, so its snapshot is not a place to look for CLIP).
        CLIP: [_Candidate(root, CLIP_FILES, root.path / CLIP_DIR) for root in roots if root.source != CACHE]
        + [_Candidate(snapshot, CLIP_FOLDER_FILES, snapshot.path) for snapshot in clip_snapshots],
        PREPROCESSING: [_Candidate(root, PREPROCESS_FILES, root.path) for root in roots],
    }
    found: dict[str, Found] = {}
    tried: dict[Place, list[str]] = {}  # for the parts found nowhere: each place -> what it lacks
    for part, candidates in wanted.items():
        failures: list[tuple[Place, list[str]]] = []
        for candidate in candidates:
            place = candidate.place
            if not place.problem and not place.path.is_dir():
                place = replace(place, problem="does not exist")
            missing = [] if place.problem else missing_files(place.path, candidate.files)
            if not place.problem and not missing:
                found[part] = Found(part, place.source, candidate.folder)
                break
            failures.append((place, missing))
        else:
            for place, missing in failures:
                lacks = tried.setdefault(place, [])
                lacks += [name for name in missing if name not in lacks]
    lacking = [part for part in wanted if part not in found]
    if lacking:
        raise WeightsMissingError(
            _missing_message(lacking, tried, explicit=settings.checkpoints_dir is not None)
        )
    return WeightSources(found[DIFFUSION], found[CLIP], found[PREPROCESSING])


def _missing_message(lacking: Sequence[str], tried: dict[Place, list[str]], *, explicit: bool) -> str:
    """What each place looked in lacks (for the parts complete nowhere), then how to provide them."""
    findings = []
    for place, missing in tried.items():
        if place.problem:
            findings.append(f"{place} {place.problem}")
        else:
            shown = ", ".join(missing[:SHOWN_MISSING])
            more = f" and {len(missing) - SHOWN_MISSING} more" if len(missing) > SHOWN_MISSING else ""
            findings.append(f"{place} lacks {len(missing)} file(s) the worker needs: {shown}{more}")
    if explicit:
        advice = (
            f"Point {EXPLICIT} at the published checkpoints folder (with {CLIP_DIR}/ inside), or unset it "
            "to use the weights baked into the image or RunPod's model cache"
        )
    else:
        advice = (
            f"Cache the hub repo {OOTD_REPO} on the endpoint (model field) with an image that bakes CLIP, "
            f"use an image with every weight baked in, or set {EXPLICIT}"
        )
    message = f"{'; '.join(findings)}. No complete copy of the {', '.join(lacking)}. {advice}."
    if tiny_tree_writer_present():
        message += (
            " For a local run, write the tiny test tree with `python -m tiny_checkpoints tiny-checkpoints` "
            f"and set {EXPLICIT}=tiny-checkpoints."
        )
    return message


def tiny_tree_writer_present() -> bool:
    """Whether `python -m tiny_checkpoints` would run here: in a checkout, not in the image, which
    leaves the test tree's writer out (advice names only what exists where it is given)."""
    try:
        return importlib.util.find_spec(TINY_TREE_WRITER) is not None
    except (ImportError, ValueError):
        return False

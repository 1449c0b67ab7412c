"""Lay a checkpoint tree out as RunPod's model cache holds it: the Hugging Face hub cache.

RunPod mounts a cached model as the hub writes its cache (`models--ORG--NAME/refs/main` holds the
revision, `snapshots/<revision>/...` are relative symlinks into `blobs/<sha256>`). The OOTD repo
keeps the published tree under `checkpoints/` and does not hold CLIP, which is a repo of its own.
Used by the weights tests and by `scripts/image-check.sh` (mounted into the image read-only).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from huggingface_hub.file_download import repo_folder_name

from ootd.layout import CLIP_DIR, CLIP_REPO, OOTD_REPO, OOTD_REPO_FOLDER

# Made-up revisions, recognisable in paths and logs.
OOTD_REVISION = "1" * 40
CLIP_REVISION = "2" * 40


def cache_repo(cache: Path, repo_id: str, files: dict[str, Path], revision: str, *, ref: bool = True) -> Path:
    """Lay `files` (path in the repo -> source file) out as the hub cache does; return the snapshot."""
    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshot = repo / "snapshots" / revision
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return snapshot


def tree_files(root: Path) -> dict[str, Path]:
    """Every file under `root`, by its posix path relative to `root`."""
    return {path.relative_to(root).as_posix(): path for path in sorted(root.rglob("*")) if path.is_file()}


def write_hub_cache(cache: Path, tree: Path, *, clip: bool = True, ref: bool = True) -> Path:
    """Cache the OOTD repo (`tree` without CLIP, under its `checkpoints/`) and, if `clip`, the CLIP repo."""
    files = tree_files(tree)
    ootd = {
        f"{OOTD_REPO_FOLDER}/{name}": path for name, path in files.items() if not name.startswith(CLIP_DIR)
    }
    cache_repo(cache, OOTD_REPO, ootd, OOTD_REVISION, ref=ref)
    if clip:
        clip_files = {
            name.removeprefix(f"{CLIP_DIR}/"): path
            for name, path in files.items()
            if name.startswith(CLIP_DIR)
        }
        cache_repo(cache, CLIP_REPO, clip_files, CLIP_REVISION, ref=ref)
    return cache

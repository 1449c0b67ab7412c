"""The models, loaded once per worker process and shared by every job.

Loading takes seconds on the tiny checkpoints and tens of seconds on the real 15 GB ones, so
it happens once, at cold start (`handler.py` calls `get_runtime` before it starts the RunPod
loop) or, when the handler is imported by a test, on the first job. Files are read from
`CHECKPOINTS_DIR` only; nothing is downloaded, and a missing file is reported by name before
any model is built.
"""

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ootd.layout import missing_files, ootd_files
from preprocess.layout import PREPROCESS_FILES
from worker.config import Settings
from worker.threads import container_cpus

log = logging.getLogger(__name__)

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class WeightsMissingError(RuntimeError):
    """The checkpoint folder lacks files the worker needs (raised at start-up, never per job)."""


@dataclass
class Runtime:
    """Everything a job needs that is expensive to build: the pipelines and the preprocessor."""

    pipelines: Mapping[str, Any]
    preprocessor: Any
    load_seconds: float

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(self.pipelines)


def load_runtime(settings: Settings) -> Runtime:
    """Check the checkpoint tree, then load the pipelines (sharing VAE, text, CLIP) and the preprocessor."""
    root = settings.checkpoints_dir
    missing = missing_files(root, list(ootd_files(settings.model_types)) + list(PREPROCESS_FILES))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise WeightsMissingError(
            f"CHECKPOINTS_DIR={root} lacks {len(missing)} file(s) the worker needs: {shown}. "
            "Point CHECKPOINTS_DIR at the published checkpoints folder (the Docker image bakes it in at "
            "/weights), or for a local run write the tiny test tree with "
            "`python -m tiny_checkpoints tiny-checkpoints` and set CHECKPOINTS_DIR=tiny-checkpoints."
        )
    from ootd import load_pipelines
    from preprocess import Preprocessor

    start = time.perf_counter()
    pipelines = load_pipelines(root, model_types=settings.model_types)
    preprocessor = Preprocessor.from_checkpoints(root, threads=container_cpus())
    seconds = time.perf_counter() - start
    log.info("loaded models %s and the preprocessor from %s in %.1f s", ",".join(pipelines), root, seconds)
    return Runtime(pipelines=pipelines, preprocessor=preprocessor, load_seconds=seconds)


_lock = threading.Lock()
_runtimes: dict[tuple[Path, tuple[str, ...]], Runtime] = {}


def get_runtime(settings: Settings) -> Runtime:
    """The process-wide runtime for these checkpoints and model types, loaded on first use."""
    key = (settings.checkpoints_dir.resolve(), settings.model_types)
    with _lock:
        if key not in _runtimes:
            _runtimes[key] = load_runtime(settings)
        return _runtimes[key]


def house_model_photos(folder: Path) -> list[Path]:
    """The house model photos that `person_index` counts, in sorted file-name order."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in PHOTO_SUFFIXES)

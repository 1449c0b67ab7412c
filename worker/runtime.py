"""The models, loaded once per worker process and shared by every job.

Loading takes seconds on the tiny checkpoints and tens of seconds on the real 15 GB ones, so
it happens once, at cold start (`handler.py` calls `get_runtime` before it starts the RunPod
loop) or, when the handler is imported by a test, on the first job. `worker.weights` picks the
folder of each part (CHECKPOINTS_DIR, the baked weights, RunPod's model cache); nothing is
downloaded, and missing files are reported by name before any model is built.
"""

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ootd.garment_cache import GarmentCache
from worker.config import MB, Settings
from worker.house_masks import HouseMaskCache
from worker.threads import container_cpus
from worker.weights import WeightsMissingError, locate_weights

__all__ = ["Runtime", "WeightsMissingError", "get_runtime", "house_model_photos", "load_runtime"]

log = logging.getLogger(__name__)

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class Runtime:
    """Everything a job needs that is expensive to build: the pipelines and the preprocessor,
    and what jobs leave behind for later ones: the garment and house-mask caches."""

    pipelines: Mapping[str, Any]
    preprocessor: Any
    load_seconds: float
    classifier: Any = None  # `ootd.classify.GarmentClassifier` for category "auto"; None: refused
    garment_cache: GarmentCache = field(default_factory=GarmentCache)
    house_masks: HouseMaskCache = field(default_factory=HouseMaskCache)

    def configure_caches(self, settings: Settings) -> None:
        """Apply the cache bounds of `settings` (read per job, like every setting)."""
        self.garment_cache.resize(settings.garment_cache_mb * MB)
        self.house_masks.resize(settings.house_mask_cache_mb * MB)

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(self.pipelines)


def load_runtime(settings: Settings) -> Runtime:
    """Find each part of the weights, then load the pipelines (sharing VAE, text, CLIP) and preprocessor."""
    sources = locate_weights(settings)
    for line in sources.describe():
        log.info("weights: %s", line)
    from ootd import load_pipelines
    from ootd.classify import GarmentClassifier
    from preprocess import Preprocessor

    start = time.perf_counter()
    garment_cache = GarmentCache(settings.garment_cache_mb * MB)
    pipelines = load_pipelines(
        sources.diffusion.folder,
        model_types=settings.model_types,
        clip_dir=sources.clip.folder,
        garment_cache=garment_cache,
    )
    for pipeline in pipelines.values():
        # Progress goes to RunPod's progress_update (worker.job); a tqdm bar would only fill the log.
        pipeline.set_progress_bar_config(disable=True)
    if settings.compile:
        from ootd.compile import compile_pipeline

        for pipeline in pipelines.values():
            # Compiles lazily: the warm-up (or a shape's first job) pays.
            compile_pipeline(pipeline, extra_resolutions=settings.extra_resolutions)
    preprocessor = Preprocessor.from_checkpoints(
        sources.preprocessing.folder, threads=container_cpus(), parsing_device=settings.parsing_device
    )
    # The category prompts are embedded once, here; CLIP's text tower is not kept afterwards.
    shared = next(iter(pipelines.values()))
    classifier = GarmentClassifier.from_clip(sources.clip.folder, shared.tokenizer, device=shared.device)
    seconds = time.perf_counter() - start
    log.info("loaded models %s and the preprocessor in %.1f s", ",".join(pipelines), seconds)
    return Runtime(
        pipelines=pipelines,
        preprocessor=preprocessor,
        load_seconds=seconds,
        garment_cache=garment_cache,
        house_masks=HouseMaskCache(settings.house_mask_cache_mb * MB),
        classifier=classifier,
    )


_lock = threading.Lock()
_runtimes: dict[tuple, Runtime] = {}


def get_runtime(settings: Settings) -> Runtime:
    """The process-wide runtime for these weight settings, model types, parsing device and
    compile setting, loaded on first use.

    Keyed by the settings, not by the folders found, so that a job costs no file-system look-up.
    """
    key = (
        settings.checkpoints_dir.resolve() if settings.checkpoints_dir else None,
        settings.baked_weights_dir,
        settings.hf_hub_cache,
        settings.model_types,
        settings.parsing_device,
        settings.compile,
    )
    with _lock:
        if key not in _runtimes:
            _runtimes[key] = load_runtime(settings)
        return _runtimes[key]


def house_model_photos(folder: Path) -> list[Path]:
    """The house model photos that `person_index` counts, in sorted file-name order."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in PHOTO_SUFFIXES)

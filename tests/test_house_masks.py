"""The house-model mask cache through the job, on the tiny checkpoints: a repeated house-model job
runs no pose or parsing network and returns the same bytes; other model types, categories, fits
and resolutions get their own entries; 0 disables it; PRECOMPUTE_HOUSE_MASKS fills it at start-up
under the key a default job looks up."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from worker_support import data_uri

from worker.config import DEFAULT_MODEL_IMAGES_DIR, Settings
from worker.job import handle
from worker.runtime import Runtime, get_runtime
from worker.startup import start

GARMENT = Path(__file__).resolve().parent.parent / "assets" / "garments" / "0_tshirt.png"
SMALL = {"person_index": 0, "resolution": "256x192", "steps": 2, "seed": 5, "guidance_scale": 1.0}


@pytest.fixture(scope="module")
def settings(tiny_root: Path) -> Settings:
    return Settings(checkpoints_dir=tiny_root, extra_resolutions=("256x192",), allow_cpu=True, warmup=False)


@pytest.fixture
def runtime(settings: Settings) -> Runtime:
    runtime = get_runtime(settings)
    runtime.house_masks.clear()
    return runtime


@pytest.fixture(scope="module")
def garment() -> str:
    return data_uri(GARMENT.read_bytes())


@contextmanager
def pose_calls(runtime: Runtime) -> Iterator[list[int]]:
    """Counts the pose network's forward passes (parsing only ever runs after pose)."""
    calls: list[int] = []
    handle_ = runtime.preprocessor.pose.net.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        yield calls
    finally:
        handle_.remove()


def job(runtime: Runtime, settings: Settings, **fields) -> dict:
    result = handle({"id": "house", "input": fields}, runtime, settings, progress=lambda update: None)
    assert "error" not in result, result
    return result


def pictures(result: dict) -> list[bytes]:
    return [base64.b64decode(entry["base64"]) for entry in [*result["images"], result["mask"]]]


def test_a_repeated_house_model_job_skips_pose_and_parsing_and_returns_the_same_bytes(
    runtime, settings, garment
) -> None:
    request = {**SMALL, "garment": garment, "return_mask": True, "model_type": "dc", "category": "dress"}
    with pose_calls(runtime) as calls:
        first = job(runtime, settings, **request)
        assert len(calls) == 1 and len(runtime.house_masks) == 1
        second = job(runtime, settings, **request)
        assert len(calls) == 1, "the repeated job ran the pose network"
    assert pictures(second) == pictures(first)
    # A repeated job with other samples and seed reuses the mask too.
    with pose_calls(runtime) as calls:
        job(runtime, settings, **{**request, "seed": 6, "samples": 2})
    assert not calls and runtime.house_masks.hits == 2


def test_model_type_category_fit_and_resolution_each_have_their_own_entry(runtime, settings, garment) -> None:
    requests = [
        {"model_type": "hd", "category": "upper_body"},
        {"model_type": "dc", "category": "upper_body"},
        {"model_type": "dc", "category": "lower_body"},
        {"model_type": "dc", "category": "lower_body", "fit": "stretch"},
        {"model_type": "dc", "category": "lower_body", "fit": "stretch", "resolution": "512x384"},
    ]
    with pose_calls(runtime) as calls:
        for number, fields in enumerate(requests, start=1):
            job(runtime, settings, **{**SMALL, "garment": garment, "steps": 1, **fields})
            assert len(calls) == number, f"{fields} reused another request's mask"
    assert len(runtime.house_masks) == len(requests)


def test_a_zero_megabyte_cache_computes_every_time(runtime, settings, garment) -> None:
    settings = replace(settings, house_mask_cache_mb=0)
    with pose_calls(runtime) as calls:
        for _ in range(2):
            job(runtime, settings, **{**SMALL, "garment": garment, "steps": 1})
    assert len(calls) == 2 and len(runtime.house_masks) == 0


def test_precompute_fills_the_cache_under_the_key_a_default_job_uses(settings, garment, tmp_path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    photo = sorted(DEFAULT_MODEL_IMAGES_DIR.iterdir())[0]
    shutil.copy(photo, folder / photo.name)
    settings = replace(settings, model_images_dir=folder, precompute_house_masks=True)
    get_runtime(settings).house_masks.clear()
    runtime = start(settings)
    # HD takes only upper_body; DC takes all three categories.
    assert len(runtime.house_masks) == 4
    with pose_calls(runtime) as calls:
        # Default fit and resolution (1024x768): only the diffusion is made cheap.
        job(runtime, settings, person_index=0, garment=garment, model_type="dc", category="lower_body",
            steps=1, guidance_scale=1.0)  # fmt: skip
    assert not calls

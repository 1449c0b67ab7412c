"""Finding the weights: CHECKPOINTS_DIR, the image's baked folder, and RunPod's model cache.

The tiny checkpoint tree is laid out as RunPod lays out a cached model, which is the Hugging
Face hub cache (`models--ORG--NAME/refs/main` holds the revision, `snapshots/<revision>/...`
are relative symlinks into `blobs/`), and as a slim image bakes it (only CLIP under the baked
folder). A job is then served through `handler.handler` from that layout with no
CHECKPOINTS_DIR, and the precedence rules and the error are checked on the real folders.
"""

import logging
import shutil
from pathlib import Path

import pytest
from worker_support import data_uri

import handler
from ootd.layout import CLIP_DIR, CLIP_FILES, CLIP_REPO, OOTD_REPO, OOTD_REPO_FOLDER
from preprocess.layout import PREPROCESS_FILES
from tiny_checkpoints.hub_cache import CLIP_REVISION, OOTD_REVISION, tree_files, write_hub_cache
from worker.config import RUNPOD_HF_HUB_CACHE, Settings
from worker.weights import (
    BAKED,
    CACHE,
    CLIP,
    DIFFUSION,
    EXPLICIT,
    PREPROCESSING,
    WeightsMissingError,
    locate_weights,
)

GARMENT_PNG = Path(handler.__file__).parent / "assets" / "garments" / "0_tshirt.png"


def ootd_snapshot(cache: Path) -> Path:
    return cache / "models--levihsu--OOTDiffusion" / "snapshots" / OOTD_REVISION / OOTD_REPO_FOLDER


def clip_snapshot(cache: Path) -> Path:
    return cache / "models--openai--clip-vit-large-patch14" / "snapshots" / CLIP_REVISION


@pytest.fixture(scope="module")
def full_cache(tiny_root, tmp_path_factory) -> Path:
    """Both repos cached, as an endpoint caching levihsu/OOTDiffusion plus CLIP would hold them."""
    return write_hub_cache(tmp_path_factory.mktemp("hf-cache"), tiny_root)


@pytest.fixture(scope="module")
def slim_image(tiny_root, tmp_path_factory) -> tuple[Path, Path]:
    """(baked folder with only CLIP, cache with only the OOTD repo): the slim image on a cached endpoint."""
    base = tmp_path_factory.mktemp("slim")
    baked = base / "weights"
    shutil.copytree(tiny_root / CLIP_DIR, baked / CLIP_DIR)
    return baked, write_hub_cache(base / "cache", tiny_root, clip=False)


def sources(settings: Settings) -> dict[str, tuple[str, Path]]:
    return {found.part: (found.source, found.folder) for found in locate_weights(settings).parts()}


def test_a_job_is_served_from_the_model_cache_without_checkpoints_dir(
    full_cache, tmp_path, monkeypatch, caplog
) -> None:
    # Both repos cached, nothing baked: CLIP loads from a folder of its own (its cached snapshot).
    monkeypatch.delenv("CHECKPOINTS_DIR", raising=False)
    monkeypatch.setenv("BAKED_WEIGHTS_DIR", str(tmp_path / "nothing-baked"))
    monkeypatch.setenv("HF_HUB_CACHE", str(full_cache))
    monkeypatch.setenv("OOTD_MODEL_TYPES", "dc")
    monkeypatch.setenv("EXTRA_RESOLUTIONS", "256x192")
    caplog.set_level(logging.INFO, logger="worker.runtime")
    job = {"person_index": 0, "garment": data_uri(GARMENT_PNG.read_bytes()), "model_type": "dc",
           "category": "lower_body", "steps": 2, "resolution": "256x192", "seed": 7}  # fmt: skip
    result = handler.handler({"id": "cached", "input": job})
    assert "error" not in result, result.get("error")
    assert len(result["images"]) == 1 and result["images"][0]["base64"]

    found = {
        DIFFUSION: (CACHE, ootd_snapshot(full_cache)),
        CLIP: (CACHE, clip_snapshot(full_cache)),
        PREPROCESSING: (CACHE, ootd_snapshot(full_cache)),
    }
    assert sources(Settings.from_env()) == found
    for part, (source, folder) in found.items():  # the start-up log names each part's source
        assert f"{part} from {source}: {folder}" in caplog.text


def test_a_slim_image_takes_clip_from_its_baked_folder_and_the_rest_from_the_cache(slim_image) -> None:
    baked, cache = slim_image
    assert sources(Settings(baked_weights_dir=baked, hf_hub_cache=cache)) == {
        DIFFUSION: (CACHE, ootd_snapshot(cache)),
        CLIP: (BAKED, baked / CLIP_DIR),
        PREPROCESSING: (CACHE, ootd_snapshot(cache)),
    }


def test_checkpoints_dir_wins_over_baked_weights_and_cache(tiny_root, full_cache) -> None:
    settings = Settings(
        checkpoints_dir=tiny_root, baked_weights_dir=tiny_root.parent, hf_hub_cache=full_cache
    )
    assert sources(settings) == {
        DIFFUSION: (EXPLICIT, tiny_root),
        CLIP: (EXPLICIT, tiny_root / CLIP_DIR),
        PREPROCESSING: (EXPLICIT, tiny_root),
    }


def test_an_incomplete_checkpoints_dir_is_an_error_even_with_a_complete_cache(full_cache, tmp_path) -> None:
    # An explicit folder is meant: no silent fall-back to other weights.
    (tmp_path / "ootd").mkdir()
    with pytest.raises(WeightsMissingError) as caught:
        locate_weights(Settings(checkpoints_dir=tmp_path, hf_hub_cache=full_cache))
    message = str(caught.value)
    assert message.startswith(f"CHECKPOINTS_DIR={tmp_path} lacks ")
    assert str(full_cache) not in message
    assert f"No complete copy of the {DIFFUSION}, {CLIP}, {PREPROCESSING}." in message


def test_complete_baked_weights_win_over_the_cache(tiny_root, full_cache) -> None:
    settings = Settings(baked_weights_dir=tiny_root, hf_hub_cache=full_cache)
    assert sources(settings) == {
        DIFFUSION: (BAKED, tiny_root),
        CLIP: (BAKED, tiny_root / CLIP_DIR),
        PREPROCESSING: (BAKED, tiny_root),
    }


def test_each_part_falls_back_to_the_cache_on_its_own(tiny_root, full_cache, tmp_path) -> None:
    # Baked: the diffusion weights of `hd` only and CLIP, no preprocessing networks.
    baked = tmp_path / "weights"
    for name, path in tree_files(tiny_root).items():
        if not name.startswith(("humanparsing/", "openpose/", "ootd/ootd_dc/")):
            (baked / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, baked / name)
    hd = Settings(baked_weights_dir=baked, hf_hub_cache=full_cache, model_types=("hd",))
    assert sources(hd) == {
        DIFFUSION: (BAKED, baked),
        CLIP: (BAKED, baked / CLIP_DIR),
        PREPROCESSING: (CACHE, ootd_snapshot(full_cache)),
    }
    # Complete "for that part" depends on the model types: dc is not baked, so it all comes from the cache.
    both = Settings(baked_weights_dir=baked, hf_hub_cache=full_cache, model_types=("hd", "dc"))
    assert sources(both)[DIFFUSION] == (CACHE, ootd_snapshot(full_cache))


def test_without_refs_main_the_cached_snapshot_is_still_found(tiny_root, tmp_path) -> None:
    cache = write_hub_cache(tmp_path / "cache", tiny_root, ref=False)
    settings = Settings(baked_weights_dir=tmp_path / "none", hf_hub_cache=cache)
    assert sources(settings)[DIFFUSION] == (CACHE, ootd_snapshot(cache))
    assert sources(settings)[CLIP] == (CACHE, clip_snapshot(cache))


def test_nothing_complete_anywhere_is_one_error_naming_every_place(tiny_root, tmp_path) -> None:
    baked = tmp_path / "weights"
    baked.mkdir()
    cache = write_hub_cache(tmp_path / "cache", tiny_root, clip=False)
    # An interrupted download: one blob of the cached snapshot is gone, its symlink dangles.
    missing_blob = ootd_snapshot(cache) / "openpose" / "ckpts" / "body_pose_model.pth"
    missing_blob.resolve().unlink()
    with pytest.raises(WeightsMissingError) as caught:
        locate_weights(Settings(baked_weights_dir=baked, hf_hub_cache=cache))
    message = str(caught.value)
    # Only the parts found nowhere are reported: the diffusion weights came from the cache.
    lacked = len(CLIP_FILES) + len(PREPROCESS_FILES)
    assert f"baked weights {baked} lacks {lacked} file(s) the worker needs: {CLIP_FILES[0]}, " in message
    assert "ootd/" not in message
    lost = missing_blob.relative_to(ootd_snapshot(cache)).as_posix()
    assert f"model cache {ootd_snapshot(cache)} lacks 1 file(s) the worker needs: {lost}" in message
    clip_repo = cache / "models--openai--clip-vit-large-patch14"
    assert f"model cache {clip_repo} ({CLIP_REPO}) is not cached" in message
    assert f"No complete copy of the {CLIP}, {PREPROCESSING}." in message
    assert "python -m tiny_checkpoints" in message
    # Nothing at all: the places are named too, briefly.
    with pytest.raises(WeightsMissingError) as caught:
        locate_weights(Settings(baked_weights_dir=tmp_path / "absent", hf_hub_cache=tmp_path / "empty"))
    message = str(caught.value)
    assert f"baked weights {tmp_path / 'absent'} does not exist" in message
    assert f"({OOTD_REPO}) is not cached" in message and f"({CLIP_REPO}) is not cached" in message
    assert f"No complete copy of the {DIFFUSION}, {CLIP}, {PREPROCESSING}." in message


def test_weight_settings_from_the_environment(tmp_path) -> None:
    default = Settings.from_env({})
    assert default.checkpoints_dir is None
    assert default.baked_weights_dir == Path("/weights")
    assert default.hf_hub_cache == Path(RUNPOD_HF_HUB_CACHE) == Path("/runpod-volume/huggingface-cache/hub")
    assert Settings.from_env({"CHECKPOINTS_DIR": "  "}).checkpoints_dir is None  # blank is unset
    env = {"CHECKPOINTS_DIR": str(tmp_path), "BAKED_WEIGHTS_DIR": "/baked", "HF_HUB_CACHE": "/hf"}
    settings = Settings.from_env(env)
    assert (settings.checkpoints_dir, settings.baked_weights_dir, settings.hf_hub_cache) == (
        tmp_path,
        Path("/baked"),
        Path("/hf"),
    )

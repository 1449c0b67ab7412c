"""Catalogs (`person_index` / `person` as a list): one garment on several people in one job,
through the real handler on the tiny checkpoints, with three house photos of its own.

What is counted, not timed: the garment UNet passes (one per job, with the garment cache off so
that nothing else could hide a second one) and the try-on UNet's batch sizes (the people go
through it together). What batching promises (see `worker.catalog`): each person's noise is the
single job's; a person alone in their batch gets the single job's bytes; a batch's rows do not
depend on who else is in it.
"""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from worker_support import REPO, data_uri, handler_env

import handler
from worker.config import Settings
from worker.job import handle
from worker.runtime import get_runtime

GARMENT_PNG = REPO / "assets" / "garments" / "0_tshirt.png"
HOUSE_PHOTO = REPO / "assets" / "models" / "0_astronaut.png"
SMALL = {"resolution": "256x192", "steps": 2, "seed": 99}


@pytest.fixture(scope="module")
def house_dir(tmp_path_factory) -> dict[str, tuple[int, int]]:
    """Three house models: the bundled photo, its mirror image and a narrower crop of it."""
    folder = tmp_path_factory.mktemp("house")
    photo = Image.open(HOUSE_PHOTO).convert("RGB")
    pictures = [photo, ImageOps.mirror(photo), photo.crop((60, 0, 452, 512))]
    for index, picture in enumerate(pictures):
        picture.save(folder / f"{index}_model.png")
    return folder, [picture.size for picture in pictures]


@pytest.fixture(scope="module")
def worker_env(tiny_root, house_dir):
    house = str(house_dir[0])
    with handler_env(tiny_root, MODEL_IMAGES_DIR=house, DOWNLOAD_TIMEOUT="1.5", PROGRESS_EVERY="1"):
        yield


@pytest.fixture(scope="module")
def garment() -> str:
    return data_uri(GARMENT_PNG.read_bytes())


def run(job_input: dict) -> dict:
    result = handler.handler({"id": "catalog", "input": job_input})
    assert "error" not in result, result.get("error")
    return result


def raw(entry: dict) -> bytes:
    return base64.b64decode(entry["base64"])


def pixels(entry: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(raw(entry))).convert("RGB")).astype(int)


@pytest.fixture
def counted(worker_env, monkeypatch):
    """Garment UNet passes and try-on UNet batch sizes of the jobs run inside, garment cache off."""
    monkeypatch.setenv("GARMENT_CACHE_MB", "0")
    runtime = get_runtime(Settings.from_env())
    counts = {"garment": 0, "rows": []}
    hooks = []
    for pipe in runtime.pipelines.values():
        encode = pipe.fusion.encode_garment

        def counting(*args, _encode=encode, **kwargs):
            counts["garment"] += 1
            return _encode(*args, **kwargs)

        monkeypatch.setattr(pipe.fusion, "encode_garment", counting)
        hook = pipe.unet_vton.register_forward_pre_hook(lambda _, args: counts["rows"].append(len(args[0])))
        hooks.append(hook)
    yield counts
    for hook in hooks:
        hook.remove()


def test_three_house_models_one_garment_pass_people_batched(worker_env, house_dir, garment, counted) -> None:
    _, sizes = house_dir
    updates: list[dict] = []
    settings = Settings.from_env()
    job = {"id": "catalog", "input": {"person_index": [2, 0, 1], "garment": garment, "samples": 2,
                                      "return_mask": True, **SMALL}}  # fmt: skip
    result = handle(job, get_runtime(settings), settings, updates.append)
    assert "error" not in result, result.get("error")

    assert counted["garment"] == 1  # the garment conditioned once for three people
    # 2 samples -> 2 people per batch: [2, 0] then [1]; x2 rows for guidance, one call per step.
    assert counted["rows"] == [8, 8, 4, 4]
    assert [u for u in updates if u["stage"] == "diffusion"] == [
        {"stage": "diffusion", "step": 1, "steps": 2, "batch": 1, "batches": 2},
        {"stage": "diffusion", "step": 1, "steps": 2, "batch": 2, "batches": 2},
    ]
    assert result["succeeded"] == 3 and result["seed"] == SMALL["seed"]
    assert [entry["person_index"] for entry in result["results"]] == [2, 0, 1]
    for entry in result["results"]:
        assert set(entry) == {"person_index", "images", "mask", "seed"}
        assert len(entry["images"]) == 2
        expected = sizes[entry["person_index"]]
        assert all(Image.open(io.BytesIO(raw(image))).size == expected for image in entry["images"])
    assert {"fetch", "mask", "diffusion", "composite", "encode", "store"} <= set(result["timings"])


def test_a_person_alone_in_their_batch_gets_the_single_jobs_bytes(worker_env, garment) -> None:
    """3 samples fill a batch: each person is alone in theirs, with the single job's noise."""
    catalog = run({"person_index": [1, 2], "garment": garment, "samples": 3, **SMALL})
    for entry in catalog["results"]:
        single = run({"person_index": entry["person_index"], "garment": garment, "samples": 3, **SMALL})
        assert [raw(image) for image in entry["images"]] == [raw(image) for image in single["images"]]


def test_batched_rows_do_not_depend_on_the_other_people(worker_env, garment) -> None:
    """Person 0 in a batch of two, next to person 1 or person 2: the same bytes. Next to the
    single-person job (a batch of one) the batch's rounding moves a few pixels a little."""
    beside_one = run({"person_index": [0, 1], "garment": garment, **SMALL})["results"][0]
    beside_two = run({"person_index": [0, 2], "garment": garment, **SMALL})["results"][0]
    assert raw(beside_one["images"][0]) == raw(beside_two["images"][0])
    single = run({"person_index": 0, "garment": garment, **SMALL})
    difference = np.abs(pixels(beside_one["images"][0]) - pixels(single["images"][0]))
    assert difference.max() <= 2 and difference.mean() < 0.01


def test_a_person_photo_that_fails_fails_only_its_entry(worker_env, garment, file_server) -> None:
    photo = file_server.add("/photo.png", HOUSE_PHOTO.read_bytes(), headers={"Content-Type": "image/png"})
    slow, arrived, release = file_server.hold("/slow.png", HOUSE_PHOTO.read_bytes())
    try:
        result = run({
            "person": [file_server.url("/gone.png"), photo, "not an image!", slow],
            "garment": garment, **SMALL,
        })  # fmt: skip
    finally:
        release.set()
    assert result["succeeded"] == 1
    gone, served, garbled, late = result["results"]
    assert gone["person"] == 0 and gone["error"].startswith("person[0]: ") and "404" in gone["error"]
    assert served["person"] == 1 and len(served["images"]) == 1 and "error" not in served
    assert garbled["person"] == 2 and garbled["error"].startswith("person[2]: not valid base64")
    assert late["person"] == 3 and late["error"].startswith("person[3]: ") and "1.5 s" in late["error"]
    assert arrived.is_set()


def test_a_catalog_where_nobody_can_be_dressed_is_an_error(worker_env, garment) -> None:
    job = {"person": ["not an image!", "still not!"], "garment": garment, **SMALL}
    result = handler.handler({"id": "none", "input": job})
    assert set(result) == {"error"}
    assert result["error"].startswith("no person of the catalog could be dressed: person[0]: not valid")
    assert "; person[1]: not valid base64" in result["error"]


@pytest.mark.parametrize(
    ("people", "expected"),
    [
        ({"person_index": [0] * 9}, "person_index lists 1 to 8 people (a catalog), not an array of 9"),
        ({"person": []}, "person lists 1 to 8 people (a catalog), not an empty array"),
        ({"modelSelection": [1, 4]}, "modelSelection[1] must be an integer from 1 to 3, not 4"),
    ],
)
def test_a_catalog_over_the_limit_or_out_of_range_is_refused(worker_env, garment, people, expected) -> None:
    result = handler.handler({"id": "refused", "input": {**people, "garment": garment, **SMALL}})
    assert set(result) == {"error"} and result["error"].startswith("invalid input: " + expected), result


def test_each_person_gets_the_noise_of_a_call_for_them_alone(worker_env) -> None:
    pipe = get_runtime(Settings.from_env()).pipelines["hd"]
    alone = pipe.initial_noise(1, 2, 256, 192, SMALL["seed"])
    together = pipe.initial_noise(3, 2, 256, 192, SMALL["seed"])
    assert together.shape == (6, *alone.shape[1:])
    assert all(torch.equal(together[2 * k : 2 * k + 2], alone) for k in range(3))
    # A generator instead of a seed draws the people one after another: different noise each.
    drawn = pipe.initial_noise(2, 2, 256, 192, torch.Generator("cpu").manual_seed(SMALL["seed"]))
    assert torch.equal(drawn[:2], alone) and not torch.equal(drawn[2:], alone)

"""The RunPod Hub listing (`.runpod/hub.json`) and its release tests (`.runpod/tests.json`).

The structure follows RunPod's Hub publishing guide (field names, types, env entries, presets).
Every environment key the files set must be one the worker reads: the test records which keys
the worker's own settings readers look up, rather than restating the names. Every tests.json
job then runs through `handler.handler` on the tiny checkpoints, with one documented override
for the CPU: 1 step at 256x192 (EXTRA_RESOLUTIONS), where the Hub runs the published size.
"""

import base64
import io
import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from PIL import Image

import handler
from storage.settings import ACCESS_KEY_VARS, BUCKET_VARS, ENDPOINT_VARS, SECRET_KEY_VARS, load_settings
from worker.config import Settings
from worker.runtime import house_model_photos

RUNPOD_DIR = Path(handler.__file__).parent / ".runpod"
CATEGORIES = {"audio", "embedding", "language", "video", "image"}
INPUT_TYPES = {"string", "number", "boolean", "huggingface"}
MIN_CUDA = (13, 0)  # torch 2.13.0 from PyPI is a CUDA 13 build
COLD_START_MS = 300_000  # pulling the image and loading ~15 GB of weights, before the first step
CPU_OVERRIDE = {"steps": 1, "resolution": "256x192"}  # the only change made to the Hub's inputs


@pytest.fixture(scope="module")
def hub() -> dict:
    return json.loads((RUNPOD_DIR / "hub.json").read_text())


@pytest.fixture(scope="module")
def hub_tests() -> dict:
    return json.loads((RUNPOD_DIR / "tests.json").read_text())


class RecordingEnv(dict):
    """An environment that remembers every key looked up in it (to learn what the worker reads)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def keys_the_worker_reads() -> set[str]:
    """Every variable the worker's and the bucket's settings look up (a bucket set: none is skipped)."""
    env = RecordingEnv({BUCKET_VARS[0]: "bucket"})
    Settings.from_env(env)
    load_settings(env=env)
    return env.read


def cuda_version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def test_hub_json_has_the_hub_fields_with_their_types(hub) -> None:
    assert {"title", "description", "type", "category", "config"} <= set(hub)
    assert isinstance(hub["title"], str) and hub["title"].strip()
    assert isinstance(hub["description"], str) and "CC BY-NC-SA" in hub["description"]
    assert hub["type"] == "serverless" and hub["category"] == "image" and hub["category"] in CATEGORIES
    config = hub["config"]
    assert config["runsOn"] == "GPU" and config["gpuCount"] == 1
    # The image carries CUDA 13, torch and (built with default arguments) every weight: ~25 GB.
    assert isinstance(config["containerDiskInGb"], int) and config["containerDiskInGb"] >= 30
    pools = config["gpuIds"].split(",")
    assert {"ADA_24", "AMPERE_24"} <= set(pools)
    versions = config["allowedCudaVersions"]
    assert versions and all(isinstance(v, str) and cuda_version(v) >= MIN_CUDA for v in versions)


def test_hub_env_sets_only_what_the_worker_reads_and_marks_the_secret(hub) -> None:
    read = keys_the_worker_reads()
    entries = hub["config"]["env"]
    keys = [entry["key"] for entry in entries]
    assert len(keys) == len(set(keys))
    assert set(keys) <= read, set(keys) - read
    # The bucket connection, by RunPod's names (the first of each list), and the model types.
    for names in (ENDPOINT_VARS, ACCESS_KEY_VARS, SECRET_KEY_VARS, BUCKET_VARS):
        assert names[0] in keys
    assert "OOTD_MODEL_TYPES" in keys
    for entry in entries:
        assert ("value" in entry) != ("input" in entry), entry["key"]
        if "input" in entry:
            field = entry["input"]
            assert field["type"] in INPUT_TYPES and field["name"] and field["description"]
            for option in field.get("options", []):
                assert set(option) == {"label", "value"}
    by_key = {entry["key"]: entry for entry in entries}
    # The Hub has no password type: a secret is entered as a reference to a RunPod secret.
    for name in SECRET_KEY_VARS:
        if name in by_key:
            field = by_key[name]["input"]
            assert field["default"] == "" and "RUNPOD_SECRET_" in field["description"]
            assert "secret" in field["name"].lower()
    # Every model-type choice, and the default, is one the worker accepts.
    field = by_key["OOTD_MODEL_TYPES"]["input"]
    for value in [option["value"] for option in field["options"]] + [field["default"]]:
        Settings.from_env({"OOTD_MODEL_TYPES": value})


def test_hub_presets_choose_the_model_types(hub) -> None:
    presets = {preset["name"]: preset["defaults"] for preset in hub["config"]["presets"]}
    assert set(presets) == {"HD (upper body)", "HD + DC"}
    keys = {entry["key"] for entry in hub["config"]["env"]}
    for defaults in presets.values():
        assert set(defaults) <= keys
    model_types = {name: Settings.from_env(defaults).model_types for name, defaults in presets.items()}
    assert model_types == {"HD (upper body)": ("hd",), "HD + DC": ("hd", "dc")}


def test_tests_json_needs_nothing_from_outside_and_allows_a_cold_start(hub, hub_tests) -> None:
    tests, config = hub_tests["tests"], hub_tests["config"]
    assert 2 <= len(tests) <= 4
    assert len({test["name"] for test in tests}) == len(tests)
    photos = house_model_photos(Settings().model_images_dir)
    for test in tests:
        assert isinstance(test["name"], str) and isinstance(test["input"], Mapping)
        assert isinstance(test["timeout"], int) and test["timeout"] >= COLD_START_MS
        # No URL anywhere: a bundled house model and an inline garment.
        assert "http" not in json.dumps(test["input"]).lower()
        people = test["input"]["person_index"]
        assert all(0 <= index < len(photos) for index in (people if isinstance(people, list) else [people]))
        for garment in _garments(test["input"]):
            assert garment.startswith("data:image/")
            assert len(garment) < 20_000  # a small garment keeps the file small
    assert any(
        t["input"].get("model_type") == "dc" and t["input"].get("category") == "lower_body" for t in tests
    )
    assert any("garments" in t["input"] for t in tests)  # an outfit
    assert any(isinstance(t["input"]["person_index"], list) for t in tests)  # a catalog
    assert isinstance(config["gpuTypeId"], str) and config["gpuCount"] == 1
    assert set(config["allowedCudaVersions"]) <= set(hub["config"]["allowedCudaVersions"])
    read = keys_the_worker_reads()
    for entry in config["env"]:
        assert set(entry) == {"key", "value"} and entry["key"] in read


@pytest.fixture(scope="module")
def hub_test_env(tiny_root, hub_tests):
    """The tests.json environment on the tiny checkpoints, plus the CPU size override's resolution."""
    with pytest.MonkeyPatch.context() as patch:
        for entry in hub_tests["config"]["env"]:
            patch.setenv(entry["key"], entry["value"])
        patch.setenv("CHECKPOINTS_DIR", str(tiny_root))
        patch.setenv("EXTRA_RESOLUTIONS", CPU_OVERRIDE["resolution"])
        for names in (ENDPOINT_VARS, ACCESS_KEY_VARS, SECRET_KEY_VARS, BUCKET_VARS):
            for name in names:
                patch.delenv(name, raising=False)
        yield


def test_every_tests_json_job_returns_an_image(hub_tests, hub_test_env) -> None:
    house_photo = Image.open(house_model_photos(Settings().model_images_dir)[0])
    sizes = set()
    for test in hub_tests["tests"]:
        result = handler.handler({"id": test["name"], "input": {**test["input"], **CPU_OVERRIDE}})
        assert "error" not in result, (test["name"], result.get("error"))
        if "garments" in test["input"]:  # an outfit: a pass per garment, each with its model
            assert len(result["passes"]) == len(test["input"]["garments"])
        else:
            assert result["model_type"] == test["input"]["model_type"]
        if isinstance(test["input"]["person_index"], list):  # a catalog: a result per person
            assert result["succeeded"] == len(result["results"]) == len(test["input"]["person_index"])
            entries = [image for entry in result["results"] for image in entry["images"]]
        else:
            entries = result["images"]
        image = Image.open(io.BytesIO(base64.b64decode(entries[0]["base64"])))
        image.load()
        output_size = test["input"].get("output_size", "input")
        sizes.add(output_size)
        if output_size == "input":  # the default: the house photo's own size
            assert image.size == house_photo.size
        else:  # the generated frame: the house photo's aspect at the override's width
            assert image.width == 192 and image.width / image.height == house_photo.width / house_photo.height
        assert image.format.lower() == test["input"].get("output_format", "png")
    assert sizes == {"input", "frame"}  # the default and the published output are both tried


def _garments(job_input: Mapping) -> list[str]:
    """The garment pictures of a tests.json job: its `garment`, or each item's of an outfit."""
    if "garments" in job_input:
        return [item["garment"] for item in job_input["garments"]]
    return [job_input["garment"]]

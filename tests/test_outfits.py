"""Outfits (`garments`): several garments on one person, one pass each, through the real handler
on the tiny checkpoints.

The strongest check of the chaining is an equality: with one sample, a two-garment outfit gives
exactly the bytes of two single jobs where the second dresses the first one's image with the same
seed; a one-garment outfit gives the single job's bytes. Jobs run at 256x192 in 2 steps (a
2-step Karras schedule already moves the latents away from the starting noise).
"""

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image, ImageOps
from worker_support import REPO, data_uri, handler_env

import handler
from core.vocabulary import outfit_passes
from worker.config import Settings
from worker.job import pad_to_frame
from worker.runtime import get_runtime

GARMENT_PNG = REPO / "assets" / "garments" / "0_tshirt.png"
SMALL = {"resolution": "256x192", "steps": 2, "seed": 4321}


@pytest.fixture(scope="module")
def worker_env(tiny_root):
    with handler_env(tiny_root):
        yield


@pytest.fixture(scope="module")
def top() -> str:
    return data_uri(GARMENT_PNG.read_bytes())


@pytest.fixture(scope="module")
def trousers() -> str:
    """A second garment: the t-shirt photo mirrored and tinted (a different picture to condition on)."""
    image = ImageOps.mirror(Image.open(GARMENT_PNG).convert("RGB"))
    image = Image.blend(image, Image.new("RGB", image.size, (40, 60, 160)), 0.5)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return data_uri(buffer.getvalue())


def run(job_input: dict, job_id: str = "outfit") -> dict:
    result = handler.handler({"id": job_id, "input": job_input})
    assert "error" not in result, result.get("error")
    return result


def refused(job_input: dict) -> str:
    result = handler.handler({"id": "refused", "input": job_input})
    assert set(result) == {"error"}, result
    return result["error"]


def raw(entry: dict) -> bytes:
    return base64.b64decode(entry["base64"])


def pixels(entry: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(raw(entry))).convert("RGB")).astype(int)


def test_two_garments_are_two_chained_passes_lower_body_first(worker_env, top, trousers) -> None:
    outfit = run({
        "person_index": 0, **SMALL, "return_mask": True,
        "garments": [{"garment": top, "category": "upper_body"}, {"garment": trousers, "category": "lower"}],
    })  # fmt: skip
    passes = [(p["category"], p["model_type"]) for p in outfit["passes"]]
    assert passes == [("lower_body", "dc"), ("upper_body", "hd")]
    assert outfit["order"] == "lower_first" and outfit["seed"] == SMALL["seed"]
    assert all({"mask", "diffusion", "composite"} <= set(p["timings"]) for p in outfit["passes"])
    (lower_mask,), (upper_mask,) = (p["masks"] for p in outfit["passes"])
    assert raw(lower_mask) != raw(upper_mask)  # each pass computed its own mask

    # The first pass is the single lower-body job; the second dresses that job's image.
    lower = {"garment": trousers, "category": "lower_body", "model_type": "dc"}
    first = run({"person_index": 0, **SMALL, "return_mask": True, **lower})
    assert raw(first["mask"]) == raw(lower_mask)
    first_image = "data:image/png;base64," + first["images"][0]["base64"]
    second = run({"person": first_image, **SMALL, "return_mask": True, "garment": top})
    assert raw(second["mask"]) == raw(upper_mask)
    (image,) = outfit["images"]
    assert raw(image) == raw(second["images"][0])
    assert raw(image) != raw(first["images"][0])  # the second pass changed the picture


@pytest.mark.parametrize(
    ("categories", "order", "passes"),
    [
        (["upper_body", "lower_body"], "lower_first", [1, 0]),
        (["lower_body", "upper_body"], "lower_first", [0, 1]),
        (["upper_body", "lower_body"], "upper_first", [0, 1]),
        (["lower_body", "upper_body"], "upper_first", [1, 0]),
        (["dress"], "upper_first", [0]),
    ],
)
def test_the_order_of_the_passes(categories, order, passes) -> None:
    assert outfit_passes(categories, order) == passes


def test_an_unknown_order_is_refused(worker_env, top, trousers) -> None:
    garments = [{"garment": top, "category": "upper_body"}, {"garment": trousers, "category": "lower_body"}]
    message = refused({"person_index": 0, "garments": garments, "order": "sideways"})
    assert message == "invalid input: order must be one of lower_first, upper_first, not 'sideways'"


def test_a_dress_alone_is_the_single_dress_job(worker_env, top) -> None:
    outfit = run({"person_index": 0, **SMALL, "garments": [{"garment": top, "category": "dress"}]})
    single = run({"person_index": 0, **SMALL, "garment": top, "category": "dress", "model_type": "dc"})
    assert [(p["category"], p["model_type"]) for p in outfit["passes"]] == [("dress", "dc")]
    assert raw(outfit["images"][0]) == raw(single["images"][0])


def test_category_auto_inside_an_item_is_decided_as_in_a_single_job(worker_env, top) -> None:
    outfit = run({"person_index": 0, **SMALL, "garments": [{"garment": top, "category": "auto"}]})
    single = run({"person_index": 0, **SMALL, "garment": top, "category": "auto"})
    (done,) = outfit["passes"]
    assert (done["category"], done["model_type"]) == (single["category"], single["model_type"])
    assert done["category_scores"] == single["category_scores"]
    assert "classify" in done["timings"]
    assert raw(outfit["images"][0]) == raw(single["images"][0])


@pytest.mark.parametrize(
    ("garments", "extra", "expected"),
    [
        ([("upper_body", "top"), ("upper", "trousers")], {}, r"one garment per category, not several"),
        ([("dress", "top"), ("lower_body", "trousers")], {}, r"a dress goes alone"),
        ([("lower_body", "trousers")], {"model_type": "hd"}, r"garments\[0\]\.model_type 'hd' supports only"),
        ([("upper_body", "top")] * 4, {}, r"garments must be a list of 1 to 3 objects"),
        ([("upper_body", "top")], {"garment": "top"}, r"garment goes inside each item of garments"),
        ([("upper_body", "top")], {"mask": "top"}, r"mask cannot be combined with garments"),
        ([("upper_body", "top")], {"person_index": [0, 0]}, r"a list of people\) takes one garment"),
    ],
)
def test_refused_outfits_get_one_sentence(worker_env, top, trousers, garments, extra, expected) -> None:
    images = {"top": top, "trousers": trousers}
    items = [{"garment": images[name], "category": category} for category, name in garments]
    extra = {key: images.get(v, v) if isinstance(v, str) else v for key, v in extra.items()}
    message = refused({"person_index": 0, **SMALL, "garments": items, **extra})
    assert message.startswith("invalid input: ")
    assert len(re.findall(expected, message)) == 1, message


class RecordingPreprocessor:
    """The runtime's real preprocessor, recording the person picture of each call (a spy: the
    masks are still computed by the real networks)."""

    def __init__(self, real) -> None:
        self.real, self.calls = real, []

    def __call__(self, person, model_type, category, **kwargs):
        self.calls.append((category, person.copy()))
        return self.real(person, model_type, category, **kwargs)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_two_samples_each_carry_their_own_chain(worker_env, top, trousers, monkeypatch) -> None:
    """Sample k of the second pass is masked and dressed on sample k of the first pass: the
    pictures its mask stage saw are the lower-body job's two samples, framed (that job and the
    first pass are the same computation: same seed, same batch)."""
    runtime = get_runtime(Settings.from_env())
    recorder = RecordingPreprocessor(runtime.preprocessor)
    monkeypatch.setattr(runtime, "preprocessor", recorder)
    garments = [{"garment": top, "category": "upper_body"}, {"garment": trousers, "category": "lower_body"}]
    outfit = run({"person_index": 0, **SMALL, "samples": 2, "return_mask": True, "garments": garments})
    lower = run({"person_index": 0, **SMALL, "samples": 2, "garment": trousers, "category": "lower_body",
                 "model_type": "dc"})  # fmt: skip
    assert len(outfit["images"]) == 2
    assert len(outfit["passes"][0]["masks"]) == 1  # both samples start from the same photo
    assert len(outfit["passes"][1]["masks"]) == 2  # then each is masked on its own picture
    seen = [np.asarray(person) for category, person in recorder.calls if category == "upper_body"]
    framed = [np.asarray(pad_to_frame(Image.open(io.BytesIO(raw(entry))).convert("RGB"), None)[0])
              for entry in lower["images"]]  # fmt: skip
    assert not np.array_equal(*framed)
    assert len(seen) == 2 and all(np.array_equal(a, b) for a, b in zip(seen, framed, strict=True))

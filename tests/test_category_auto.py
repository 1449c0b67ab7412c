"""`category: "auto"` (zero-shot CLIP) and `model_type: "auto"` on the tiny tree.

The decision rule is checked with known embeddings; the classifier built from the tiny CLIP
text tower with its own prompt embeddings; and whole jobs run through `worker.job.handle` with a
classifier whose text embeddings are placed around the garment's real image embedding, so the
category it must pick is known. What cannot be checked here: how well the real CLIP sorts real
garments (the tiny weights are random).
"""

from dataclasses import replace

import pytest
import torch
from PIL import Image
from worker_support import data_uri

from core.vocabulary import CATEGORIES, MODEL_FRAME, PUBLISHED_CATEGORIES, auto_model_type
from ootd.classify import PROMPTS, GarmentClassifier

GARMENT_PNG = "assets/garments/0_tshirt.png"
SMALL = {"person_index": 0, "resolution": "256x192", "steps": 2, "seed": 5}


def placed_classifier(target: str, embeds: torch.Tensor) -> GarmentClassifier:
    """Text embeddings with `target`'s lying on `embeds` and the others away from it."""
    vector = embeds.reshape(-1).float()
    other = torch.roll(vector, 1) - vector
    text = {name: vector if name == target else other + 0.1 * index * torch.roll(vector, 2)
            for index, name in enumerate(PUBLISHED_CATEGORIES)}  # fmt: skip
    return GarmentClassifier(text, logit_scale=100.0)


def test_the_nearest_category_wins_and_the_scores_are_a_distribution() -> None:
    axes = torch.eye(3, 8)
    classifier = GarmentClassifier(dict(zip(PUBLISHED_CATEGORIES, axes, strict=True)), logit_scale=100.0)
    for index, category in enumerate(PUBLISHED_CATEGORIES):
        guess = classifier.classify(axes[index] * 3 + 0.2 * axes[(index + 1) % 3])
        assert guess.category == category
        assert abs(sum(guess.scores.values()) - 1) < 1e-3
        assert max(guess.scores, key=guess.scores.get) == category
    even = classifier.classify(torch.ones(1, 8))  # equally near all three: equal scores
    assert max(even.scores.values()) - min(even.scores.values()) < 1e-3
    with pytest.raises(ValueError, match="8 values"):
        classifier.classify(torch.ones(5))


def test_prompt_embeddings_come_from_the_clip_text_tower_once(tiny_root) -> None:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_root / "ootd" / "tokenizer")
    classifier = GarmentClassifier.from_clip(tiny_root / "clip-vit-large-patch14", tokenizer)
    assert classifier.categories == PUBLISHED_CATEGORIES and set(PROMPTS) == set(PUBLISHED_CATEGORIES)
    assert classifier.text_embeds.shape[0] == 3
    assert torch.allclose(classifier.text_embeds.norm(dim=-1), torch.ones(3))
    assert 1.0 < classifier.logit_scale < 101.0  # exp of the file's logit_scale
    for index, category in enumerate(PUBLISHED_CATEGORIES):  # each prompt set classifies as itself
        assert classifier.classify(classifier.text_embeds[index]).category == category


@pytest.fixture(scope="module")
def tiny_worker(tiny_root):
    from worker.config import Settings
    from worker.runtime import get_runtime

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHECKPOINTS_DIR", str(tiny_root))
        patch.setenv("EXTRA_RESOLUTIONS", "256x192")
        settings = Settings.from_env()
        yield get_runtime(settings), settings


@pytest.fixture(scope="module")
def garment_embeds(tiny_worker) -> torch.Tensor:
    runtime, _ = tiny_worker
    with torch.inference_mode():
        return runtime.pipelines["dc"].garment_image_embeds(Image.open(GARMENT_PNG), height=256, width=192)


def job(**fields) -> dict:
    return {"id": "auto", "input": {**SMALL, "garment": data_uri(open(GARMENT_PNG, "rb").read()), **fields}}


def test_auto_on_the_tiny_tree_reports_the_category_and_scores(tiny_worker) -> None:
    from worker.job import handle

    runtime, settings = tiny_worker
    assert runtime.classifier is not None  # loaded at start-up
    result = handle(job(category="auto"), runtime, settings)
    assert "error" not in result, result
    assert result["category"] in CATEGORIES and set(result["category_scores"]) == set(CATEGORIES)
    assert abs(sum(result["category_scores"].values()) - 1) < 1e-3
    assert result["model_type"] == auto_model_type(result["category"])
    assert "classify" in result["timings"]


def check_auto_conditions_on_its_own_embedding(runtime, placed, settings) -> dict:
    """`category: "auto"` passes the embedding it classified with on to the pipeline: its image
    is the image of the same job with the category named, computed afresh. Both jobs run with
    the garment cache off: with it, the named job would reuse the auto job's conditioning and
    agree whatever embedding that was. One vision pass for the auto job (the classification's
    embedding is reused). Returns the auto job's result; AssertionError where this fails."""
    from worker.job import handle

    uncached = replace(settings, garment_cache_mb=0)
    calls = []
    encoder = runtime.pipelines["dc"].image_encoder  # shared by both model types
    hook = encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        auto = handle(job(category="auto"), placed, uncached)
    finally:
        hook.remove()
    assert "error" not in auto, auto
    assert len(calls) == 1, "the job embedded the garment more than once"
    named = handle(job(category=auto["category"], model_type=auto["model_type"]), runtime, uncached)
    assert "error" not in named, named
    assert named["images"] == auto["images"], "category 'auto' gave another image than the named category"
    return auto


def test_a_garment_nearest_lower_body_runs_dc_with_one_vision_pass(tiny_worker, garment_embeds) -> None:
    runtime, settings = tiny_worker
    placed = replace(runtime, classifier=placed_classifier("lower_body", garment_embeds))
    result = check_auto_conditions_on_its_own_embedding(runtime, placed, settings)
    assert (result["category"], result["model_type"]) == ("lower_body", "dc")
    assert max(result["category_scores"], key=result["category_scores"].get) == "lower_body"


def test_the_auto_check_fails_when_the_classified_embedding_is_not_the_garments(
    tiny_worker, garment_embeds
) -> None:
    """Mutation: the embedding the classification hands on is off by a factor (the category
    stays: the classifier compares directions), so the auto job is conditioned on another
    embedding than the named job computes for itself."""
    runtime, settings = tiny_worker
    placed = replace(runtime, classifier=placed_classifier("lower_body", garment_embeds))
    for pipe in runtime.pipelines.values():
        pipe.garment_image_embeds = lambda *args, real=pipe.garment_image_embeds, **kwargs: (
            1.5 * real(*args, **kwargs)
        )
    try:
        with pytest.raises(AssertionError, match="category 'auto' gave another image"):
            check_auto_conditions_on_its_own_embedding(runtime, placed, settings)
    finally:
        for pipe in runtime.pipelines.values():
            del pipe.garment_image_embeds


def test_model_type_auto_follows_the_category(tiny_worker) -> None:
    from worker.job import handle

    runtime, settings = tiny_worker
    lower = handle(job(category="lower_body", model_type="auto", steps=1), runtime, settings)
    upper = handle(job(model_type="auto", steps=1), runtime, settings)
    assert (lower["model_type"], upper["model_type"]) == ("dc", "hd")
    assert "category_scores" not in lower


def test_an_explicit_hd_with_a_detected_lower_body_is_refused(tiny_worker, garment_embeds) -> None:
    from worker.job import handle

    runtime, settings = tiny_worker
    placed = replace(runtime, classifier=placed_classifier("lower_body", garment_embeds))
    result = handle(job(category="auto", model_type="hd"), placed, settings)
    assert result["error"].startswith(
        "category 'auto' found a lower_body garment, but model_type 'hd' supports only"
    )


def test_the_schema_rules_for_auto() -> None:
    from worker.errors import InputError
    from worker.schema import parse_request

    base = {"person_index": 0, "garment": "https://example.com/g.png"}
    assert parse_request(base, person_count=1).model_type == "hd"  # defaults unchanged
    assert parse_request({**base, "category": "auto"}, person_count=1).model_type == "auto"
    assert parse_request({**base, "category": 2, "model_type": "AUTO"}, person_count=1).model_type == "dc"
    only_dc = parse_request({**base, "model_type": "auto"}, person_count=1, loaded_model_types=("dc",))
    assert only_dc.model_type == "dc"
    with pytest.raises(InputError, match="needs a flat garment photo"):
        parse_request({**base, "category": "auto", "garment_photo_type": "model"}, person_count=1)
    with pytest.raises(InputError, match="model_type 'auto': no model for category 'lower_body'"):
        parse_request(
            {**base, "category": 1, "model_type": "auto"}, person_count=1, loaded_model_types=("hd",)
        )
    assert MODEL_FRAME == (768, 1024)

"""The one vocabulary (`core`): categories and their spellings, which model dresses which, the
model frame and size notation, flattening transparency, JSON type names; and that the schema,
the preprocessor and the pipeline all follow it."""

import itertools

import pytest
from PIL import Image

from core.generation import (
    GUIDANCE_RANGE,
    RESOLUTIONS,
    SAMPLES_RANGE,
    DiffusionShape,
    diffusion_shapes,
    is_guided,
)
from core.images import BLACK, WHITE, flatten, has_alpha
from core.jsontypes import json_type
from core.vocabulary import (
    CATEGORIES,
    MODEL_CATEGORIES,
    MODEL_FRAME,
    MODEL_TYPES,
    PUBLISHED_CATEGORIES,
    PUBLISHED_NAMES,
    Size,
    category_name,
    check_published,
    parse_model_types,
    parse_size,
    size_name,
    unsupported,
)
from worker.errors import InputError
from worker.schema import parse_request

GARMENT = "https://example.com/g.png"


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("upper_body", "upper_body"), (" Upper ", "upper_body"), ("lowerbody", "lower_body"),
        ("DRESSES", "dress"), ("dress", "dress"), (0, "upper_body"), (1, "lower_body"), (2.0, "dress"),
        (3, None), (-1, None), (True, None), (1.5, None), (float("nan"), None), (float("inf"), None),
        ("shoes", None), (None, None), ([0], None),
    ],
)  # fmt: skip
def test_every_spelling_and_alias_names_one_api_category(value, name) -> None:
    assert category_name(value) == name


def test_published_names_differ_only_for_dresses() -> None:
    assert PUBLISHED_CATEGORIES == ("upper_body", "lower_body", "dresses")
    assert [api for api in CATEGORIES if PUBLISHED_NAMES[api] != api] == ["dress"]
    assert all(category_name(published) == api for api, published in PUBLISHED_NAMES.items())


@pytest.mark.parametrize(("model_type", "category"), itertools.product(MODEL_TYPES, CATEGORIES))
def test_schema_preprocessor_and_pipeline_agree_on_what_each_model_dresses(model_type, category) -> None:
    """One rule (`MODEL_CATEGORIES`): the schema refuses exactly what the preprocessor and the
    pipeline's shared check refuse, with the same sentence."""
    supported = category in MODEL_CATEGORIES[model_type]
    assert (unsupported(model_type, category) is None) == supported
    request = {"person_index": 0, "garment": GARMENT, "model_type": model_type, "category": category}
    if supported:
        assert parse_request(request, person_count=1).pipeline_category == PUBLISHED_NAMES[category]
        check_published(model_type, PUBLISHED_NAMES[category])
    else:
        with pytest.raises(InputError) as refused:
            parse_request(request, person_count=1)
        with pytest.raises(ValueError) as checked:
            check_published(model_type, PUBLISHED_NAMES[category])
        assert unsupported(model_type, category) in str(refused.value)
        assert str(checked.value).startswith(f"model_type {model_type!r} supports only category 'upper_body'")


def test_hd_dresses_only_upper_bodies_and_dc_everything() -> None:
    assert MODEL_CATEGORIES == {"hd": ("upper_body",), "dc": CATEGORIES}
    with pytest.raises(ValueError, match="category must be one of upper_body, lower_body, dresses"):
        check_published("dc", "dress")  # the pipeline speaks published names only
    with pytest.raises(ValueError, match="model_type must be one of hd, dc"):
        check_published("xl", "upper_body")


def test_sizes_are_written_height_first_and_held_width_first() -> None:
    assert parse_size("1024x768") == Size(768, 1024) == MODEL_FRAME
    assert (MODEL_FRAME.width, MODEL_FRAME.height) == (768, 1024)
    assert size_name(parse_size(" 256 X 192 ")) == "256x192"
    assert all(size_name(size) == name for name, size in RESOLUTIONS.items())
    for bad in ("768", "axb", "1024x768x3", ""):
        with pytest.raises(ValueError, match="HxW"):
            parse_size(bad)


def test_the_request_shapes_come_from_the_allowed_sizes_samples_and_guidance(monkeypatch) -> None:
    shapes = diffusion_shapes()
    assert len(shapes) == len(set(shapes)) == 3 * 4 * 2  # 3 sizes x 1..4 samples x guidance on/off
    assert DiffusionShape(Size(384, 512), 4, True) in shapes
    assert {shape.samples for shape in shapes} == set(range(SAMPLES_RANGE[0], SAMPLES_RANGE[1] + 1))
    # An operator's extra size adds its shapes; a published one given again adds none.
    assert len(diffusion_shapes(["256x192", "1024x768"])) == 4 * 4 * 2
    # Guidance on/off both count only while the range holds a scale of each kind.
    assert not is_guided(GUIDANCE_RANGE[0]) and is_guided(GUIDANCE_RANGE[1])
    monkeypatch.setattr("core.generation.GUIDANCE_RANGE", (1.5, 5.0))
    assert {shape.guided for shape in diffusion_shapes()} == {True}
    assert len(diffusion_shapes()) == 3 * 4


def test_one_model_type_parser() -> None:
    assert parse_model_types(" DC, hd,dc ") == ("dc", "hd")
    for bad, message in (("", "no model type"), ("hd,sd", "'sd'")):
        with pytest.raises(ValueError, match=message):
            parse_model_types(bad)


def test_transparency_is_flattened_onto_the_chosen_background() -> None:
    image = Image.new("RGBA", (2, 1), (10, 20, 30, 0))
    image.putpixel((1, 0), (10, 20, 30, 255))
    assert has_alpha(image) and not has_alpha(image.convert("RGB"))
    assert list(flatten(image).getdata()) == [WHITE, (10, 20, 30)]
    assert list(flatten(image, BLACK).getdata()) == [BLACK, (10, 20, 30)]
    half = Image.new("LA", (1, 1), (100, 128))
    assert flatten(half).mode == "RGB" and 170 <= flatten(half).getpixel((0, 0))[0] <= 185
    palette = Image.new("P", (1, 1), 0)
    palette.info["transparency"] = 0
    assert flatten(palette).getpixel((0, 0)) == WHITE
    assert flatten(Image.new("L", (1, 1), 7)).getpixel((0, 0)) == (7, 7, 7)


@pytest.mark.parametrize(
    ("value", "name"),
    [("x", "a string"), (True, "a boolean"), (3, "a number"), (2.5, "a number"), ([], "an array"),
     ({}, "an object"), (None, "null")],
)  # fmt: skip
def test_json_type_names(value, name) -> None:
    assert json_type(value) == name

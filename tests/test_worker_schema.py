"""Request validation (worker/schema.py): defaults, aliases, ranges and one-sentence errors."""

import pytest

from core.generation import RESOLUTIONS
from worker.errors import InputError
from worker.schema import FIELDS, parse_request

GARMENT = "https://example.com/garment.png"


def test_defaults_match_the_documented_ones() -> None:
    request = parse_request({"person_index": 0, "garment": GARMENT}, person_count=1)
    assert (request.model_type, request.category, request.steps, request.samples) == (
        "hd",
        "upper_body",
        20,
        1,
    )
    assert (request.guidance_scale, request.output_format, request.return_mask) == (2.0, "png", False)
    assert (request.resolution, request.size, request.fit) == ("1024x768", (768, 1024), "pad")
    assert (request.output_size, request.composite) == ("input", True)
    assert request.garment.kind == "url" and request.person is None and request.person_index == 0
    assert 0 <= request.seed < 2**32


def test_output_size_and_composite_are_read_case_insensitively() -> None:
    raw = {"person_index": 0, "garment": GARMENT, "output_size": " Frame ", "composite": False}
    request = parse_request(raw)
    assert (request.output_size, request.composite) == ("frame", False)


def test_random_seed_for_absent_or_minus_one_and_kept_otherwise() -> None:
    seeds = {parse_request({"person_index": 0, "garment": GARMENT, "seed": -1}).seed for _ in range(5)}
    assert len(seeds) > 1  # drawn per job
    assert parse_request({"person_index": 0, "garment": GARMENT, "seed": 7}).seed == 7
    assert parse_request({"person_index": 0, "garment": GARMENT, "seed": 7.0}).seed == 7


def test_seed_api_aliases_map_onto_the_new_names() -> None:
    old = parse_request(
        {
            "modelSelection": 2,
            "garment": GARMENT,
            "modelType": "DC",
            "category": 2,
            "nSteps": 12,
            "nSamples": 3,
            "imageScale": 1.5,
            "seed": 9,
        },
        person_count=2,
    )
    new = parse_request(
        {
            "person_index": 1,
            "garment": GARMENT,
            "model_type": "dc",
            "category": "dress",
            "steps": 12,
            "samples": 3,
            "guidance_scale": 1.5,
            "seed": 9,
        },
        person_count=2,
    )
    assert old == new
    assert new.pipeline_category == "dresses"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("https://example.com/a.png?sig=1", "url"),
        ("HTTP://example.com/a.png", "url"),
        ("data:image/png;base64,iVBORw0KGgo=", "data_uri"),
        ("iVBORw0KGgoAAAANSUhEUg==", "base64"),
    ],
)
def test_image_forms_are_recognised(value: str, kind: str) -> None:
    assert parse_request({"person": value, "garment": GARMENT}).person.kind == kind


def test_url_descriptions_hide_path_query_and_credentials() -> None:
    ref = parse_request(
        {"person": "https://user:pw@cdn.example.com/p/x.png?token=abc", "garment": GARMENT}
    ).person
    assert ref.describe() == "a URL on cdn.example.com"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"person_index": 0}, r"garment is required"),
        ({"garment": GARMENT}, r"person is required .* or give person_index"),
        ({"person": GARMENT, "person_index": 0, "garment": GARMENT}, r"give either person or person_index"),
        ({"person_index": 1, "garment": GARMENT}, r"person_index must be an integer from 0 to 0, not 1"),
        ({"modelSelection": 0, "garment": GARMENT}, r"modelSelection must be an integer from 1 to 1, not 0"),
        (
            {"person_index": 0, "garment": GARMENT, "steps": 51},
            r"steps must be an integer from 1 to 50, not 51",
        ),
        ({"person_index": 0, "garment": GARMENT, "nSteps": "20"}, r"nSteps must be an integer from 1 to 50"),
        ({"person_index": 0, "garment": GARMENT, "steps": 2, "nSteps": 2}, r"steps and nSteps are the same"),
        ({"person_index": 0, "garment": GARMENT, "samples": True}, r"samples must be an integer from 1 to 4"),
        (
            {"person_index": 0, "garment": GARMENT, "guidance_scale": 0.5},
            r"guidance_scale must be a number from 1",
        ),
        ({"person_index": 0, "garment": GARMENT, "model_type": "xl"}, r"model_type must be one of hd, dc"),
        ({"person_index": 0, "garment": GARMENT, "category": 3}, r"category must be one of upper_body"),
        (
            {"person_index": 0, "garment": GARMENT, "category": "lower_body"},
            r"'hd' supports only .*use model_type 'dc'",
        ),
        (
            {"person_index": 0, "garment": GARMENT, "resolution": "1024x1024"},
            r"resolution must be one of 1024x768",
        ),
        ({"person_index": 0, "garment": GARMENT, "fit": "crop"}, r"fit must be one of pad, stretch"),
        (
            {"person_index": 0, "garment": GARMENT, "output_format": "gif"},
            r"output_format must be one of png",
        ),
        ({"person_index": 0, "garment": GARMENT, "return_mask": 1}, r"return_mask must be true or false"),
        (
            {"person_index": 0, "garment": GARMENT, "output_size": "original"},
            r"output_size must be one of input, frame, not 'original'",
        ),
        (
            {"person_index": 0, "garment": GARMENT, "composite": "no"},
            r"composite must be true or false, not a string \('no'\)",
        ),
        ({"person_index": 0, "garment": GARMENT, "seed": -5}, r"seed must be an integer from 0"),
        ({"person_index": 0, "garment": ["x"]}, r"garment must be a string .* not an array"),
        ({"person_index": 0, "garment": "ftp://example.com/g.png"}, r"garment: ftp:// URLs are not allowed"),
        ({"person_index": 0, "garment": "file:///etc/passwd"}, r"garment: file:// URLs are not allowed"),
        (
            {"person_index": 0, "garment": GARMENT, "prompt": "x"},
            r"unknown field 'prompt' \(valid fields are person",
        ),
    ],
)
def test_bad_fields_are_named_with_the_reason(raw: dict, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        parse_request(raw, person_count=1)
    assert str(caught.value).startswith("invalid input: ")
    assert "\n" not in str(caught.value)


def test_all_problems_are_reported_at_once_and_unknown_lists_valid_fields() -> None:
    with pytest.raises(InputError) as caught:
        parse_request({"garment": 5, "steps": 0, "colour": "red"})
    text = str(caught.value)
    for part in ("unknown field 'colour'", "person is required", "garment must be a string", "steps must be"):
        assert part in text
    for field in FIELDS:
        assert field in text


@pytest.mark.parametrize("raw", [None, "person=1", [1, 2], 3])
def test_input_that_is_not_an_object(raw) -> None:
    with pytest.raises(InputError, match=r"^input must be a JSON object"):
        parse_request(raw)


def test_model_type_not_loaded_on_this_worker() -> None:
    with pytest.raises(InputError, match=r"model_type 'dc' is not loaded on this worker \(loaded: hd\)"):
        parse_request({"person_index": 0, "garment": GARMENT, "model_type": "dc"}, loaded_model_types=("hd",))


def test_every_resolution_is_three_by_four_and_a_multiple_of_64() -> None:
    for width, height in RESOLUTIONS.values():
        assert width * 4 == height * 3 and width % 64 == 0 and height % 64 == 0

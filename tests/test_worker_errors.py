"""Bounded error messages (worker/errors.py): quoting callers' values, capped lists, the last cut.

The examples are the ones that produced megabyte-long errors before (issue 13) and one per
shape of input JSON can take; tests/test_fuzz.py explores the inputs nobody listed.
"""

import json

import pytest
from worker_support import ALLOW_PRIVATE_URLS, LoopbackHTTPServer, QuietHandler, data_uri, image_bytes

import handler
from storage import StorageConfigError, load_settings
from worker.errors import (
    MAX_LISTED,
    MAX_MESSAGE,
    MAX_QUOTED,
    InputError,
    JobError,
    bounded,
    clip,
    join_capped,
    quote,
)
from worker.schema import ALIASES, FIELDS, parse_request

GARMENT = "aGVsbG8="  # plain base64 (not decoded at validation)


def error_for(raw, **kwargs) -> str:
    with pytest.raises(InputError) as caught:
        parse_request(raw, person_count=1, **kwargs)
    message = str(caught.value)
    assert len(message) <= MAX_MESSAGE and message.isprintable(), message
    return message


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("upper", "'upper'"),
        ("x" * 12_000_000, "'" + "x" * MAX_QUOTED + "…' (12000000 characters)"),
        ("it's a\\b", r"'it\'s a\\b'"),
        ("a\nb\x00c\u200bd\ud800", r"'a\nb\x00c\u200bd\ud800'"),
        (True, "true"),
        (False, "false"),
        (None, "null"),
        (20, "20"),
        (-(10**39), "-" + "1" + "0" * 39),
        (10**40, "an integer of 41 digits"),
        (10**5000, "an integer of 5001 digits"),  # str() of it raises in Python 3.11+
        (2.5, "2.5"),
        (float("nan"), "NaN"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
        ([], "an empty array"),
        (["x"] * 3, "an array of 3 items"),
        ({}, "an empty object"),
        ({"url": "x" * 10_000}, "an object with 1 field"),
        (b"raw", "a bytes value"),
    ],
    ids=quote,  # pytest's own ids would call str() on the huge integers, which raises
)
def test_quote_shows_json_values_bounded_and_escaped(value, shown: str) -> None:
    assert quote(value) == shown


def test_an_escape_is_never_cut_in_half() -> None:
    text = "\x00" * 100
    shown = clip(text)
    assert shown == "\\x00" * (MAX_QUOTED // 4) + "… (100 characters)"
    assert quote("é" * MAX_QUOTED) == "'" + "é" * MAX_QUOTED + "'"  # printable: shown as it is


def test_join_capped_lists_a_few_then_counts_the_rest() -> None:
    assert join_capped(["a", "b"]) == "a, b"
    items = [f"p{n}" for n in range(20)]
    assert join_capped(items, "; ", "problems") == "; ".join(items[:MAX_LISTED]) + "; and 12 more problems"
    long = ["y" * 300] * 3  # the character budget stops the list before the count does
    assert join_capped(long, budget=500) == "y" * 300 + ", and 2 more"
    assert join_capped(["a", "b"], total=1_000_000) == "a, b, and 999998 more"


def test_job_error_is_the_last_line_of_defence() -> None:
    message = str(JobError("bad: " + "z" * 5_000_000 + "\n"))
    assert len(message) <= MAX_MESSAGE and message.startswith("bad: zzz")
    assert message.endswith("… (message shortened)")
    assert str(JobError("tab\there")) == "tab\\there"
    assert bounded("fine as it is") == "fine as it is"


def test_the_issues_examples_stay_short() -> None:
    huge_category = error_for({"category": "x" * 12_000_000, "person_index": 0, "garment": GARMENT})
    assert huge_category == (
        "invalid input: category must be one of upper_body, lower_body, dress, auto (or 0, 1, 2), not '"
        + "x" * MAX_QUOTED
        + "…' (12000000 characters)"
    )
    assert "(5000 characters)" in error_for({"person_index": 0, "garment": GARMENT, "model_type": "m" * 5000})
    unknown = error_for({"person_index": 0, "garment": GARMENT, "k" * 100_000: 1})
    expected = "unknown field '" + "k" * MAX_QUOTED + "…' (100000 characters) (valid fields are person,"
    assert expected in unknown


def test_many_unknown_fields_and_problems_are_capped() -> None:
    raw = {f"extra{n}": n for n in range(1_000_000)} | {name: {"nested": [1]} for name in [*FIELDS, *ALIASES]}
    message = error_for(raw)
    assert "unknown fields 'extra0', 'extra1'" in message and "and 999992 more (valid fields are" in message
    assert message.endswith(" more problems") and "shortened" not in message
    for field in FIELDS:  # the unknown-field sentence still lists every valid field
        assert field in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([1, 2], "input must be a JSON object with the job's fields, not an array of 2 items; valid fields"),
        (7, "input must be a JSON object with the job's fields, not 7;"),
        ("p" * 10_000, "not a string ('" + "p" * MAX_QUOTED + "…' (10000 characters));"),
        (10**10_000, "not an integer of 10001 digits;"),
        ({"person_index": 0, "garment": {"url": "x"}},
         "garment must be a string (an http(s) URL, base64 or a data URI), not an object with 1 field"),
        ({"person_index": 0, "garment": GARMENT, "guidance_scale": float("nan")},
         "guidance_scale must be a number from 1.0 to 5.0, not NaN"),
        ({"person_index": 0, "garment": GARMENT, "imageScale": float("inf")},
         "imageScale must be a number from 1.0 to 5.0, not Infinity"),
        ({"person_index": 0, "garment": GARMENT, "steps": True},
         "steps must be an integer from 1 to 50, not true"),
        ({"person_index": 0, "garment": GARMENT, "nSamples": 10**400},
         "nSamples must be an integer from 1 to 4, not an integer of 401 digits"),
        ({"person_index": 0, "garment": GARMENT, "seed": -(10**5000)}, "not an integer of 5001 digits"),
        ({"person_index": 0, "garment": GARMENT, "seed": float("-inf")}, "not -Infinity"),
        ({"person_index": 10**5000, "garment": GARMENT},
         "person_index must be an integer from 0 to 0, not an integer of 5001 digits"),
        ({"person_index": 0, "garment": GARMENT, "return_mask": "yes"},
         "return_mask must be true or false, not a string ('yes')"),
        ({"person_index": 0, "garment": GARMENT, "nSteps": "20"},
         "nSteps must be an integer from 1 to 50, not a string ('20')"),
        ({"person_index": 0, "garment": "s" * 5000 + "://host/x"}, "garment: " + "s" * MAX_QUOTED + "… (5000 "
         "characters):// URLs are not allowed"),
        ({"person_index": 0, "garment": "http://" + ".".join(["a" * 60] * 30) + "/x"},
         "garment: not a valid URL (the host name is longer than 253 characters)"),
        ({"person_index": 0, "garment": "http://[fe80::1%25" + "z" * 500 + "]/x"},
         "garment: not a valid URL (the host has an IPv6 zone index)"),
    ],
    ids=quote,
)  # fmt: skip
def test_each_shape_of_bad_input_is_one_clear_sentence(raw, expected: str) -> None:
    message = error_for(raw)
    assert expected in message
    assert "\n" not in message and "Traceback" not in message


def test_python_only_values_are_described_not_crashed_on() -> None:
    # JSON cannot carry these, but a Python caller of the handler can: still a sentence.
    message = error_for({10**5000: 1, ("a", "b"): 2, "person_index": 0, "garment": GARMENT})
    assert "unknown fields an integer of 5001 digits, an array of 2 items" in message
    json.dumps({"error": message})  # serialisable as RunPod's result


@pytest.mark.parametrize("value", [10**5000, {"key": "secret-in-an-object"}, ["secret"], True], ids=quote)
def test_an_s3_config_value_that_is_not_text_is_named_not_shown(value) -> None:
    # RunPod's s3Config beside `input`: its values are credentials, so the warning names the key only.
    config = {"endpointUrl": "https://s3.example.com", "bucketName": "b"}
    config |= {"accessId": value, "accessSecret": value}
    with pytest.raises(StorageConfigError) as caught:
        load_settings(config, env={})
    assert str(caught.value) == "s3Config accessId, accessSecret must be text"


class _RefusingS3(QuietHandler):
    """An S3 endpoint that refuses every request with a 100,000-character error code."""

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = f"<Error><Code>{'Denied' * 20_000}</Code><Message>no</Message></Error>".encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_warning_from_the_jobs_own_s3_endpoint_is_bounded(tiny_root, monkeypatch) -> None:
    monkeypatch.setenv("CHECKPOINTS_DIR", str(tiny_root))
    monkeypatch.setenv("EXTRA_RESOLUTIONS", "256x192")
    monkeypatch.setenv(ALLOW_PRIVATE_URLS, "true")  # the endpoint is on 127.0.0.1
    monkeypatch.delenv("RUNPOD_WEBHOOK_POST_OUTPUT", raising=False)
    with LoopbackHTTPServer(_RefusingS3) as server:
        s3_config = {"endpointUrl": server.base_url, "bucketName": "b",
                     "accessId": "id", "accessSecret": "secret"}  # fmt: skip
        job_input = {"person_index": 0, "garment": data_uri(image_bytes((48, 64), "PNG")),
                     "resolution": "256x192", "steps": 1, "seed": 3}  # fmt: skip
        result = handler.handler({"id": "s3-refuses", "input": job_input, "s3Config": s3_config})
    assert "error" not in result, result["error"]
    assert result["images"][0]["base64"]  # the images still come back, inline
    (warning,) = result["warnings"]
    assert warning.startswith("upload to S3 failed after 1 attempt (DeniedDenied")
    assert len(warning) <= MAX_MESSAGE and warning.endswith("… (message shortened)")

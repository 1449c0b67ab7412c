"""Property-based fuzzing of the request schema and of the whole handler (hypothesis).

The named bad-input tables cover the inputs someone thought of; these tests generate the rest:
JSON-like inputs built from the real field names, their aliases and unknown names, holding
values of every JSON type and size (huge strings and integers, NaN, Infinity, nesting), plus
values close to valid ones so that some jobs pass validation and reach the models.

Properties: nothing raises; the answer is either images or one printable error sentence of at
most `MAX_MESSAGE` characters without a traceback; a fixed valid job gives the same bytes
before and after the fuzzing (no state leaks between jobs).

Budget: the CI run is deterministic and small (well under a minute). For a longer hunt set
`FUZZ_EXAMPLES` (examples per test, e.g. `FUZZ_EXAMPLES=2000`), which also draws fresh random
examples instead of the fixed CI ones.

No network: generated URLs only name loopback, private, link-local or unspecified addresses
(refused by the SSRF guard before connecting) or are malformed (refused at validation); an
audit hook fails the test if the fuzzed handler resolves any other name or opens a connection.
"""

import base64
import ipaddress
import os
import string
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mutations import leaking_fusion_store
from worker_support import ALLOW_PRIVATE_URLS, data_uri, image_bytes

import handler
from ootd.layout import MODEL_TYPES
from worker.errors import MAX_MESSAGE, InputError
from worker.schema import (
    ALIASES,
    CATEGORIES,
    FIELDS,
    FITS,
    GARMENT_PHOTO_TYPES,
    GUIDANCE_RANGE,
    MAX_GARMENTS,
    MAX_PEOPLE,
    MAX_SEED,
    OUTFIT_ORDERS,
    OUTPUT_FORMATS,
    OUTPUT_SIZES,
    RESOLUTIONS,
    SAMPLES_RANGE,
    STEPS_RANGE,
    TryOnRequest,
    parse_request,
)

_REQUESTED = os.environ.get("FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(_REQUESTED) if _REQUESTED else 150,
    derandomize=not _REQUESTED,  # CI: the same examples on every run; on demand: new ones
    database=None,  # nothing written into the checkout
    deadline=None,  # a job that reaches the model takes a second on 2 shared cores
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
# Jobs through the whole handler cost more (a few reach the model): fewer of them in CI.
HANDLER_FUZZ = settings(FUZZ, max_examples=int(_REQUESTED) if _REQUESTED else 40)

TINY_RESOLUTION = "256x192"  # allowed through EXTRA_RESOLUTIONS: the cheapest job the model runs
NAMES = (*FIELDS, *ALIASES)
PICTURE = image_bytes((48, 64), "PNG")
PICTURE_URI = data_uri(PICTURE)
# Hosts the SSRF guard refuses without resolving a name (literal addresses, or localhost).
REFUSED_HOSTS = (
    "127.0.0.1", "localhost", "10.0.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "[::1]", "[fd00::1]", "[fe80::1]",
)  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

long_text = st.builds(
    lambda char, count: char * count, st.sampled_from(["x", "é", "\x00", "'", "\\", "\n", "\ud800"]),
    st.integers(0, 100_000),
)
huge_ints = st.builds(
    lambda sign, exponent: sign * 10**exponent, st.sampled_from([1, -1]), st.integers(15, 6000)
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | huge_ints
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=60)
    | long_text
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=12,
)
unknown_names = st.text(max_size=40) | long_text | st.sampled_from([name.upper() for name in NAMES])


def _url(scheme: str, host: str, port: str, path: str) -> str:
    return f"{scheme}://{host}{port}/{path}"


refused_urls = st.builds(
    _url,
    st.sampled_from(["http", "https", "HTTP", "ftp", "file", "gopher"]),
    st.sampled_from(REFUSED_HOSTS),
    st.sampled_from(["", ":80", ":8080", ":0", ":65536", ":http", ":-1"]),
    st.text(alphabet=string.ascii_letters + string.digits + "/?=&%.", max_size=30),
)
malformed_urls = st.sampled_from(
    [
        "http://[::1/x.png", "http:///no-host.png", "http://exa mple.com/x", "http://" + "a" * 64 + ".com/x",
        "http://" + ".".join(["a" * 60] * 5) + "/x", "https://user:pw@127.0.0.1/x?token=secret",
        "http://\ud800.com/", "http://[fe80::1%25" + "z" * 500 + "]/",
    ]
)  # fmt: skip
broken_images = st.sampled_from(
    [
        "aGVsbG8=",  # base64 of "hello": not an image
        "data:image/png,not-base64",
        "data:image/png;base64,@@@",
        "   ",
        "",
        data_uri(PICTURE[: len(PICTURE) // 2]),  # a truncated PNG
        data_uri(image_bytes((4000, 1), "PNG")),  # too far from 3:4 to pad
    ]
) | refused_urls | malformed_urls
image_values = (
    st.sampled_from(
        [
            PICTURE_URI,
            base64.b64encode(PICTURE).decode(),
            base64.urlsafe_b64encode(PICTURE).decode().rstrip("="),
        ]
    )
    | broken_images
)


def near_valid(field: str, *, cheap: bool) -> st.SearchStrategy:
    """Values for `field` around its valid ones; `cheap` keeps jobs that pass tiny and fast."""
    people = 2 if cheap else MAX_PEOPLE + 1  # lists of people: a catalog (within and over the limit)
    if field in ("garment", "mask"):
        return image_values
    if field == "person":
        return image_values | st.lists(image_values, max_size=people)
    if field == "person_index":
        return st.integers(-2, 3) | st.floats(-1, 2) | st.lists(st.integers(-1, 1), max_size=people)
    if field == "garments":
        item = st.fixed_dictionaries(
            {"garment": image_values, "category": near_valid("category", cheap=cheap)},
            optional={"garment_photo_type": near_valid("garment_photo_type", cheap=cheap)},
        )
        return st.lists(item | json_values, max_size=1 if cheap else MAX_GARMENTS + 1)
    if field == "order":
        return st.sampled_from([*OUTFIT_ORDERS, "UPPER_FIRST", "sideways"])
    if field == "model_type":
        return st.sampled_from([*MODEL_TYPES, *(name.upper() for name in MODEL_TYPES), " dc ", "xl", "auto"])
    if field == "category":
        categories = [*CATEGORIES, "dresses", "Upper", "shoes", "auto"]
        return st.sampled_from(categories) | st.integers(-1, 3) | st.just(1.0)
    if field == "steps":
        return st.sampled_from([0, 1, 51, -1, 2.5, "2"]) if cheap else st.integers(*STEPS_RANGE)
    if field == "samples":
        return st.sampled_from([0, 1, 5, 1.5]) if cheap else st.integers(*SAMPLES_RANGE)
    if field == "seed":
        return st.integers(-2, MAX_SEED + 1) | st.sampled_from([-1, 0, 2**64, 1e30])
    if field == "guidance_scale":
        low, high = GUIDANCE_RANGE
        return st.floats(low - 1, high + 1) | st.integers(0, 6)
    if field == "resolution":
        sizes = [TINY_RESOLUTION, "256x193"] if cheap else [*RESOLUTIONS, TINY_RESOLUTION]
        return st.sampled_from([*sizes, "1024x1024", " 256x192 "])
    if field == "output_format":
        return st.sampled_from([*OUTPUT_FORMATS, "jpg", "JPEG", "gif"])
    if field == "fit":
        return st.sampled_from([*FITS, "PAD", "crop"])
    if field == "garment_photo_type":
        # Through the handler only "flat": the tiny tree's random parser finds no worn garment,
        # so "model" ends every job in the same error (tests/test_garment_photo.py covers it).
        return st.sampled_from(["flat", "FLAT", "worn"] if cheap else [*GARMENT_PHOTO_TYPES, "MODEL", "worn"])
    if field == "return_mask":
        return st.booleans() | st.sampled_from([0, 1, "true"])
    if field == "output_size":
        return st.sampled_from([*OUTPUT_SIZES, "FRAME", " input ", "original"])
    if field == "composite":
        return st.booleans() | st.sampled_from([0, "false"])
    raise AssertionError(f"no strategy for field {field}")


def field_value(name: str, *, cheap: bool = False) -> st.SearchStrategy:
    """Mostly near-valid values for a known field (by name or alias), sometimes any JSON value."""
    return near_valid(ALIASES.get(name, name), cheap=cheap) | json_values


COSTLY_DEFAULTS = {"steps", "nSteps", "resolution"}
VALID_JOB = {"person_index": 0, "garment": PICTURE_URI, "resolution": TINY_RESOLUTION, "steps": 1, "seed": 7}
STATE_JOB = {**VALID_JOB, "garment": data_uri(image_bytes((48, 64), "PNG", seed=3)), "steps": 2}
"""The job whose answer must not change while others run: another garment than the fuzzed jobs'
(whose conditioning, left behind, would show) and 2 steps (after 1 Karras UniPC step the image
is the starting noise whatever the UNet computed, so a leaked garment could not show)."""
ALIASED_JOB = {"modelSelection": 1, "garment": PICTURE_URI, "resolution": TINY_RESOLUTION, "nSteps": 1}
REFUSED_URL_JOB = {**VALID_JOB, "garment": f"http://{REFUSED_HOSTS[0]}/garment.png"}


def edit_job(draw, job: dict, *, cheap: bool) -> dict:
    """`job` changed by a few edits: a field set, dropped, renamed to its alias or an unknown one
    added. `cheap`: values that pass stay tiny (see `near_valid`)."""
    job = dict(job)
    for _ in range(draw(st.integers(0, 4))):
        edit = draw(st.sampled_from(["set", "set", "drop", "alias", "unknown"]))
        if edit == "set":
            name = draw(st.sampled_from(NAMES))
            job[name] = draw(near_valid(ALIASES.get(name, name), cheap=cheap) | json_values)
        elif edit == "drop" and set(job) - COSTLY_DEFAULTS:
            # Never fall back to the published defaults (20 steps at 1024x768: half a minute on CPU).
            job.pop(draw(st.sampled_from(sorted(set(job) - COSTLY_DEFAULTS))))
        elif edit == "alias":
            alias, field = draw(st.sampled_from(sorted(ALIASES.items())))
            if field in job:
                job[alias] = job.pop(field)
        elif edit == "unknown":
            job[draw(unknown_names)] = draw(json_values)
    return job


@st.composite
def schema_inputs(draw) -> object:
    """Any JSON-like input: usually an object of known, aliased and unknown names, often a valid
    job with a few edits (random objects are almost never valid: the valid side needs these)."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(json_values)  # not an object at all (or an arbitrary one)
    if kind <= 4:
        return edit_job(draw, VALID_JOB, cheap=False)
    names = draw(st.lists(st.sampled_from(NAMES) | unknown_names, max_size=len(NAMES) + 3, unique=True))
    return {name: draw(field_value(name) if name in NAMES else json_values) for name in names}


@st.composite
def handler_inputs(draw) -> dict:
    """A valid tiny job changed by a few edits (`edit_job`). Values that reach the model stay
    tiny (1-2 steps, 1 sample, 256x192)."""
    job = dict(VALID_JOB)
    if draw(st.sampled_from(range(12))) != 7:
        # Most jobs carry a picture that fails after validation (refused URL, not an image...):
        # the fetch and decode errors get explored without running the model each time.
        job["garment"] = draw(broken_images)
    return edit_job(draw, job, cheap=True)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


def assert_one_sentence(message: object) -> None:
    assert isinstance(message, str) and message, message
    assert len(message) <= MAX_MESSAGE, (len(message), message[:200])
    assert message.isprintable(), message[:200]  # no raw newline, NUL or lone surrogate
    assert "Traceback" not in message


def test_schema_answers_a_request_or_one_bounded_sentence() -> None:
    outcomes = {"request": 0, "error": 0}

    @FUZZ
    @given(raw=schema_inputs(), person_count=st.sampled_from([None, 0, 1, 3]), loaded=st.sampled_from(
        [MODEL_TYPES, MODEL_TYPES[:1]]))  # fmt: skip
    @example(raw={"category": "x" * 12_000_000, "person_index": 0, "garment": "aGVsbG8="}, person_count=1,
             loaded=MODEL_TYPES)  # the 12-million-character value  # fmt: skip
    @example(raw=VALID_JOB, person_count=1, loaded=MODEL_TYPES)  # both kinds of answer on every run
    def fuzz(raw, person_count, loaded) -> None:
        try:
            request = parse_request(
                raw,
                person_count=person_count,
                loaded_model_types=loaded,
                extra_resolutions=(TINY_RESOLUTION,),
            )
        except InputError as error:
            message = str(error)
            assert_one_sentence(message)
            # Quoting at the source keeps sentences short: JobError's last-resort cut is never needed.
            assert not message.endswith("(message shortened)"), message
            outcomes["error"] += 1
            return
        assert isinstance(request, TryOnRequest)
        assert STEPS_RANGE[0] <= request.steps <= STEPS_RANGE[1]
        assert SAMPLES_RANGE[0] <= request.samples <= SAMPLES_RANGE[1]
        assert GUIDANCE_RANGE[0] <= request.guidance_scale <= GUIDANCE_RANGE[1]
        assert 0 <= request.seed <= MAX_SEED
        assert request.output_size in OUTPUT_SIZES and isinstance(request.composite, bool)
        # "auto" stays undecided only until the category is detected, in the job.
        assert request.model_type in loaded or (request.model_type, request.category) == ("auto", "auto")
        assert (request.person is None) != (request.person_index is None)
        outcomes["request"] += 1

    fuzz()
    # A schema that refused everything (or nothing) would pass each example: count both answers.
    assert outcomes["request"] and outcomes["error"], outcomes


class NetworkUsed(AssertionError):
    """Raised from inside a socket call that would leave the machine: the call never happens."""


class NetworkWatch:
    """Records name lookups and connections through Python's audit events while active, and
    stops any that could leave the machine before it happens (the hook runs before the call).

    Audit hooks cannot be removed, so one hook is added per process; it does nothing unless a
    watch is active (process-wide, for the duration of the `with` block)."""

    active: ClassVar[bool] = False
    seen: ClassVar[list[tuple[str, tuple]]] = []
    _installed: ClassVar[bool] = False
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def _hook(cls, event: str, args: tuple) -> None:
        if not cls.active or event not in ("socket.connect", "socket.getaddrinfo", "socket.sendto"):
            return
        target = args[:2] if event == "socket.getaddrinfo" else (args[1],)
        cls.seen.append((event, target))
        if event != "socket.getaddrinfo" or not _resolved_locally(target[0]):
            raise NetworkUsed(f"{event} {target!r} while fuzzing")

    @classmethod
    @contextmanager
    def watching(cls) -> Iterator[list]:
        with cls._lock:
            if not cls._installed:
                sys.addaudithook(cls._hook)
                cls._installed = True
        cls.seen = []
        cls.active = True
        try:
            yield cls.seen
        finally:
            cls.active = False


def _resolved_locally(host: object) -> bool:
    """A name the resolver answers without a DNS query: localhost, or a non-global IP literal."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host == "localhost":
        return True
    try:
        return not ipaddress.ip_address(str(host)).is_global
    except ValueError:
        return False


@pytest.fixture(scope="module")
def fuzz_env(tiny_root):
    """A local worker on the tiny checkpoints, private download URLs refused, no bucket."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHECKPOINTS_DIR", str(tiny_root))
        patch.setenv("EXTRA_RESOLUTIONS", TINY_RESOLUTION)
        patch.delenv(ALLOW_PRIVATE_URLS, raising=False)
        patch.delenv("RUNPOD_WEBHOOK_POST_OUTPUT", raising=False)
        for name in list(os.environ):
            if name.startswith(("BUCKET_", "AWS_", "S3_")) or name.lower() in ("http_proxy", "https_proxy"):
                patch.delenv(name)
        yield


def run_job(job_input: object) -> dict:
    return handler.handler({"id": "fuzz", "input": job_input})


def check_the_same_job_gives_the_same_bytes_around(other_jobs: Callable[[], object]) -> None:
    """The worker keeps no state between jobs: `STATE_JOB` answers the same bytes before and
    after `other_jobs()` ran other jobs on the same worker. AssertionError where it does not."""
    before = run_job(STATE_JOB)
    assert "error" not in before, before["error"]
    other_jobs()
    after = run_job(STATE_JOB)
    assert "error" not in after, after["error"]
    assert after["seed"] == before["seed"] == STATE_JOB["seed"]
    assert after["images"][0]["base64"] == before["images"][0]["base64"], (
        "the job gave other bytes after other jobs ran"
    )


def test_handler_answers_images_or_one_sentence_and_keeps_no_state(fuzz_env) -> None:
    outcomes = {"images": 0, "error": 0}
    seen: list[tuple[str, tuple]] = []

    @HANDLER_FUZZ
    @given(job_input=handler_inputs())
    # Explicit examples run on every run, whatever the generator draws (generation under load
    # or another hypothesis version may reach the model zero times): one job the model serves
    # through the seed API's aliases, so the property always sees both kinds of answer,
    @example(job_input=ALIASED_JOB)
    @example(job_input=REFUSED_URL_JOB)  # and one URL the guard looks up and refuses
    def fuzz(job_input) -> None:
        result = run_job(job_input)
        assert isinstance(result, dict)
        if "error" in result:
            assert set(result) <= {"error", "refresh_worker"}, sorted(result)
            assert_one_sentence(result["error"])
            outcomes["error"] += 1
        else:
            assert result["images"] and all(entry.get("base64") for entry in result["images"])
            outcomes["images"] += 1

    def watched_fuzz() -> None:
        with NetworkWatch.watching() as events:
            fuzz()
        seen.extend(events)

    check_the_same_job_gives_the_same_bytes_around(watched_fuzz)
    # Only the refused literal addresses were looked up (no DNS query leaves the machine), and
    # nothing was connected to.
    assert any(event == "socket.getaddrinfo" for event, _ in seen)  # the watch saw the guard's lookups
    assert not [args for event, args in seen if event != "socket.getaddrinfo"], seen
    assert all(_resolved_locally(args[0]) for _, args in seen), seen
    assert outcomes["images"] and outcomes["error"], outcomes


def test_the_state_check_fails_on_a_leaked_fusion_store(fuzz_env) -> None:
    """Mutation: with garment features left over from the previous job, a job the fuzzing
    always runs (another garment and person) changes the state job's bytes."""
    from worker.config import Settings
    from worker.runtime import get_runtime

    def another_garments_job() -> None:
        assert "images" in run_job(ALIASED_JOB)

    with (
        leaking_fusion_store(get_runtime(Settings.from_env())),
        pytest.raises(AssertionError, match="the job gave other bytes after other jobs ran"),
    ):
        check_the_same_job_gives_the_same_bytes_around(another_garments_job)

"""Validation of a job's `input` into a typed `TryOnRequest`, before any model work.

RunPod's `rp_validator` skips range checks whenever a value has the type of its default (see
the conventions reference), so every type, range and enum is checked here by hand. All
problems are collected and reported together in one sentence, each naming its field, so a
caller fixes a request in one round trip. The seed Flask API's field names are accepted as
aliases so that its clients can move over unchanged.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from core.generation import (
    DEFAULT_GUIDANCE,
    DEFAULT_RESOLUTION,
    DEFAULT_SAMPLES,
    DEFAULT_STEPS,
    GUIDANCE_RANGE,
    MAX_GARMENTS,
    MAX_PEOPLE,
    RESOLUTIONS,
    SAMPLES_RANGE,
    STEPS_RANGE,
)
from core.vocabulary import (
    AUTO,
    CATEGORIES,
    GARMENT_PHOTO_TYPES,
    MODEL_TYPES,
    OUTFIT_ORDERS,
    PUBLISHED_NAMES,
    Size,
    auto_model_type,
    category_name,
    outfit_problem,
    parse_size,
    unsupported,
)
from worker.errors import MAX_LISTED, MAX_MESSAGE, InputError, clip, describe, join_capped, quote

OUTPUT_FORMATS = ("png", "jpeg", "webp")
FITS = ("pad", "stretch")
# "input": the person photo's own size (capped by MAX_OUTPUT_MEGAPIXELS); "frame": the
# generated frame's, cut back to the photo's region when padded (the published output).
OUTPUT_SIZES = ("input", "frame")

MAX_SEED = 2**63 - 1
RANDOM_SEED_BOUND = 2**32

# The fields of one item of `garments` (an outfit); each has the top-level field's default (FIELDS).
GARMENT_ITEM_FIELDS: tuple[str, ...] = ("garment", "category", "garment_photo_type")

# Field name -> default (None: no default / optional).
FIELDS: dict[str, Any] = {
    "person": None,
    "person_index": None,
    "garment": None,
    "garments": None,
    "order": "lower_first",
    "mask": None,
    "model_type": "hd",
    "category": "upper_body",
    "steps": DEFAULT_STEPS,
    "samples": DEFAULT_SAMPLES,
    "seed": None,
    "guidance_scale": DEFAULT_GUIDANCE,
    "output_format": "png",
    "return_mask": False,
    "resolution": DEFAULT_RESOLUTION,
    "fit": "pad",
    "garment_photo_type": "flat",
    "output_size": "input",
    "composite": True,
}
# The seed Flask API's names -> the new names (`category` and `seed` kept their names).
ALIASES = {
    "modelType": "model_type",
    "modelSelection": "person_index",
    "nSteps": "steps",
    "nSamples": "samples",
    "imageScale": "guidance_scale",
}

# Characters of problems an "invalid input:" sentence lists, leaving room for "and N more".
_PROBLEMS_BUDGET = MAX_MESSAGE - 60
_IMAGE_FORMS = "an http(s) URL, base64 or a data URI"
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# The longest host name DNS can carry (RFC 1035: 255 bytes on the wire, 253 as text).
MAX_HOST_NAME = 253
# An IDNA-encoded host name: letters, digits, hyphens (and the underscores some hosts use), dots.
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")


@dataclass(frozen=True)
class ImageRef:
    """An image named by the request: `kind` is "url", "data_uri" or "base64"."""

    field: str
    kind: str
    value: str

    def describe(self) -> str:
        """A log-safe description: never the URL's path, query or user info (they may carry tokens)."""
        if self.kind == "url":
            return f"a URL on {url_host(self.value) or 'no valid host'}"
        return f"{len(self.value)} characters of {self.kind.replace('_', ' ')}"


@dataclass(frozen=True)
class GarmentItem:
    """One garment of an outfit: `category` may be "auto" (decided by the job), and so may
    `model_type` (the first loaded model that dresses the category)."""

    garment: ImageRef
    category: str
    garment_photo_type: str
    model_type: str


@dataclass(frozen=True)
class TryOnRequest:
    """A validated try-on job. `size` is (width, height) of the diffusion output.

    One of three forms: a single job (`garment` on `person` or `person_index`); an outfit
    (`garments`: one pass per garment on that person, in `order`); a catalog (`people`: house
    model indices or photos, each dressed in `garment`)."""

    garment: ImageRef | None = None
    garments: tuple[GarmentItem, ...] = ()
    order: str = "lower_first"
    people: tuple[ImageRef | int, ...] = ()
    person: ImageRef | None = None
    person_index: int | None = None
    mask: ImageRef | None = None
    model_type: str = "hd"
    category: str = "upper_body"
    steps: int = DEFAULT_STEPS
    samples: int = DEFAULT_SAMPLES
    seed: int = 0
    guidance_scale: float = DEFAULT_GUIDANCE
    output_format: str = "png"
    return_mask: bool = False
    resolution: str = DEFAULT_RESOLUTION
    fit: str = "pad"
    garment_photo_type: str = "flat"
    output_size: str = "input"
    composite: bool = True

    @property
    def size(self) -> Size:
        """(width, height) from the "HxW" resolution name."""
        return parse_size(self.resolution)

    @property
    def pipeline_category(self) -> str:
        """The published name of the category (what the pipeline and the mask rules say); the
        category must be decided ("auto" is resolved by the job before any model runs)."""
        return PUBLISHED_NAMES[self.category]


def parse_request(
    raw: Any,
    *,
    person_count: int | None = None,
    loaded_model_types: Sequence[str] = MODEL_TYPES,
    extra_resolutions: Sequence[str] = (),
) -> TryOnRequest:
    """Validate a job's `input` and return the request, or raise `InputError` listing every problem.

    `person_count` is how many house model photos exist (for `person_index`); `None` skips that
    bound. `loaded_model_types` are the model types this worker has loaded; `extra_resolutions`
    are "HxW" sizes the operator allowed beyond the published ones (small sizes for CPU tests).
    """
    if not isinstance(raw, Mapping):
        raise InputError(
            f"input must be a JSON object with the job's fields, not {describe(raw)}; "
            f"valid fields are {_field_list()}"
        )
    errors: list[str] = []
    fields = _Fields(raw, errors)
    out: dict[str, Any] = {}

    # Images: exactly one person source (or a list of them: a catalog); the garment is required
    # (or a list of them: an outfit); the mask is optional.
    has_person, has_index = fields.get("person") is not None, fields.get("person_index") is not None
    if not has_person and not has_index:
        errors.append(f"person is required ({_IMAGE_FORMS}), or give person_index")
    elif has_person and has_index:
        errors.append(f"give either person or {fields.name('person_index')}, not both")
    elif isinstance(fields.get("person"), list) or isinstance(fields.get("person_index"), list):
        out["people"] = _people(fields, person_count, errors)
    elif has_person:
        out["person"] = _image_ref(fields, "person", errors)
    else:
        out["person_index"] = _person_index(fields, person_count, errors)
    outfit = fields.get("garments") is not None
    if outfit:
        _outfit_conflicts(fields, "people" in out, errors)
    elif fields.get("garment") is None:
        errors.append(f"garment is required ({_IMAGE_FORMS}), or give garments (an outfit)")
    else:
        out["garment"] = _image_ref(fields, "garment", errors)
    if fields.get("mask") is not None:
        out["mask"] = _image_ref(fields, "mask", errors)
        if "people" in out:
            errors.append("mask is drawn over one person photo: a catalog (a list of people) takes none")

    model_type = out["model_type"] = _choice(fields, "model_type", (*MODEL_TYPES, AUTO), errors, lower=True)
    if outfit:
        given = fields.get("model_type") is not None
        out["garments"] = _garments(fields, model_type if given else AUTO, loaded_model_types, errors)
        out["order"] = _choice(fields, "order", tuple(OUTFIT_ORDERS), errors, lower=True)
    else:
        _single_garment(fields, out, loaded_model_types, errors)
    out["steps"] = _integer(fields, "steps", *STEPS_RANGE, errors)
    out["samples"] = _integer(fields, "samples", *SAMPLES_RANGE, errors)
    out["seed"] = _seed(fields, errors)
    out["guidance_scale"] = _number(fields, "guidance_scale", *GUIDANCE_RANGE, errors)
    out["output_format"] = _choice(fields, "output_format", OUTPUT_FORMATS, errors, lower=True)
    out["resolution"] = _choice(fields, "resolution", (*RESOLUTIONS, *extra_resolutions), errors)
    out["fit"] = _choice(fields, "fit", FITS, errors, lower=True)
    out["return_mask"] = _boolean(fields, "return_mask", errors)
    out["output_size"] = _choice(fields, "output_size", OUTPUT_SIZES, errors, lower=True)
    out["composite"] = _boolean(fields, "composite", errors)

    if errors:
        raise InputError("invalid input: " + join_capped(errors, "; ", "problems", budget=_PROBLEMS_BUDGET))
    return TryOnRequest(**{key: value for key, value in out.items() if value is not None})


def _single_garment(
    fields: _Fields, out: dict[str, Any], loaded_model_types: Sequence[str], errors: list[str]
) -> None:
    """`category`, `garment_photo_type` and the model type of a job with one garment, into `out`."""
    category = out["category"] = _category(fields, errors)
    photo_type = out["garment_photo_type"] = _choice(
        fields, "garment_photo_type", GARMENT_PHOTO_TYPES, errors, lower=True
    )
    model_type = out["model_type"]
    if category == AUTO and fields.get("model_type") is None:
        model_type = AUTO  # a detected category picks its model too
    out["model_type"] = _garment_model_type(category, photo_type, model_type, loaded_model_types, "", errors)


def _garment_model_type(
    category: str | None,
    photo_type: str | None,
    model_type: str | None,
    loaded_model_types: Sequence[str],
    where: str,
    errors: list[str],
) -> str | None:
    """The model type for a garment of `category` ("auto" where the category is), with the
    problems of the combination; `where` prefixes them for an item of `garments`."""
    if category == AUTO and photo_type not in (None, "flat"):
        errors.append(
            f"{where}category 'auto' needs a flat garment photo (garment_photo_type 'flat'): a person wears "
            "several garments at once, so name the category of the one to try on"
        )
    if model_type == AUTO and category not in (None, AUTO):
        model_type = auto_model_type(category, loaded_model_types)
        if model_type is None:
            loaded = "is loaded on this worker"
            errors.append(f"{where}model_type 'auto': no model for category {category!r} {loaded}")
    if model_type not in (None, AUTO) and model_type not in loaded_model_types:
        loaded = ", ".join(loaded_model_types)
        if not where:  # said once, for the request, not once per garment
            errors.append(f"model_type {model_type!r} is not loaded on this worker (loaded: {loaded})")
    decided = model_type not in (None, AUTO) and category not in (None, AUTO)
    if decided and (problem := unsupported(model_type, category)):
        errors.append(where + problem)
    return model_type


def _outfit_conflicts(fields: _Fields, catalog: bool, errors: list[str]) -> None:
    """What cannot go with `garments`: the top-level garment fields, a catalog, a caller's mask."""
    for name in GARMENT_ITEM_FIELDS:
        if fields.get(name) is not None:
            errors.append(f"{name} goes inside each item of garments (give garment or garments, not both)")
    if catalog:
        errors.append("garments dress one person: a catalog (a list of people) takes one garment")
    if fields.get("mask") is not None:
        errors.append("mask cannot be combined with garments: each pass computes its own mask")


def _garments(
    fields: _Fields, model_type: str | None, loaded_model_types: Sequence[str], errors: list[str]
) -> tuple[GarmentItem, ...] | None:
    """The items of `garments` (1 to MAX_GARMENTS), each checked like a single job's garment
    fields, and the combination checked where the categories are known (see `outfit_problem`)."""
    value = fields.get("garments")
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_GARMENTS:
        errors.append(
            f"garments must be a list of 1 to {MAX_GARMENTS} objects "
            f"{{garment, category, garment_photo_type}}, not {describe(value)}"
        )
        return None
    items: list[GarmentItem] = []
    for position, raw in enumerate(value):
        where = f"garments[{position}]."
        if not isinstance(raw, Mapping):
            errors.append(f"{where[:-1]} must be an object {{garment, category}}, not {describe(raw)}")
            continue
        unknown = [quote(key) for key in raw if key not in GARMENT_ITEM_FIELDS][:MAX_LISTED]
        if unknown:
            valid = ", ".join(GARMENT_ITEM_FIELDS)
            errors.append(f"{where[:-1]}: unknown field(s) {', '.join(unknown)} (valid: {valid})")
        item = _Fields({key: raw[key] for key in raw if key in GARMENT_ITEM_FIELDS}, errors, prefix=where)
        garment = _image_ref(item, "garment", errors) if item.get("garment") is not None else None
        if item.get("garment") is None:
            errors.append(f"{where}garment is required ({_IMAGE_FORMS})")
        category = _category(item, errors)
        photo_type = _choice(item, "garment_photo_type", GARMENT_PHOTO_TYPES, errors, lower=True)
        item_model = _garment_model_type(category, photo_type, model_type, loaded_model_types, where, errors)
        if None not in (garment, category, photo_type, item_model):
            items.append(GarmentItem(garment, category, photo_type, item_model))
    decided = [item.category for item in items if item.category != AUTO]
    if len(items) == len(value) and (problem := outfit_problem(decided)):
        errors.append(problem)
    return tuple(items) if len(items) == len(value) else None


def _people(
    fields: _Fields, person_count: int | None, errors: list[str]
) -> tuple[ImageRef | int, ...] | None:
    """A catalog's people: `person` or `person_index` as a list of 1 to MAX_PEOPLE entries."""
    field = "person" if fields.get("person") is not None else "person_index"
    name, value = fields.name(field), fields.get(field)
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_PEOPLE:
        errors.append(f"{name} lists 1 to {MAX_PEOPLE} people (a catalog), not {describe(value)}")
        return None
    before = len(errors)
    entries: list[ImageRef | int | None] = []
    for position, entry in enumerate(value):
        label = f"{name}[{position}]"
        one = _Fields({field: entry}, errors, names={field: label})
        if field == "person":
            entries.append(_image_ref(one, "person", errors))
        else:
            entries.append(_person_index(one, person_count, errors, base_name=name))
    return tuple(entries) if len(errors) == before else None


class _Fields:
    """The input's values under their new names, remembering which spelling the caller used.

    Unknown keys and a field given under both its name and its alias are recorded as errors.
    Messages name the key the caller sent (e.g. `nSteps`), which is what they will look for.
    """

    def __init__(
        self, raw: Mapping, errors: list[str], *, prefix: str = "", names: Mapping[str, str] | None = None
    ) -> None:
        """`prefix` ("garments[1].") or `names` name the values of a list's item in messages."""
        self.values: dict[str, Any] = {}
        self.names: dict[str, str] = {}
        if prefix or names:
            for key, value in raw.items():
                self.values[key] = value
                self.names[key] = (names or {}).get(key, prefix + key)
            return
        unknown = [key for key in raw if key not in FIELDS and key not in ALIASES]
        if unknown:
            # Only the few names shown are quoted: a request may hold a million unknown ones.
            shown = [quote(key) for key in unknown[:MAX_LISTED]]
            names = join_capped(shown, budget=MAX_MESSAGE // 4, total=len(unknown))
            errors.append(
                f"unknown field{'s' if len(unknown) > 1 else ''} {names} "
                f"(valid fields are {_field_list()})"
            )
        for key, value in raw.items():
            field = ALIASES.get(key, key)
            if field not in FIELDS:
                continue
            if field in self.names:
                errors.append(f"{self.names[field]} and {key} are the same field (give only one)")
                continue
            self.values[field], self.names[field] = value, key

    def get(self, field: str) -> Any:
        return self.values.get(field)

    def name(self, field: str) -> str:
        return self.names.get(field, field)


def _field_list() -> str:
    aliases = ", ".join(f"{alias} (= {target})" for alias, target in ALIASES.items())
    return f"{', '.join(FIELDS)}, and the seed API's aliases {aliases}"


def _image_ref(fields: _Fields, field: str, errors: list[str]) -> ImageRef | None:
    """Classify an image field as URL, data URI or plain base64 (decoded later, before models)."""
    value, name = fields.get(field), fields.name(field)
    if not isinstance(value, str):
        errors.append(f"{name} must be a string ({_IMAGE_FORMS}), not {quote(value)}")
        return None
    text = value.strip()
    if not text:
        errors.append(f"{name} is empty")
        return None
    scheme = _URL_SCHEME.match(text)
    if scheme and scheme.group(1).lower() == "data":
        return ImageRef(name, "data_uri", text)
    if scheme and text[scheme.end() : scheme.end() + 2] == "//":
        if scheme.group(1).lower() not in ("http", "https"):
            errors.append(f"{name}: {clip(scheme.group(1))}:// URLs are not allowed (use {_IMAGE_FORMS})")
            return None
        problem = url_problem(text)
        if problem:
            errors.append(f"{name}: not a valid URL ({problem})")
            return None
        return ImageRef(name, "url", text)
    return ImageRef(name, "base64", text)


def url_host(url: str) -> str | None:
    """The URL's host name as messages and logs show it (escaped, long names shortened), or
    None when it has none or the URL cannot be parsed."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return clip(host) if host else None


def url_problem(url: str) -> str | None:
    """Why `url` cannot be fetched (None when it can), without echoing any part of it.

    Checked at validation so that a malformed URL is an input error before any download, not
    a ValueError or UnicodeError from deep inside urllib, requests or the resolver. The host is
    IDNA-encoded as the resolver will encode it (a label over 63 characters fails there).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return "it cannot be parsed"
    try:
        _ = parts.port  # reading it validates it
    except ValueError:
        return "the port is not a number from 0 to 65535"
    if not host:
        return "it has no host"
    if "%" in host:  # an IPv6 zone index names an interface of this machine: never a public address
        return "the host has an IPv6 zone index"
    if _is_ip_address(host):
        return None
    try:
        encoded = host.encode("idna").decode("ascii")
    except UnicodeError:
        return "the host name is not a valid domain name"
    if not _HOST_NAME.fullmatch(encoded):
        return "the host name is not a valid domain name"
    if len(encoded.rstrip(".")) > MAX_HOST_NAME:
        return f"the host name is longer than {MAX_HOST_NAME} characters"
    return None


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _person_index(
    fields: _Fields, person_count: int | None, errors: list[str], *, base_name: str | None = None
) -> int | None:
    """The 0-based house model index; the seed API's `modelSelection` counts from 1 (`base_name`:
    the list's name, for an entry of one)."""
    name = fields.name("person_index")
    base = 1 if (base_name or name) == "modelSelection" else 0
    value = fields.get("person_index")
    index = _as_int(value)
    if person_count == 0:
        errors.append(f"{name} cannot be used: no house model photos are installed")
        return None
    high = None if person_count is None else person_count - 1 + base
    if index is None or index < base or (high is not None and index > high):
        bound = f"from {base} to {high}" if high is not None else f">= {base}"
        errors.append(f"{name} must be an integer {bound}, not {describe(value)}")
        return None
    return index - base


def _choice(fields: _Fields, field: str, options: tuple[str, ...], errors: list[str], *, lower: bool = False):
    value = fields.get(field)
    if value is None:
        return FIELDS[field]
    if isinstance(value, str):
        key = value.strip().lower() if lower else value.strip()
        if field == "output_format" and key == "jpg":
            key = "jpeg"
        if key in options:
            return key
    errors.append(f"{fields.name(field)} must be one of {', '.join(options)}, not {quote(value)}")
    return None


def _category(fields: _Fields, errors: list[str]) -> str | None:
    value = fields.get("category")
    if value is None:
        return FIELDS["category"]
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    name = category_name(value)
    if name is not None:
        return name
    choices = ", ".join((*CATEGORIES, AUTO))
    errors.append(f"{fields.name('category')} must be one of {choices} (or 0, 1, 2), not {quote(value)}")
    return None


def _as_int(value: Any) -> int | None:
    """An int from a JSON number (20 or 20.0); None for booleans, fractions and anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _integer(fields: _Fields, field: str, low: int, high: int, errors: list[str]) -> int | None:
    value = fields.get(field)
    if value is None:
        return FIELDS[field]
    number = _as_int(value)
    if number is None or not low <= number <= high:
        errors.append(f"{fields.name(field)} must be an integer from {low} to {high}, not {describe(value)}")
        return None
    return number


def _number(fields: _Fields, field: str, low: float, high: float, errors: list[str]) -> float | None:
    value = fields.get(field)
    if value is None:
        return FIELDS[field]
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        errors.append(f"{fields.name(field)} must be a number from {low} to {high}, not {describe(value)}")
        return None
    return float(value)


def _boolean(fields: _Fields, field: str, errors: list[str]) -> bool | None:
    value = fields.get(field)
    if value is None:
        return FIELDS[field]
    if not isinstance(value, bool):
        errors.append(f"{fields.name(field)} must be true or false, not {describe(value)}")
        return None
    return value


def _seed(fields: _Fields, errors: list[str]) -> int | None:
    """The request's seed, or a fresh random one for an absent seed or -1 (returned to the caller)."""
    value = fields.get("seed")
    if value is None or _as_int(value) == -1:
        return secrets.randbelow(RANDOM_SEED_BOUND)
    seed = _as_int(value)
    if seed is None or not 0 <= seed <= MAX_SEED:
        errors.append(
            f"seed must be an integer from 0 to {MAX_SEED} (or -1 for a random one), not {describe(value)}"
        )
        return None
    return seed

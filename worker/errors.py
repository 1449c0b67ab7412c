"""Errors that end a job with a message meant for the caller, and how messages quote the caller.

The handler turns a `JobError` into RunPod's `{"error": "<sentence>"}` result instead of
letting the SDK serialise a traceback: callers get one readable sentence, and the worker
stays up for the next job. Anything that is not a `JobError` is a bug and is raised.

Every message is bounded, whatever the request held: RunPod drops a result over 10 MB, so an
error that echoed a 12-million-character value whole would reach nobody. Messages quote a
caller's value through `quote` / `clip` (at most `MAX_QUOTED` characters of it, escaped, then
its length), list problems through `join_capped`, and `JobError` itself cuts whatever still
comes out longer than `MAX_MESSAGE`, as a last line of defence.
"""

import math
from collections.abc import Iterable, Mapping
from typing import Any

# Characters of a caller's value (or field name) that a message shows before an ellipsis.
MAX_QUOTED = 40
# Problems (or unknown names) a message lists before "and N more".
MAX_LISTED = 8
# Characters in any error sentence the worker returns.
MAX_MESSAGE = 1000
_SHORTENED = "… (message shortened)"
# Integers of up to this many digits are shown whole; `str()` of a huge one would even raise
# (Python 3.11+ refuses to convert over 4300 digits) and is quadratic before that.
_MAX_DIGITS_SHOWN = MAX_QUOTED
_EXACT_DIGITS = 100_000
_LOG10_2 = math.log10(2)


class JobError(Exception):
    """A failure the caller can understand; `str(error)` is the whole message (bounded).

    `refresh_worker` asks RunPod to recycle this worker after the job (used after a GPU
    failure: after out-of-memory the allocators may be fragmented for good, after a CUDA
    error the context is unusable).
    """

    def __init__(self, message: str, *, refresh_worker: bool = False) -> None:
        super().__init__(bounded(message))
        self.refresh_worker = refresh_worker


class InputError(JobError):
    """The request itself is wrong: a field is missing, mistyped, out of range or unreadable."""


class OutOfMemoryJobError(JobError):
    """The GPU ran out of memory; the worker freed its cache and asks to be refreshed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, refresh_worker=True)


class GpuFailureJobError(JobError):
    """A CUDA error left the GPU context unusable; the worker asks to be replaced."""

    def __init__(self, message: str) -> None:
        super().__init__(message, refresh_worker=True)


class ResultTooLargeError(JobError):
    """The result would exceed RunPod's payload limit if returned inline."""


def clip(text: str, limit: int = MAX_QUOTED) -> str:
    """`text` for a message: non-printable characters escaped, at most `limit` characters shown.

    A longer text ends in an ellipsis and its length (`abcd… (12000000 characters)`). Only the
    part shown is ever escaped, so a huge value costs no more than a short one.
    """
    shown, cut = _escaped_prefix(text, limit, "\\")
    return f"{shown}… ({len(text)} characters)" if cut else shown


def quote(value: Any) -> str:
    """A caller's JSON value as a message shows it: bounded, escaped, in JSON's words.

    Strings are quoted (`'abc'`, or `'abcd…' (5000 characters)`); numbers, booleans and null
    read as JSON writes them (`true`, `NaN`); an integer too long to show becomes its digit
    count; arrays and objects are described by their size, never dumped.
    """
    if isinstance(value, str):
        shown, cut = _escaped_prefix(value, MAX_QUOTED, "\\'")
        return f"'{shown}…' ({len(value)} characters)" if cut else f"'{shown}'"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if abs(value) < 10**_MAX_DIGITS_SHOWN:
            return str(value)
        return f"an integer of {_digit_count(abs(value))} digits"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, list | tuple):
        return f"an array of {_count(len(value), 'item')}" if value else "an empty array"
    if isinstance(value, Mapping):
        return f"an object with {_count(len(value), 'field')}" if value else "an empty object"
    return f"a {clip(type(value).__name__)} value"


def describe(value: Any) -> str:
    """`quote`, saying "a string" first: for fields that expect something else, where `'20'`
    for `20` is the mistake to point out."""
    return f"a string ({quote(value)})" if isinstance(value, str) else quote(value)


def join_capped(
    items: Iterable[str],
    separator: str = ", ",
    what: str = "",
    limit: int = MAX_LISTED,
    budget: int = MAX_MESSAGE // 2,
    total: int | None = None,
) -> str:
    """The items joined, then "and N more <what>": at most `limit` of them, and no more than
    fit in `budget` characters (the first is always shown; `bounded` still cuts a huge one).

    `total` counts items beyond those passed, so that a caller with a million of them need
    only prepare the first `limit`."""
    items = list(items)
    total = len(items) if total is None else total
    shown: list[str] = []
    length = 0
    for item in items[:limit]:
        length += len(item) + len(separator)
        if shown and length > budget:
            break
        shown.append(item)
    if len(shown) == total:
        return separator.join(shown)
    more = f"and {total - len(shown)} more" + (f" {what}" if what else "")
    return separator.join([*shown, more])


def bounded(message: str) -> str:
    """`message` with non-printable characters escaped, cut to at most `MAX_MESSAGE` characters."""
    message = str(message)
    if len(message) <= MAX_MESSAGE and message.isprintable():
        return message
    shown, cut = _escaped_prefix(message, MAX_MESSAGE)
    if not cut:
        return shown
    shown, _ = _escaped_prefix(message, MAX_MESSAGE - len(_SHORTENED))
    return shown + _SHORTENED


def _escaped_prefix(text: str, limit: int, specials: str = "") -> tuple[str, bool]:
    """The escaped start of `text`, at most `limit` characters (never half an escape), and
    whether anything was left out. Non-printable characters are written as Python escapes;
    `specials` (the backslash, a quote) get a backslash, so that a quoted value stays readable."""
    pieces: list[str] = []
    length = 0
    for char in text:
        piece = _escape(char, specials)
        if length + len(piece) > limit:
            return "".join(pieces), True
        pieces.append(piece)
        length += len(piece)
    return "".join(pieces), False


def _escape(char: str, specials: str) -> str:
    if char in specials:
        return "\\" + char
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{code:02x}")
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _digit_count(number: int) -> str:
    """How many decimal digits `number` (> 0) has, without converting it to text: exact up to
    `_EXACT_DIGITS` digits (one power of ten to compare with, milliseconds), "about" beyond."""
    bits = number.bit_length()
    digits = math.floor(bits * _LOG10_2) + 1  # the true count, or one more
    if digits > _EXACT_DIGITS:
        return f"about {digits}"
    return str(digits - 1 if number < 10 ** (digits - 1) else digits)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"

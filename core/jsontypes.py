"""How a message names the JSON type of a value the caller sent ("not an array")."""

from collections.abc import Mapping


def json_type(value: object) -> str:
    """The JSON type of a decoded JSON `value`, with its article: "a string", "an object", ...

    Messages name the type, never the value, where the value may hold secrets (an `s3Config`)."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):  # before numbers: a bool is an int in Python
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"

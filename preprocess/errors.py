"""Typed errors of the preprocessing stage.

They subclass ValueError because each one means "this input photo cannot be used", which
callers (the worker) report to the user as a bad-input error rather than a crash.
"""


class PreprocessError(ValueError):
    """The person photo cannot be turned into a try-on mask."""


class NoPersonDetectedError(PreprocessError):
    """OpenPose found no body in the person photo."""

    def __init__(self, message: str = "no person detected in the person image") -> None:
        super().__init__(message)


class NoGarmentRegionError(PreprocessError):
    """The parse map has no pixel of the garment region to repaint for this category."""


class NoWornGarmentError(PreprocessError):
    """A garment photographed on a person: the parse map has no pixel of the garment to cut out."""

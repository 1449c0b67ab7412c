"""The pipeline's own failures, importable without torch (the worker maps them to job errors)."""

from __future__ import annotations


class NonFiniteOutputError(RuntimeError):
    """A result held NaN or infinite values, which would have come out as black pixels.

    `stage` names where: "denoising" (the latents after the last step) or "VAE decode" (the
    pixels, after the float32 retry where there was one).
    """

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage

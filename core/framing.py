"""Where a person photo sits in the model's frame, and the way back.

The models take a 3:4 frame (`core.vocabulary.MODEL_FRAME`). fit "pad" scales the photo into it
and pads the rest (`fit_to_frame`); `PadBox` remembers where the photo landed, so that anything
made from the frame, at any resolution, can be cut back to the photo's region (`crop`, the
frame-size result) or resampled from it at the photo's own size (`region`, used by
`worker.composite`). Pure Pillow: no torch, RunPod or HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

Box = tuple[float, float, float, float]
"""left, top, right, bottom, in (possibly fractional) pixels."""


@dataclass(frozen=True)
class PadBox:
    """Where the photo sits inside the padded frame it was fitted into (pixels of the frame)."""

    canvas: tuple[int, int]
    box: tuple[int, int, int, int]  # left, top, right, bottom

    def region(self, size: tuple[int, int]) -> Box:
        """The photo's box in a picture of `size` made from the frame (fractional pixels):
        the frame may have been generated at another resolution than the canvas."""
        scale_x, scale_y = size[0] / self.canvas[0], size[1] / self.canvas[1]
        left, top, right, bottom = self.box
        return left * scale_x, top * scale_y, right * scale_x, bottom * scale_y

    def crop(self, image: Image.Image) -> Image.Image:
        """Cut the photo's region out of an output made from the frame at any size.

        The output keeps the model's resolution: the region is returned at the size it has in
        the output, not scaled back to the input photo's size.
        """
        return image.crop(rounded(self.region(image.size)))


def rounded(box: Box) -> tuple[int, int, int, int]:
    """`box` on whole pixels (what `PadBox.crop` cuts)."""
    left, top, right, bottom = box
    return round(left), round(top), round(right), round(bottom)


def fitted_size(size: tuple[int, int], frame: tuple[int, int]) -> tuple[int, int]:
    """The largest size of `size`'s aspect ratio that fits inside `frame` (at least 1x1)."""
    width, height = size
    scale = min(frame[0] / width, frame[1] / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit_to_frame(
    image: Image.Image,
    frame: tuple[int, int],
    fill: int | tuple[int, ...],
    resample: Image.Resampling = Image.Resampling.BICUBIC,
) -> tuple[Image.Image, PadBox]:
    """Resize `image` to fit inside `frame` (keeping its aspect) and centre it on a `fill` canvas.

    The canvas is always `frame`, whatever the photo's shape: padding the photo at its own size
    would let a 60000x1 picture (within the pixel limit) ask for a 60000x80000 canvas.
    """
    fitted = fitted_size(image.size, frame)
    if fitted != image.size:
        # reducing_gap: a fast box reduction first for big photos (Pillow ignores it for NEAREST).
        image = image.resize(fitted, resample, reducing_gap=3.0)
    left, top = (frame[0] - fitted[0]) // 2, (frame[1] - fitted[1]) // 2
    padded = Image.new(image.mode, frame, fill)
    padded.paste(image, (left, top))
    return padded, PadBox(frame, (left, top, left + fitted[0], top + fitted[1]))

"""The result at the person photo's own size: the generated frame laid back over the photo.

The models see a 768x1024 frame; shops send 2000x3000 photos and expect the same photo back
with only the garment changed. The published code returns the decoded frame as it is, so
every pixel, face and background included, has been redrawn by the VAE. Here:

- outside the repaint mask, and beyond a blend band around it, the output's pixels are the
  photo's own pixels, bit for bit;
- inside the mask, the generated image, resampled from the photo's region of the frame
  (through the pad box for fit "pad", undoing the stretch for fit "stretch") to the output
  size with a Lanczos filter;
- outside the mask's edge, a band `blend_band(size)` pixels wide (2 % of the output's shorter
  side) in which the generated image fades into the photo (a smoothstep of the distance to
  the mask), so that no seam shows. The band lies outside the mask, not across it: just
  outside the mask the generated image is the model's copy of the person (the diffusion was
  told to keep it), so the fade mixes the photo with its own copy, never with the old garment.

`composite` takes one generated frame per sample, the mask the diffusion used (in the frame's
pixels) and where the photo sits in the frame, so it can be called per person and per pass.

Cost: the work is Pillow's C resampling and pasting plus one OpenCV distance transform, all
with the GIL released. The frames are resampled in horizontal strips of fixed height, one
task per strip and sample, on a thread pool sized from the container's CPUs
(`worker.threads.container_cpus`): a 12-megapixel result uses every core even for one sample.
Each strip holds what resampling the whole picture would (`_resampled_piece`), and the strips
are fixed, so every host returns the same bytes whatever its core count. Only the mask's
bounding box (grown by the band) is resampled and blended; the blend is Pillow's integer alpha
paste (uint8, exact at 0 and 255). Floats exist once per job, for the distance transform over
that box, never per sample.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np
from PIL import Image

from core.framing import Box, PadBox, rounded
from core.vocabulary import Size
from worker.threads import LazyPool

FEATHER = 0.02
"""Width of the blend band, as a fraction of the output's shorter side."""
STRIP_ROWS = 256
"""Output rows resampled per task. Fixed, so that the pixels do not depend on the host's CPUs."""
RESAMPLE = Image.Resampling.LANCZOS
"""The filter from the frame (or the photo) to the output size, up or down."""
_LANCZOS_SUPPORT = 3.0
"""Pillow's Lanczos reaches 3 source pixels either side (times the factor when shrinking)."""


def _smoothstep_ramp() -> np.ndarray:
    """Alpha (255 = generated, 0 = photo) for each 1/255 of the band's width, smoothstep-shaped."""
    t = np.arange(256, dtype=np.float64) / 255.0
    return np.rint(255.0 * (1.0 - t * t * (3.0 - 2.0 * t))).astype(np.uint8)


_RAMP = _smoothstep_ramp()
Task = Callable[[], None]
PixelBox = tuple[int, int, int, int]
"""left, top, right, bottom in whole pixels."""

_executor = LazyPool("composite")


def capped_size(size: tuple[int, int], max_pixels: int) -> Size:
    """`size`, scaled down (aspect kept, at least 1x1) when it has more than `max_pixels`."""
    width, height = size
    if width * height <= max_pixels:
        return Size(width, height)
    scale = math.sqrt(max_pixels / (width * height))
    # The epsilon: 4740 x sqrt(12e6 / (4740 x 6320)) is 3000, not 2999.9999999999995.
    width, height = max(1, math.floor(width * scale + 1e-9)), max(1, math.floor(height * scale + 1e-9))
    while width * height > max_pixels:  # the epsilon overshot
        width, height = (width - 1, height) if width >= height else (width, height - 1)
    return Size(width, height)


def photo_region(frame_size: tuple[int, int], pad: PadBox | None) -> Box:
    """Where the photo lies in a generated frame of `frame_size`: the pad box (fit "pad"), or
    the whole frame (fit "stretch": the photo was stretched over all of it)."""
    if pad is None:
        return 0.0, 0.0, float(frame_size[0]), float(frame_size[1])
    return pad.region(frame_size)


def region_size(frame: tuple[int, int], pad: PadBox | None) -> Size:
    """The size of the photo's region cut out of a frame of size `frame` (output_size "frame")."""
    left, top, right, bottom = rounded(photo_region(frame, pad))
    return Size(right - left, bottom - top)


def blend_band(size: tuple[int, int]) -> int:
    """Width in pixels of the band outside the mask where the generated image fades into the
    photo: `FEATHER` of the shorter side, whole pixels (0 for a tiny output: a hard edge)."""
    return math.floor(FEATHER * min(size))


def composite(
    photo: Image.Image,
    frames: Sequence[Image.Image],
    mask: Image.Image,
    pad: PadBox | None,
    size: tuple[int, int],
    *,
    keep_photo: bool = True,
) -> tuple[list[Image.Image], Image.Image]:
    """Each generated frame as a picture of `size`, and the mask at that size.

    `photo` is the person photo as it entered the job (upright, transparency flattened onto
    white, at its own size); `frames` the generated images and `mask` the repaint mask the
    diffusion used (`L`, 255 = repaint), both in the frame's pixels; `pad` where the photo sits
    in the frame (None for fit "stretch": it covers the whole frame). With `keep_photo` the
    photo's pixels are kept outside the mask and its band (see the module's docstring);
    without, the output is the generated image alone. When the photo's region of the frame
    already has `size`, it is cut out, not resampled: output_size "frame" with
    `keep_photo=False` is exactly the frame as the model made it.
    """
    size = Size(*size)
    region = photo_region(mask.size, pad)
    out_mask = output_mask(mask, pad, size)
    if not keep_photo:
        return _resample(frames, region, size), out_mask
    base = photo if photo.size == size else _resample([photo], (0, 0, *photo.size), size)[0]
    outputs = _run([base.copy for _ in frames])
    feathered = feather(out_mask, blend_band(size))
    if feathered is None:  # nothing to repaint in the photo's region
        return outputs, out_mask
    box, alpha = feathered

    def blend(target: Image.Image, frame: Image.Image, strip: PixelBox) -> Task:
        return lambda: _paste_strip(target, frame, region, size, strip, (alpha, box))

    pairs = zip(outputs, frames, strict=True)
    _run([blend(target, frame, strip) for target, frame in pairs for strip in _strips(box)])
    return outputs, out_mask


def output_mask(mask: Image.Image, pad: PadBox | None, size: tuple[int, int]) -> Image.Image:
    """The repaint `mask` (in the frame's pixels) over the photo's region, at the output `size`:
    what `return_mask` returns beside the images."""
    return _fit(mask, photo_region(mask.size, pad), Size(*size), Image.Resampling.NEAREST)


def feather(mask: Image.Image, band: int) -> tuple[PixelBox, Image.Image] | None:
    """The blend's alpha (`L`: 255 inside the mask, fading to 0 at `band` pixels from it) over
    the mask's bounding box grown by `band`, with that box; None for an empty mask.

    Beyond the box the alpha is 0 everywhere, so nothing there is computed or touched.
    """
    found = mask.getbbox()
    if found is None:
        return None
    left, top, right, bottom = found
    width, height = mask.size
    box = (max(0, left - band), max(0, top - band), min(width, right + band), min(height, bottom + band))
    inside = np.asarray(mask.crop(box))
    if band == 0:
        return box, Image.fromarray(inside)
    # Distance of every pixel to the nearest mask pixel (0 inside), then the ramp: 255 steps over
    # the band, saturating at its outer edge, where the ramp reaches 0.
    distance = cv2.distanceTransform(cv2.bitwise_not(inside), cv2.DIST_L2, cv2.DIST_MASK_5)
    steps = cv2.convertScaleAbs(distance, alpha=255.0 / band)
    return box, Image.fromarray(cv2.LUT(steps, _RAMP))


def _cut(region: Box, size: Size) -> PixelBox | None:
    """`region` on whole pixels when that has `size` (it is then cut out, not resampled), else None."""
    whole = rounded(region)
    return whole if (whole[2] - whole[0], whole[3] - whole[1]) == size else None


def _fit(image: Image.Image, region: Box, size: Size, resample: Image.Resampling) -> Image.Image:
    """`region` of `image` at `size`, in one piece (for the mask: NEAREST is cheap)."""
    cut = _cut(region, size)
    return image.crop(cut) if cut else image.resize(size, resample, box=_inside(region, image.size))


def _resample(images: Sequence[Image.Image], region: Box, size: Size) -> list[Image.Image]:
    """`region` of each image at `size`: cut out when it has that size, else resampled, every
    strip of every image at once on the pool."""
    cut = _cut(region, size)
    if cut:
        return [image.crop(cut) for image in images]
    targets = [Image.new(image.mode, size) for image in images]

    def draw(target: Image.Image, image: Image.Image, strip: PixelBox) -> Task:
        return lambda: _paste_strip(target, image, region, size, strip)

    pairs = zip(targets, images, strict=True)
    _run([draw(target, image, strip) for target, image in pairs for strip in _strips((0, 0, *size))])
    return targets


def _paste_strip(
    target: Image.Image,
    source: Image.Image,
    region: Box,
    size: Size,
    strip: PixelBox,
    matte: tuple[Image.Image, PixelBox] | None = None,
) -> None:
    """Resample the part of `source`'s `region` that lands on `strip` (output pixels) and paste
    it into `target`, through the alpha of `matte` (an alpha and the output box it covers)."""
    piece = _resampled_piece(source, region, size, strip)
    left, top, right, bottom = strip
    alpha = None
    if matte is not None:
        cover, (x, y, _, _) = matte
        alpha = cover.crop((left - x, top - y, right - x, bottom - y))
    # Strips are disjoint: each task writes its own rows of `target` (Pillow releases the GIL).
    target.paste(piece, (left, top), alpha)


def _resampled_piece(source: Image.Image, region: Box, size: Size, strip: PixelBox) -> Image.Image:
    """The pixels `strip` of `source`'s `region` resampled to `size`: a horizontal, then a
    vertical Lanczos pass over just the source rows the strip needs.

    The passes are made one at a time because Pillow, given both at once, picks their order
    by the shape of the piece, and the order changes the rounding between them: whole
    pictures and strips would then disagree. Done this way every piece holds the pixels that
    resampling the whole region horizontally, then vertically, gives: the same bits at a whole
    scale factor, and within 1 level on a few pixels in 100,000 otherwise (the filter's
    positions are floats, and a strip's start is computed, not counted).
    """
    left, top, right, bottom = strip
    scale_x, scale_y = (region[2] - region[0]) / size[0], (region[3] - region[1]) / size[1]
    first, last = region[1] + top * scale_y, region[1] + bottom * scale_y
    # The rows the vertical filter reaches (its support widens when it shrinks), and one more.
    reach = _LANCZOS_SUPPORT * max(scale_y, 1.0) + 1.0
    row0, row1 = max(0, math.floor(first - reach)), min(source.height, math.ceil(last + reach))
    rows = source.crop((0, row0, source.width, row1))
    x0 = min(max(region[0] + left * scale_x, 0.0), source.width)
    x1 = min(max(region[0] + right * scale_x, x0), source.width)
    wide = rows.resize((right - left, row1 - row0), RESAMPLE, box=(x0, 0, x1, row1 - row0))
    y0 = min(max(first - row0, 0.0), row1 - row0)
    y1 = min(max(last - row0, y0), row1 - row0)
    return wide.resize((right - left, bottom - top), RESAMPLE, box=(0, y0, right - left, y1))


def _strips(box: PixelBox) -> list[PixelBox]:
    """`box` cut into bands of `STRIP_ROWS` rows, counted from the top of the output (so a
    strip's pixels do not depend on where the box starts)."""
    left, top, right, bottom = box
    edges = sorted({top, bottom, *range((top // STRIP_ROWS + 1) * STRIP_ROWS, bottom, STRIP_ROWS)})
    return [(left, start, right, end) for start, end in itertools.pairwise(edges)]


def _inside(box: Box, size: tuple[int, int]) -> Box:
    """`box` clamped to an image of `size` (float arithmetic may overshoot its edge by a hair)."""
    width, height = size
    left, top, right, bottom = box
    return max(left, 0.0), max(top, 0.0), min(right, width), min(bottom, height)


def _run(tasks: Sequence[Callable[[], Image.Image | None]]) -> list:
    """Run `tasks` on the pool and wait for all; their results in order (the first error raised)."""
    futures = [_executor().submit(task) for task in tasks]
    return [future.result() for future in futures]

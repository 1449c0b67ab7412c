"""Person photo -> try-on mask (plus the keypoints and parse map behind it), the published flow.

The published script stretches the person photo to 768x1024, shrinks it to 384x512 for OpenPose
and human parsing, builds the mask there and scales it back up with NEAREST. `Preprocessor` does
the same with networks loaded once per worker, typed errors instead of crashes, and a way for the
caller to send their own mask, in which case no network runs at all.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from core.vocabulary import GARMENT_PHOTO_TYPES, MODEL_FRAME, check_published
from preprocess.errors import PreprocessError
from preprocess.garment import extract_garment, person_in_parse
from preprocess.images import load_mask, load_rgb
from preprocess.layout import BODY_POSE
from preprocess.mask import agnostic_mask
from preprocess.parsing import PARSE_SIZE, HumanParser, default_providers

if TYPE_CHECKING:
    import torch

OUTPUT_SIZE = MODEL_FRAME
"""The published models' frame, (width, height): the default mask size."""



def parse_input(image: Image.Image) -> Image.Image:
    """What pose and parsing see of a photo: the published 768x1024 frame, then the parser's
    384x512, bicubic both times as in the published scripts."""
    bicubic = Image.Resampling.BICUBIC
    return image.resize(OUTPUT_SIZE, bicubic).resize(PARSE_SIZE, bicubic)


PoseEstimator = Callable[[Image.Image], np.ndarray]
Parser = Callable[[Image.Image], np.ndarray]


@dataclass(frozen=True)
class PreprocessResult:
    """What the pipeline needs from preprocessing, plus what helps debug a bad try-on."""

    mask: Image.Image
    """`L` image at the requested size: 255 = repaint, 0 = keep."""
    keypoints: np.ndarray | None
    """(18, 2) COCO body keypoints in 384x512 pixels, (0, 0) = missing; None with a caller's mask."""
    parse: np.ndarray | None
    """uint8 (512, 384) label map (ATR + 18 = neck); None with a caller's mask."""
    person: Image.Image
    """The person photo as the pipeline must use it: upright 8-bit RGB, resized to the mask size."""


@dataclass(frozen=True)
class GarmentResult:
    """The garment as the pipeline must use it, and how it was photographed."""

    image: Image.Image
    """Upright 8-bit RGB: the photo itself when flat, the cut-out garment (3:4, on white) when worn."""
    photo_type: str
    """"flat" or "model": what was used ("auto" resolved)."""
    parse: np.ndarray | None
    """uint8 (512, 384) label map of the garment photo; None when it was not parsed ("flat")."""


class Preprocessor:
    """Holds the pose and parsing networks; call it once per request.

    Either network may be None (for a worker that only accepts caller masks, or in tests); a
    request that needs a missing network then fails with a clear error instead of a crash.
    """

    def __init__(self, pose: PoseEstimator | None = None, parser: Parser | None = None) -> None:
        self.pose = pose
        self.parser = parser

    @classmethod
    def from_checkpoints(
        cls,
        root: str | Path,
        device: "str | torch.device | None" = None,
        threads: int | None = None,
        parsing_device: str | None = None,
    ) -> "Preprocessor":
        """Load OpenPose and both parsing networks from the published `checkpoints/` root, once.

        `device` "cpu" keeps both on the CPU; None or "cuda[:n]" uses CUDA where torch has it
        (torch for OpenPose, the onnxruntime CUDA provider for parsing), else the CPU.
        `parsing_device` ("cuda" or "cpu") puts parsing elsewhere than `device` (an operator's
        choice when onnxruntime's CUDA provider cannot load on a host). `threads` sizes the
        parsing sessions' CPU thread pools (default: onnxruntime's, the host's cores).
        """
        import torch

        from preprocess.pose import BodyPoseEstimator  # heavy (torch); only needed here

        root = Path(root)
        pose = BodyPoseEstimator.from_checkpoint(root / BODY_POSE, device=device)
        if parsing_device is None:
            # Where torch has CUDA, not where onnxruntime offers it: onnxruntime-gpu lists its
            # CUDA provider on machines without a GPU too.
            if device is None:
                device = "cuda" if torch.cuda.is_available() else "cpu"
            parsing_device = torch.device(device).type
        providers = default_providers(device=parsing_device)
        return cls(pose=pose, parser=HumanParser.from_checkpoints(root, providers=providers, threads=threads))

    def garment(self, garment: Image.Image, category: str, photo_type: str = "flat") -> GarmentResult:
        """Prepare the garment photo: as it is ("flat"), cut out of a person's photo ("model"),
        or whichever of the two the parse says ("auto": "model" when a person is found).

        Raises `NoWornGarmentError` (a `PreprocessError`) when a worn garment of `category`
        (a published name) is not found, ValueError for an unknown `photo_type`.
        """
        if photo_type not in GARMENT_PHOTO_TYPES:
            choices = ", ".join(GARMENT_PHOTO_TYPES)
            raise ValueError(f"photo_type must be one of {choices}, not {photo_type!r}")
        image = load_rgb(garment)
        if photo_type == "flat":
            return GarmentResult(image=image, photo_type="flat", parse=None)
        if self.parser is None:
            raise RuntimeError("this Preprocessor was built without a parsing network: send flat garments")
        small = parse_input(image)  # the person's chain
        parse = np.asarray(self.parser(small), dtype=np.uint8)
        if photo_type == "auto" and not person_in_parse(parse):
            return GarmentResult(image=image, photo_type="flat", parse=parse)
        return GarmentResult(image=extract_garment(image, parse, category), photo_type="model", parse=parse)

    def __call__(
        self,
        person: Image.Image,
        model_type: str = "hd",
        category: str = "upper_body",
        mask: Image.Image | None = None,
        size: tuple[int, int] = OUTPUT_SIZE,
    ) -> PreprocessResult:
        """Build the repaint mask for `person` at `size` (W, H), or adopt the caller's `mask`.

        Raises `NoPersonDetectedError` / `NoGarmentRegionError` (both `PreprocessError`, a
        ValueError) when the photo cannot be used, ValueError for a bad model_type/category.
        """
        check_published(model_type, category)
        size = (int(size[0]), int(size[1]))
        # Stretched like the published script: the caller decides about aspect ratio beforehand.
        upright = load_rgb(person)
        person_rgb = upright.resize(size, Image.Resampling.BICUBIC)
        if mask is not None:
            return PreprocessResult(mask=user_mask(mask, size), keypoints=None, parse=None, person=person_rgb)
        if self.pose is None or self.parser is None:
            raise RuntimeError("this Preprocessor was built without pose/parsing networks: pass a mask")
        # Whatever `size` the caller diffuses at, so a preview resolution gets the same mask
        # (scaled) as 1024x768; at the frame size the resized photo is reused (same pixels).
        small = parse_input(person_rgb if size == OUTPUT_SIZE else upright)
        keypoints = np.asarray(self.pose(small), dtype=np.float64).reshape(18, 2)
        parse = np.asarray(self.parser(small), dtype=np.uint8)
        small_mask = agnostic_mask(parse, keypoints, model_type, category)
        return PreprocessResult(
            mask=small_mask.resize(size, Image.Resampling.NEAREST),
            keypoints=keypoints,
            parse=parse,
            person=person_rgb,
        )


def user_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A caller's mask of any size/mode as an `L` image at `size`: >127 -> 255 (repaint), else 0."""
    grey = load_mask(mask).resize(size, Image.Resampling.NEAREST)
    binary = np.where(np.asarray(grey) > 127, 255, 0).astype(np.uint8)
    if not binary.any():
        raise PreprocessError("the mask is empty: paint the area to replace in white (values above 127)")
    return Image.fromarray(binary)

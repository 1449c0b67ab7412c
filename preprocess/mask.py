"""The try-on ("agnostic") mask: which pixels of the person photo the diffusion may repaint.

These are the published OOTDiffusion rules (`get_mask_location`), defined on the 384x512 parse
map: dilate the garment region of the chosen category, add the neck and a band drawn along each
arm from the pose keypoints, never touch the protected labels (head, shoes, hat, sunglasses, bag
and, per category, the other garment and the hands), fill holes and keep the largest region.
The try-on quality a user sees depends on this mask as much as on the diffusion, so the rules are
kept exactly, with two deliberate differences that only change cases where the published code
misbehaves (both documented on `agnostic_mask`).
"""

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw

from core.vocabulary import PUBLISHED_CATEGORIES, check_model_type
from preprocess import labels as L
from preprocess.errors import NoGarmentRegionError

CATEGORIES = PUBLISHED_CATEGORIES  # the published names: the tables below are keyed by them

ARM_WIDTH = {"hd": 60, "dc": 45}
"""Arm band width in pixels of a 512-pixel-high parse map (HD half-body photos have wider arms)."""

REFERENCE_HEIGHT = 512
"""Parse-map height the published widths are given for; other heights scale the band width."""

# Labels never repainted, whatever the category.
HEAD_LABELS: tuple[int, ...] = (L.HAT, L.SUNGLASSES, L.FACE)  # hair (2) is not protected
ALWAYS_KEPT: tuple[int, ...] = (L.LEFT_SHOE, L.RIGHT_SHOE, L.HAT, L.SUNGLASSES, L.BAG)

GARMENT_LABELS: dict[str, tuple[int, ...]] = {
    "upper_body": (L.UPPER_CLOTHES, L.DRESS),
    "lower_body": (L.PANTS, L.LEFT_LEG, L.RIGHT_LEG, L.SKIRT),
    "dresses": (L.DRESS, L.UPPER_CLOTHES, L.SKIRT, L.PANTS),
}
"""Labels whose region (dilated) is repainted for each category."""

KEPT_FOR_CATEGORY: dict[str, tuple[int, ...]] = {
    "upper_body": (L.SKIRT, L.PANTS),
    "lower_body": (L.UPPER_CLOTHES, L.LEFT_ARM, L.RIGHT_ARM),
    "dresses": (),
}
"""Extra labels protected for each category (the garment the user is *not* changing)."""

_KERNEL = np.ones((5, 5), np.uint8)
GARMENT_DILATIONS = 5
NECK_DILATIONS = 1
ARM_DILATIONS = 4
WRIST_EXTENSION = 1.2
"""The arm band runs past the wrist to elbow + 1.2 * (wrist - elbow), covering the cuff."""

# COCO-18 keypoint ids used by the arm band.
R_SHOULDER, R_ELBOW, R_WRIST = 2, 3, 4
L_SHOULDER, L_ELBOW, L_WRIST = 5, 6, 7


def agnostic_mask(
    parse: np.ndarray,
    keypoints: np.ndarray | Sequence[Sequence[float]],
    model_type: str,
    category: str,
) -> Image.Image:
    """Return the repaint mask (`L`, parse-map size, 255 = repaint) for one person.

    `parse` is a uint8 HxW map of ATR labels plus 18 = neck; `keypoints` the (18, 2) COCO body
    keypoints (x, y) in the same pixel space, (0, 0) for a missing part. `model_type` "hd"/"dc"
    sets the arm band width, `category` which garment is replaced.

    Differences from the published code, both on purpose:
    * Band vertices are truncated toward zero as signed integers. The published code cast them to
      uint16, so an extended wrist above the image (arms raised) wrapped to y ~ 65 000 and drew a
      band down through the whole picture.
    * A side whose shoulder or elbow is missing falls back to the parsed arm pixels, as a missing
      wrist already did; the published code drew a band to the image corner (0, 0).

    Raises `NoGarmentRegionError` when the parse map has no pixel of the category's garment or the
    rules leave nothing to repaint: an empty mask would silently return the photo unchanged.
    """
    parse = np.asarray(parse)
    if parse.ndim != 2:
        raise ValueError(f"parse must be a 2-D label map, got shape {parse.shape}")
    check_model_type(model_type)
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(CATEGORIES)}, not {category!r}")
    points = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    if points.shape[0] < 8:
        raise ValueError(f"keypoints must be the 18 COCO body points, got {points.shape[0]}")

    garment = np.isin(parse, GARMENT_LABELS[category])
    if not garment.any():
        names = ", ".join(L.ATR_NAMES[label] for label in GARMENT_LABELS[category])
        raise NoGarmentRegionError(
            f"no {category} garment found on the person (no pixel parsed as {names}); "
            "choose the category of the clothes the person is wearing, or send your own mask"
        )

    head = np.isin(parse, HEAD_LABELS)
    kept = np.isin(parse, ALWAYS_KEPT + KEPT_FOR_CATEGORY[category])
    repaint = _dilate(garment, GARMENT_DILATIONS)

    if category in ("upper_body", "dresses"):
        height, width = parse.shape
        band_width = int(ARM_WIDTH[model_type] / REFERENCE_HEIGHT * height)
        arm_bands = []
        for label, joints, order in (
            (L.RIGHT_ARM, (R_SHOULDER, R_ELBOW, R_WRIST), 1),
            (L.LEFT_ARM, (L_SHOULDER, L_ELBOW, L_WRIST), -1),
        ):
            parsed_arm = parse == label
            band = _arm_band(points[list(joints)], parsed_arm, band_width, (width, height), order)
            kept |= parsed_arm & ~band  # the hand: parsed arm outside the band stays as it is
            arm_bands.append(band)
        neck = _dilate(parse == L.NECK, NECK_DILATIONS) & ~head
        repaint |= neck | _dilate(arm_bands[0] | arm_bands[1], ARM_DILATIONS)

    kept |= head
    mask = _largest_region(_fill_holes(repaint & ~kept))
    if not mask.any():
        raise NoGarmentRegionError(
            f"nothing to repaint for {category}: the garment region is entirely covered by protected "
            "parts (face, hands, shoes, bag); send your own mask"
        )
    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))


def _arm_band(
    joints: np.ndarray, parsed_arm: np.ndarray, band_width: int, size: tuple[int, int], order: int
) -> np.ndarray:
    """Boolean arm band of one side: drawn shoulder-elbow-extended wrist, or the parsed arm.

    `joints` are (shoulder, elbow, wrist). The published code draws the right arm from the
    shoulder and the left arm from the wrist (`order` -1); the joint rounding makes that visible
    on a few pixels, so the order is kept.
    """
    shoulder, elbow, wrist = joints
    if any(_missing(point) for point in (wrist, elbow, shoulder)):
        return parsed_arm.copy()
    wrist = elbow + WRIST_EXTENSION * (wrist - elbow)
    vertices = np.trunc(np.stack([shoulder, elbow, wrist])[::order]).astype(np.int64)
    canvas = Image.new("L", size)
    draw = ImageDraw.Draw(canvas)
    draw.line([int(v) for v in vertices.ravel()], fill=255, width=band_width, joint="curve")
    half = band_width // 2
    box = [shoulder[0] - half, shoulder[1] - half, shoulder[0] + half, shoulder[1] + half]
    draw.arc([float(v) for v in box], 0, 360, fill=255, width=band_width // 2)
    return np.asarray(canvas) > 0


def _missing(point: np.ndarray) -> bool:
    """OpenPose reports a part it did not find as (0, 0); the published test is x <= 1 and y <= 1."""
    return bool(point[0] <= 1.0 and point[1] <= 1.0)


def _dilate(region: np.ndarray, iterations: int) -> np.ndarray:
    """Binary dilation with the published 5x5 square kernel (pixels outside count as empty)."""
    return cv2.dilate(region.astype(np.uint8), _KERNEL, iterations=iterations) > 0


def _fill_holes(region: np.ndarray) -> np.ndarray:
    """Fill enclosed holes; the 1-px image border is cleared first, as published.

    Clearing the border lets the flood fill from the corner reach all of the outside, and it also
    means the mask never touches the outermost row or column of the image.
    """
    binary = np.where(region, 255, 0).astype(np.uint8)
    binary[0, :] = binary[-1, :] = 0
    binary[:, 0] = binary[:, -1] = 0
    flooded = binary.copy()
    cv2.floodFill(flooded, np.zeros((binary.shape[0] + 2, binary.shape[1] + 2), np.uint8), (0, 0), 255)
    return (binary > 0) | (flooded == 0)


def _largest_region(region: np.ndarray) -> np.ndarray:
    """Keep only the region with the largest contour area (filled), as the published `refine_mask`."""
    contours, _ = cv2.findContours(
        np.where(region, 255, 0).astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_TC89_L1
    )
    out = np.zeros(region.shape, np.uint8)
    if contours:
        areas = [abs(cv2.contourArea(contour, True)) for contour in contours]
        cv2.drawContours(out, contours, int(np.argmax(areas)), color=255, thickness=-1)
    return out > 0

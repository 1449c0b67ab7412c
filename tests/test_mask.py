"""The try-on mask rules on parse maps and keypoints drawn here, with expectations worked out by hand.

Distances are checked with OpenCV's chessboard distance transform (an independent route to what
"5x5 kernel, n iterations" means: Chebyshev distance <= 2n), and exact masks are written down as
rectangles, never by calling the rules a second time.

One published detail shows up in the expectations: the final "largest region" step redraws the
region from an *approximated* contour (`CHAIN_APPROX_TC89_L1`), whose polygon cuts concave
corners. Where the mask has a notch (around a face, a shoe, a bag) up to one pixel of rim can
therefore flip. Convex masks are compared exactly; notched ones exactly away from that rim, with
the number of flipped rim pixels bounded.
"""

import cv2
import numpy as np
import pytest
from PIL import Image

from preprocess import labels as L
from preprocess.errors import NoGarmentRegionError, PreprocessError
from preprocess.mask import agnostic_mask

H, W = 512, 384
PAIRS = [(m, c) for m in ("hd", "dc") for c in ("upper_body", "lower_body", "dresses")]
MISSING = (0.0, 0.0)


def keypoints(**points: tuple[float, float]) -> np.ndarray:
    """18 COCO keypoints, all missing except the named ones (r_shoulder, l_wrist, ...)."""
    index = {"r_shoulder": 2, "r_elbow": 3, "r_wrist": 4, "l_shoulder": 5, "l_elbow": 6, "l_wrist": 7}
    kps = np.zeros((18, 2))
    for name, xy in points.items():
        kps[index[name]] = xy
    return kps


def person_parse(arms_raised: bool = False) -> np.ndarray:
    """A standing person as label rectangles (rows y0:y1, columns x0:x1)."""
    p = np.zeros((H, W), np.uint8)
    p[20:50, 162:222] = L.HAIR
    p[50:100, 167:217] = L.FACE
    p[65:75, 175:209] = L.SUNGLASSES
    p[100:118, 180:204] = L.NECK
    p[118:260, 132:252] = L.UPPER_CLOTHES
    if arms_raised:
        p[0:125, 96:132] = L.RIGHT_ARM
        p[0:125, 252:288] = L.LEFT_ARM
    else:  # rows 310:330 are the hands
        p[125:330, 96:132] = L.RIGHT_ARM
        p[125:330, 252:288] = L.LEFT_ARM
    p[260:420, 137:247] = L.PANTS
    p[420:470, 137:192] = L.RIGHT_LEG
    p[420:470, 192:247] = L.LEFT_LEG
    p[470:495, 137:192] = L.RIGHT_SHOE
    p[470:495, 192:247] = L.LEFT_SHOE
    p[200:280, 300:350] = L.BAG
    return p


ARMS_DOWN = keypoints(
    r_shoulder=(114, 128), r_elbow=(114, 215), r_wrist=(114, 290),
    l_shoulder=(270, 128), l_elbow=(270, 215), l_wrist=(270, 290),
)  # fmt: skip
HANDS = np.zeros((H, W), bool)
HANDS[310:330, 96:132] = HANDS[310:330, 252:288] = True


def as_bool(mask: Image.Image) -> np.ndarray:
    assert mask.mode == "L" and mask.size == (W, H)
    values = np.asarray(mask)
    assert set(np.unique(values)) <= {0, 255}
    return values == 255


def chebyshev(region: np.ndarray) -> np.ndarray:
    """Chessboard distance of every pixel to `region` (0 inside it)."""
    return cv2.distanceTransform(np.where(region, 0, 255).astype(np.uint8), cv2.DIST_C, 3)


def rim(region: np.ndarray) -> np.ndarray:
    """Pixels within one pixel of the boundary of `region`, on either side."""
    return (chebyshev(region) == 1) | (chebyshev(~region) == 1)


def assert_equal_up_to_contour_rim(mask: np.ndarray, expected: np.ndarray, limit: int = 80) -> None:
    """Exact away from the expected boundary; on it, at most `limit` pixels flipped."""
    flipped = mask ^ expected
    assert not (flipped & ~rim(expected)).any()
    assert flipped.sum() <= limit


def assert_not_repainted(mask: np.ndarray, protected: np.ndarray, limit: int = 80) -> None:
    """No pixel inside `protected` is repainted; on its outermost pixels at most `limit` are."""
    interior = chebyshev(~protected) >= 2
    assert not (mask & interior).any()
    assert (mask & protected).sum() <= limit


def inner(region: np.ndarray) -> np.ndarray:
    """`region` without the outermost image row/column (the published hole fill clears them)."""
    out = region.copy()
    out[0, :] = out[-1, :] = out[:, 0] = out[:, -1] = False
    return out


@pytest.mark.parametrize(("model_type", "category"), PAIRS)
def test_protected_labels_are_kept_and_garment_repainted(model_type: str, category: str) -> None:
    parse = person_parse()
    mask = as_bool(agnostic_mask(parse, ARMS_DOWN, model_type, category))

    never = [L.FACE, L.SUNGLASSES, L.HAT, L.LEFT_SHOE, L.RIGHT_SHOE, L.BAG]
    garment = {
        "upper_body": (L.UPPER_CLOTHES,),
        "lower_body": (L.PANTS, L.LEFT_LEG, L.RIGHT_LEG),
        "dresses": (L.UPPER_CLOTHES, L.PANTS),
    }[category]
    kept_here = {
        "upper_body": (L.PANTS, L.SKIRT),
        "lower_body": (L.UPPER_CLOTHES, L.LEFT_ARM, L.RIGHT_ARM, L.NECK),
        "dresses": (),
    }[category]
    for label in never + list(kept_here):
        assert_not_repainted(mask, parse == label)
    if category != "lower_body":
        assert_not_repainted(mask, HANDS)
    assert mask[np.isin(parse, garment)].all()
    # Nothing outside reach: garment dilated 5x by a 5x5 kernel (10 px) ...
    allowed = chebyshev(np.isin(parse, garment)) <= 10
    if category != "lower_body":
        # ... plus the neck (dilated once) and the arm bands: 60/45 px wide along x = 114 and
        # x = 270 from the shoulder disc (y 128 - width/2) to the extended wrist (y 305),
        # dilated 4x (8 px); 1 px slack for PIL's rounding.
        allowed |= chebyshev(parse == L.NECK) <= 2
        reach = {"hd": 60, "dc": 45}[model_type] // 2 + 8 + 1
        for x in (114, 270):
            allowed[128 - reach : 305 + 9 + 1, x - reach : x + reach + 1] = True
        assert mask[parse == L.NECK].all()
        assert mask[130:300, 96:132].all() and mask[130:300, 252:288].all()  # arms inside the band
    allowed |= chebyshev(allowed) <= 1  # contour rim
    assert not (mask & ~allowed).any()


@pytest.mark.parametrize("category", ["upper_body", "dresses"])
def test_exact_mask_of_a_torso_with_face_and_neck(category: str) -> None:
    parse = np.zeros((H, W), np.uint8)
    parse[90:135, 165:215] = L.FACE
    parse[135:150, 180:200] = L.NECK
    parse[150:300, 140:240] = L.UPPER_CLOTHES
    expected = np.zeros((H, W), bool)
    expected[140:310, 130:250] = True  # the torso grown by 10 px on every side
    expected[133:152, 178:202] = True  # the neck grown by 2 px
    expected[90:135, 165:215] = False  # the face is never repainted
    for model_type in ("hd", "dc"):  # no arm keypoints: both model types agree
        mask = as_bool(agnostic_mask(parse, np.zeros((18, 2)), model_type, category))
        assert_equal_up_to_contour_rim(mask, expected)


def test_exact_lower_body_mask_stops_at_upper_clothes_and_shoes() -> None:
    parse = np.zeros((H, W), np.uint8)
    parse[150:260, 140:240] = L.UPPER_CLOTHES
    parse[260:400, 150:230] = L.PANTS
    parse[400:450, 150:190] = L.RIGHT_LEG
    parse[400:450, 190:230] = L.LEFT_LEG
    parse[450:470, 150:230] = L.LEFT_SHOE
    expected = np.zeros((H, W), bool)
    expected[250:460, 140:240] = True
    expected[150:260, 140:240] = False
    expected[450:470, 150:230] = False
    mask = as_bool(agnostic_mask(parse, ARMS_DOWN, "dc", "lower_body"))
    assert_equal_up_to_contour_rim(mask, expected)


def test_enclosed_protected_island_is_filled_but_open_one_is_not() -> None:
    parse = np.zeros((H, W), np.uint8)
    parse[150:300, 140:240] = L.UPPER_CLOTHES
    parse[200:220, 180:200] = L.BAG  # held in front of the shirt: enclosed by the mask
    parse[280:330, 100:150] = L.BAG  # sticks out of the mask: stays
    mask = as_bool(agnostic_mask(parse, np.zeros((18, 2)), "hd", "upper_body"))
    assert mask[200:220, 180:200].all()
    open_bag = np.zeros((H, W), bool)
    open_bag[280:330, 100:150] = True
    assert_not_repainted(mask, open_bag)
    expected = np.zeros((H, W), bool)
    expected[140:310, 130:250] = True
    expected[280:330, 100:150] = False
    assert_equal_up_to_contour_rim(mask, expected)


def test_only_the_largest_region_is_kept() -> None:
    parse = np.zeros((H, W), np.uint8)
    parse[150:300, 140:240] = L.UPPER_CLOTHES
    parse[400:430, 20:60] = L.UPPER_CLOTHES  # a second, smaller garment patch (a shirt on a chair)
    mask = as_bool(agnostic_mask(parse, np.zeros((18, 2)), "dc", "upper_body"))
    expected = np.zeros((H, W), bool)
    expected[140:310, 130:250] = True
    np.testing.assert_array_equal(mask, expected)


def test_mask_never_touches_the_image_border() -> None:
    parse = np.full((H, W), L.UPPER_CLOTHES, np.uint8)
    parse[:40, 150:230] = L.FACE
    mask = as_bool(agnostic_mask(parse, np.zeros((18, 2)), "dc", "dresses"))
    expected = inner(parse == L.UPPER_CLOTHES)
    assert_equal_up_to_contour_rim(mask, expected)
    assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def band_run(mask: np.ndarray, row: int, near_x: int) -> int:
    """Length of the run of repainted pixels on `row` that contains column `near_x`."""
    line = mask[row]
    assert line[near_x]
    left = near_x
    while left > 0 and line[left - 1]:
        left -= 1
    right = near_x
    while right < W - 1 and line[right + 1]:
        right += 1
    return right - left + 1


def test_arm_band_width_is_60_for_hd_and_45_for_dc() -> None:
    parse = np.zeros((H, W), np.uint8)
    parse[150:300, 140:240] = L.UPPER_CLOTHES
    kps = keypoints(
        r_shoulder=(120, 150), r_elbow=(120, 250), r_wrist=(120, 320),
        l_shoulder=(264, 150), l_elbow=(264, 250), l_wrist=(264, 320),
    )  # fmt: skip
    runs = {}
    for model_type, width in (("hd", 60), ("dc", 45)):
        mask = as_bool(agnostic_mask(parse, kps, model_type, "upper_body"))
        # Row 330 is below the dilated torso (ends at 309): only the bands, dilated by 8 px a side.
        runs[model_type] = (band_run(mask, 330, 120), band_run(mask, 330, 264))
        for run in runs[model_type]:
            assert abs(run - (width + 16)) <= 2
        # The band runs to elbow + 1.2 * (wrist - elbow) = 334, plus the 8 px dilation.
        assert mask[340, 120] and not mask[346, 120]
    assert all(abs(hd - dc - 15) <= 1 for hd, dc in zip(*runs.values(), strict=True))


def test_arm_band_far_from_the_torso_is_dropped_as_a_smaller_region() -> None:
    parse = np.zeros((H, W), np.uint8)
    parse[150:300, 160:240] = L.UPPER_CLOTHES
    kps = keypoints(r_shoulder=(50, 150), r_elbow=(50, 250), r_wrist=(50, 320))
    mask = as_bool(agnostic_mask(parse, kps, "dc", "upper_body"))
    assert not mask[:, :100].any()
    assert mask[150:300, 160:240].all()


def test_missing_wrist_falls_back_to_the_parsed_arm() -> None:
    parse = person_parse()
    kps = ARMS_DOWN.copy()
    kps[4] = MISSING  # right wrist not found
    mask = as_bool(agnostic_mask(parse, kps, "hd", "upper_body"))
    right_hand = HANDS & (np.arange(W) < W // 2)
    left_hand = HANDS & ~right_hand
    assert mask[right_hand].all()  # the whole parsed right arm, hand included, is repainted
    assert not mask[left_hand].any()  # the left side still protects its hand
    # Right of the body axis the band still applies; left of the torso only the parsed arm
    # grown by 8 px (4 dilations) and the garment grown by 10 px can be repainted.
    reach = chebyshev(parse == L.RIGHT_ARM) <= 8
    reach |= chebyshev(parse == L.UPPER_CLOTHES) <= 10
    reach |= chebyshev(reach) <= 1  # contour rim
    assert not (mask[:, :132] & ~reach[:, :132]).any()
    assert mask[:, 84:88].sum() == 0  # where the drawn 60 px band would have been


def test_arms_raised_band_reaches_the_top_and_nothing_below() -> None:
    parse = person_parse(arms_raised=True)
    kps = keypoints(
        r_shoulder=(114, 128), r_elbow=(114, 70), r_wrist=(114, 10),
        l_shoulder=(270, 128), l_elbow=(270, 70), l_wrist=(270, 10),
    )  # fmt: skip
    # Extended wrists lie above the image (y = 70 + 1.2 * (10 - 70) = -2).
    mask = as_bool(agnostic_mask(parse, kps, "hd", "upper_body"))
    assert mask[1:10, 100:128].all() and mask[1:10, 256:284].all()
    assert not mask[0].any()
    # No band anywhere below the torso (the published uint16 cast drew one down to the bottom).
    assert not mask[280:, :].any()
    assert mask[1:125, 96:132].all() and mask[1:125, 252:288].all()  # raised arms inside the bands


@pytest.mark.parametrize(("model_type", "category"), PAIRS)
def test_no_garment_pixels_is_a_clear_error(model_type: str, category: str) -> None:
    parse = np.zeros((H, W), np.uint8)
    parse[20:50, 162:222] = L.HAIR
    parse[50:100, 167:217] = L.FACE
    parse[125:330, 96:132] = L.RIGHT_ARM
    parse[470:495, 137:192] = L.RIGHT_SHOE
    with pytest.raises(NoGarmentRegionError, match=f"no {category} garment") as info:
        agnostic_mask(parse, ARMS_DOWN, model_type, category)
    assert isinstance(info.value, PreprocessError) and isinstance(info.value, ValueError)


def test_lower_body_on_a_person_without_lower_garment_is_an_error() -> None:
    parse = person_parse()
    parse[np.isin(parse, (L.PANTS, L.LEFT_LEG, L.RIGHT_LEG))] = L.DRESS
    with pytest.raises(NoGarmentRegionError, match="pants"):
        agnostic_mask(parse, ARMS_DOWN, "dc", "lower_body")
    # ... while "dresses" finds the dress.
    assert as_bool(agnostic_mask(parse, ARMS_DOWN, "dc", "dresses"))[parse == L.DRESS].all()


def test_garment_only_on_the_border_among_protected_labels_is_an_error() -> None:
    parse = np.full((H, W), L.BAG, np.uint8)
    parse[:, 0] = L.UPPER_CLOTHES
    with pytest.raises(NoGarmentRegionError, match="nothing to repaint"):
        agnostic_mask(parse, np.zeros((18, 2)), "hd", "upper_body")


@pytest.mark.parametrize(
    ("model_type", "category", "message"),
    [("xl", "upper_body", "model_type"), ("hd", "shoes", "category")],
)
def test_bad_arguments_are_value_errors(model_type: str, category: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        agnostic_mask(person_parse(), ARMS_DOWN, model_type, category)


def test_mask_follows_the_parse_map_size() -> None:
    """At 768x1024 the rules scale the band width by height/512 (as published) and still run."""
    parse = cv2.resize(person_parse(), (W * 2, H * 2), interpolation=cv2.INTER_NEAREST)
    mask = np.asarray(agnostic_mask(parse, ARMS_DOWN * 2, "hd", "upper_body")) == 255
    assert mask.shape == (H * 2, W * 2)
    assert mask[parse == L.UPPER_CLOTHES].all() and not mask[parse == L.FACE].any()


def test_missing_elbow_falls_back_to_the_parsed_arm_instead_of_the_corner() -> None:
    parse = person_parse()
    kps = ARMS_DOWN.copy()
    kps[3] = MISSING  # right elbow not found, wrist found
    mask = as_bool(agnostic_mask(parse, kps, "dc", "upper_body"))
    assert not mask[:90, :150].any()  # no band towards (0, 0)
    assert mask[HANDS & (np.arange(W) < W // 2)].all()  # the parsed right arm, hand included

"""Pose decoding on heat maps and PAFs drawn in the test: known people in, their keypoints out."""

from __future__ import annotations

import numpy as np
import pytest

from preprocess.errors import NoPersonDetectedError
from preprocess.pose_decode import (
    LIMB_PAF_CHANNELS,
    LIMBS,
    decode_body_pose,
    find_peaks,
    first_person_keypoints,
    gaussian_blur,
    people_keypoints,
)

HEIGHT, WIDTH = 512, 384
MISSING = (-1, -1)

# An upright person in the 384x512 frame, (x, y) per COCO-18 part, chosen by hand.
PERSON = np.array(
    [
        (120, 70), (120, 120), (90, 122), (80, 180), (74, 236), (150, 122), (160, 180), (166, 236),
        (104, 250), (102, 340), (100, 430), (136, 250), (138, 340), (140, 430), (112, 60),
        (128, 60), (104, 66), (136, 66),
    ]
)  # fmt: skip


def render(people: list[np.ndarray], peak: float = 1.0, paf_strength: list[float] | None = None):
    """Heat maps (H, W, 19) and PAFs (H, W, 38) for `people`: a Gaussian blob (sigma 4, height
    `peak`) at each present part and, within 3 px of each limb whose ends are present, the unit
    vector from the first part to the second times the person's PAF strength."""
    heatmaps = np.zeros((HEIGHT, WIDTH, 19))
    pafs = np.zeros((HEIGHT, WIDTH, 38))
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    strengths = paf_strength or [1.0] * len(people)
    for person, strength in zip(people, strengths, strict=True):
        for part, (x, y) in enumerate(person):
            if (x, y) != MISSING:
                blob = peak * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 4.0**2))
                heatmaps[:, :, part] = np.maximum(heatmaps[:, :, part], blob)
        for (a, b), (cx, cy) in zip(LIMBS, LIMB_PAF_CHANNELS, strict=True):
            if MISSING in (tuple(person[a]), tuple(person[b])):
                continue
            start, end = person[a].astype(float), person[b].astype(float)
            direction = (end - start) / np.linalg.norm(end - start)
            along = (xs - start[0]) * direction[0] + (ys - start[1]) * direction[1]
            across = np.abs((xs - start[0]) * direction[1] - (ys - start[1]) * direction[0])
            on_limb = (along >= -3) & (along <= np.linalg.norm(end - start) + 3) & (across <= 3)
            pafs[on_limb, cx] = strength * direction[0]
            pafs[on_limb, cy] = strength * direction[1]
    heatmaps[:, :, 18] = np.clip(1 - heatmaps[:, :, :18].max(axis=2), 0, 1)
    return heatmaps, pafs


def without(person: np.ndarray, *parts: int) -> np.ndarray:
    person = person.copy()
    person[list(parts)] = MISSING
    return person


def test_single_person_gives_exactly_its_keypoints():
    keypoints = first_person_keypoints(*render([PERSON]))
    assert keypoints.shape == (18, 2)
    np.testing.assert_array_equal(keypoints, PERSON.astype(float))


def test_missing_parts_are_zero_and_others_stay_in_place():
    person = without(PERSON, 7, 16, 17)  # left wrist and both ears not visible
    keypoints = first_person_keypoints(*render([person]))
    expected = person.astype(float)
    expected[[7, 16, 17]] = 0.0
    np.testing.assert_array_equal(keypoints, expected)


def test_two_people_are_both_found_and_kept_apart():
    left, right = PERSON, PERSON + np.array([170, 8])
    decoding = decode_body_pose(*render([left, right]))
    found = people_keypoints(decoding, WIDTH, HEIGHT)
    assert len(found) == 2
    assert sorted(tuple(map(tuple, p)) for p in found) == sorted(
        tuple(map(tuple, p.astype(float))) for p in (left, right)
    )


def test_two_people_first_is_the_published_first_equal_scores():
    # Equal limb scores: the tie keeps peak order, row-major, so the person whose neck is higher
    # in the image starts first even though it stands to the right.
    left, right_higher = PERSON, PERSON + np.array([170, -8])
    np.testing.assert_array_equal(first_person_keypoints(*render([left, right_higher])), right_higher)
    left_higher, right = PERSON + np.array([0, -8]), PERSON + np.array([170, 0])
    np.testing.assert_array_equal(first_person_keypoints(*render([left_higher, right])), left_higher)


def test_two_people_first_is_the_best_scoring_neck_to_shoulder_limb():
    # Published order: people are created from limb 0 (neck -> right shoulder) in decreasing score,
    # so a person with weaker PAFs comes second even when its peaks come first.
    higher, lower = PERSON + np.array([0, -8]), PERSON + np.array([170, 0])
    maps = render([higher, lower], paf_strength=[0.7, 1.0])
    np.testing.assert_array_equal(first_person_keypoints(*maps), lower)


def test_first_of_three_people_gets_its_own_points():
    # The published run_openpose.py re-indexes the candidate list by popping one entry per part,
    # which hands out other people's points once a part has two or more candidates before the
    # first person's; looking each part up by its candidate id gives the first person's own points.
    people = [PERSON + np.array([-60, 0]), PERSON + np.array([60, -8]), PERSON + np.array([180, 0])]
    decoding = decode_body_pose(*render(people))
    assert len(decoding.people) == 3
    np.testing.assert_array_equal(first_person_keypoints(*render(people)), people[1])


def test_nobody_raises_the_typed_error():
    with pytest.raises(NoPersonDetectedError, match="no person detected in the person image"):
        first_person_keypoints(np.zeros((HEIGHT, WIDTH, 19)), np.zeros((HEIGHT, WIDTH, 38)))


def test_parts_without_limb_fields_are_nobody():
    heatmaps, pafs = render([PERSON])
    with pytest.raises(NoPersonDetectedError):
        first_person_keypoints(heatmaps, np.zeros_like(pafs))


def test_people_with_fewer_than_four_parts_are_dropped():
    three = without(PERSON, *[p for p in range(18) if p not in (1, 2, 3)])  # neck, right arm
    with pytest.raises(NoPersonDetectedError):
        first_person_keypoints(*render([three]))
    four = without(PERSON, *[p for p in range(18) if p not in (1, 2, 3, 4)])
    assert first_person_keypoints(*render([four]))[4].tolist() == PERSON[4].tolist()


def test_people_with_a_low_mean_score_are_dropped():
    four = without(PERSON, *[p for p in range(18) if p not in (1, 2, 3, 4)])
    # 4 peaks of 0.2 and 3 limbs scoring 0.1: (0.8 + 0.3) / 4 = 0.275 < 0.4.
    assert [len(p) for p in find_peaks(render([four], peak=0.2)[0])[1:5]] == [1, 1, 1, 1]
    with pytest.raises(NoPersonDetectedError):
        first_person_keypoints(*render([four], peak=0.2, paf_strength=[0.1]))
    # Peaks of 0.6 lift it to (2.4 + 0.3) / 4 = 0.675.
    assert first_person_keypoints(*render([four], peak=0.6, paf_strength=[0.1]))[1].tolist() == [120, 120]


def test_weak_peaks_below_threshold_are_not_parts():
    # The threshold applies to the blurred map: a sigma-4 blob of 0.15 blurs to about 0.096.
    heatmaps, _ = render([PERSON], peak=0.15)
    assert all(len(p) == 0 for p in find_peaks(heatmaps))
    heatmaps, _ = render([PERSON], peak=0.2)
    peaks = find_peaks(heatmaps)
    assert [len(p) for p in peaks] == [1] * 18
    # Candidate ids run over all parts in part order; scores are the unblurred heat.
    assert [p[0, 3] for p in peaks] == list(range(18))
    assert peaks[5][0, 2] == pytest.approx(0.2)


def test_limb_longer_than_half_the_image_is_penalised():
    # Two parts 300 px apart: prior 0.5 * 512 / 300 - 1 < 0 lowers the limb score below its mean.
    person = without(PERSON, *range(18))
    person[1], person[2], person[3], person[4] = (200, 40), (40, 40), (40, 340), (40, 480)
    decoding = decode_body_pose(*render([person]))
    limb_score = decoding.people[0, -2] - decoding.candidates[:, 2].sum()
    neck_to_shoulder, elbow_to_wrist = 1.0, 1.0  # 160 and 140 px: no penalty
    shoulder_to_elbow = 1.0 + (0.5 * HEIGHT / 300 - 1)
    assert limb_score == pytest.approx(neck_to_shoulder + shoulder_to_elbow + elbow_to_wrist, abs=1e-9)
    assert decode_body_pose(*render([person])).people[0, -1] == 4


def test_gaussian_blur_keeps_constants_and_mass():
    # SciPy's "reflect" border keeps a constant map constant (zero padding would darken edges),
    # and a blob far from the border keeps its total.
    np.testing.assert_allclose(gaussian_blur(np.full((40, 30), 0.7)), 0.7, atol=1e-12)
    delta = np.zeros((60, 60))
    delta[30, 30] = 1.0
    blurred = gaussian_blur(delta)
    assert blurred.sum() == pytest.approx(1.0)
    assert blurred[30, 30] == pytest.approx(1 / (2 * np.pi * 9), rel=0.01)  # 2-D Gaussian of sigma 3
    assert blurred[30, 30 + 13] == 0.0  # kernel radius int(4 * 3 + 0.5) = 12

"""Turn OpenPose heat maps and part affinity fields into the body keypoints of people.

This is the CPU half of the published body-pose step (pytorch-openpose / ControlNet annotator
`Body.__call__` plus `run_openpose.py`), kept free of torch so it can be tested on synthetic maps
built by hand. Every constant, the peak test, the limb scoring, the greedy matching and the person
assembly follow the published algorithm step for step, because the try-on mask is drawn from these
points and a different rounding or ordering moves an arm. The differences are listed where they
occur: the Gaussian blur runs on OpenCV instead of SciPy (same kernel, same border rule), a person
that would crash the published code (three partial skeletons sharing one joint) is handled, and
the first person's points are looked up by index instead of by the published list surgery.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from preprocess.errors import NoPersonDetectedError

NUM_PARTS = 18
"""COCO-18 body parts: 0 nose, 1 neck, 2-4 right arm, 5-7 left arm, 8-10 right leg, 11-13 left
leg, 14/15 right/left eye, 16/17 right/left ear ("right" is the person's right)."""

HEATMAP_CHANNELS = 19  # 18 parts + background
PAF_CHANNELS = 38  # 19 limbs x (x, y)

PEAK_THRESHOLD = 0.1  # published thre1: minimum heat of a part peak
PAF_THRESHOLD = 0.05  # published thre2: minimum PAF alignment of a limb sample
HEATMAP_SIGMA = 3.0  # published gaussian_filter sigma on each heat map
GAUSSIAN_TRUNCATE = 4.0  # SciPy's default truncate: kernel radius = int(4 * sigma + 0.5)
LIMB_SAMPLES = 10  # published mid_num: points sampled along a candidate limb
MIN_PARTS = 4  # people with fewer parts are dropped
MIN_MEAN_SCORE = 0.4  # people whose score per part is lower are dropped

LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
    (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17),
)  # fmt: skip
"""Part pairs (0-based) in the published connection order; the order decides who is person 0."""

LIMB_PAF_CHANNELS: tuple[tuple[int, int], ...] = (
    (12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7),
    (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27),
)  # fmt: skip
"""For each limb, the PAF channels holding its (x, y) direction field (published mapIdx - 19)."""

NEW_PERSON_LIMBS = 17
"""Only the first 17 limbs may start a new person; the two ear-shoulder limbs only extend one."""


@dataclass(frozen=True)
class PoseDecoding:
    """Everything the decoder found, in the published `candidate, subset` layout.

    `candidates` is (N, 4): x, y (pixels of the maps), peak score, candidate id. `people` is
    (P, 20): for parts 0-17 the candidate id or -1, then the total score and the number of parts.
    """

    candidates: np.ndarray
    people: np.ndarray


def gaussian_kernel(sigma: float = HEATMAP_SIGMA, truncate: float = GAUSSIAN_TRUNCATE) -> np.ndarray:
    """The 1-D kernel SciPy's `gaussian_filter` uses: radius int(truncate*sigma+0.5), sum 1."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(image: np.ndarray, sigma: float = HEATMAP_SIGMA) -> np.ndarray:
    """SciPy-equivalent Gaussian smoothing of a 2-D float64 map on OpenCV.

    SciPy's default border mode "reflect" (d c b a | a b c d) is OpenCV's BORDER_REFLECT, and
    the kernel is SciPy's own, so the two agree to float64 rounding (sums run in another order).
    """
    kernel = gaussian_kernel(sigma)
    src = np.ascontiguousarray(image, dtype=np.float64)
    return cv2.sepFilter2D(src, cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_REFLECT)


def find_peaks(heatmaps: np.ndarray) -> list[np.ndarray]:
    """Local maxima of each part's blurred heat map, as published.

    A pixel is a peak when its blurred heat is above the threshold and not lower than its four
    neighbours (outside the map counts as 0). Returns one (n, 4) array per part: x, y, the
    *unblurred* heat there, and a running id over all parts; rows in row-major order.
    """
    found: list[np.ndarray] = []
    next_id = 0
    for part in range(NUM_PARTS):
        raw = np.asarray(heatmaps[:, :, part], dtype=np.float64)
        blurred = gaussian_blur(raw)
        padded = np.pad(blurred, 1, constant_values=0.0)
        centre = padded[1:-1, 1:-1]
        is_peak = (
            (centre >= padded[:-2, 1:-1])
            & (centre >= padded[2:, 1:-1])
            & (centre >= padded[1:-1, :-2])
            & (centre >= padded[1:-1, 2:])
            & (centre > PEAK_THRESHOLD)
        )
        ys, xs = np.nonzero(is_peak)
        ids = np.arange(next_id, next_id + len(xs))
        found.append(np.stack([xs, ys, raw[ys, xs], ids], axis=1).astype(np.float64).reshape(-1, 4))
        next_id += len(xs)
    return found


def _limb_connections(
    peaks_a: np.ndarray, peaks_b: np.ndarray, paf_x: np.ndarray, paf_y: np.ndarray, image_height: int
) -> np.ndarray:
    """Score every (a, b) pair of one limb on its PAF and keep the best disjoint pairs.

    Returns (m, 5) rows: id of a, id of b, limb score, row of a, row of b. The score is the mean
    alignment of the PAF with the limb over 10 samples plus a penalty for limbs longer than half
    the image height; a pair needs 9 of 10 samples above the PAF threshold and a positive score.
    """
    ax, ay = peaks_a[:, 0][:, None], peaks_a[:, 1][:, None]
    bx, by = peaks_b[:, 0][None, :], peaks_b[:, 1][None, :]
    shape = (len(peaks_a), len(peaks_b))
    dx, dy = np.broadcast_to(bx - ax, shape), np.broadcast_to(by - ay, shape)
    norm = np.maximum(np.sqrt(dx * dx + dy * dy), 0.001)
    ux, uy = dx / norm, dy / norm
    # Sample points exactly like np.linspace per pair, rounded half to even like Python's round().
    xs = np.linspace(np.broadcast_to(ax, shape), np.broadcast_to(bx, shape), num=LIMB_SAMPLES)
    ys = np.linspace(np.broadcast_to(ay, shape), np.broadcast_to(by, shape), num=LIMB_SAMPLES)
    cols, rows = np.rint(xs).astype(np.intp), np.rint(ys).astype(np.intp)
    samples = paf_x[rows, cols] * ux + paf_y[rows, cols] * uy  # (10, nA, nB)
    total = samples[0]
    for k in range(1, LIMB_SAMPLES):  # sequential sum, as Python's sum() in the published code
        total = total + samples[k]
    score = total / LIMB_SAMPLES + np.minimum(0.5 * image_height / norm - 1.0, 0.0)
    enough = np.count_nonzero(samples > PAF_THRESHOLD, axis=0) > 0.8 * LIMB_SAMPLES
    valid = enough & (score > 0)

    pairs = [(i, j, float(score[i, j])) for i, j in zip(*np.nonzero(valid), strict=True)]
    pairs.sort(key=lambda pair: pair[2], reverse=True)  # stable, like the published sorted()
    chosen: list[list[float]] = []
    used_a: set[int] = set()
    used_b: set[int] = set()
    limit = min(shape)
    for i, j, s in pairs:
        if i in used_a or j in used_b:
            continue
        chosen.append([peaks_a[i, 3], peaks_b[j, 3], s, i, j])
        used_a.add(int(i))
        used_b.add(int(j))
        if len(chosen) >= limit:
            break
    return np.asarray(chosen, dtype=np.float64).reshape(-1, 5)


def _assemble_people(connections: list[np.ndarray | None], candidates: np.ndarray) -> np.ndarray:
    """Grow people limb by limb in the published order, merging partial skeletons that meet."""
    people = np.full((0, NUM_PARTS + 2), -1.0)
    for k, (part_a, part_b) in enumerate(LIMBS):
        limb = connections[k]
        if limb is None:
            continue
        for id_a, id_b, limb_score in limb[:, :3]:
            # The published code stores matches in a 2-slot list and crashes on a third; a joint
            # shared by three partial skeletons is rare and the first two decide the outcome.
            owners = [
                row for row in range(len(people))
                if people[row, part_a] == id_a or people[row, part_b] == id_b
            ][:2]  # fmt: skip
            if len(owners) == 1:
                row = owners[0]
                if people[row, part_b] != id_b:
                    people[row, part_b] = id_b
                    people[row, -1] += 1
                    people[row, -2] += candidates[int(id_b), 2] + limb_score
            elif len(owners) == 2:
                first, second = owners
                both = (people[first, :-2] >= 0) & (people[second, :-2] >= 0)
                if not both.any():  # disjoint: merge the second skeleton into the first
                    people[first, :-2] += people[second, :-2] + 1
                    people[first, -2:] += people[second, -2:]
                    people[first, -2] += limb_score
                    people = np.delete(people, second, axis=0)
                else:
                    people[first, part_b] = id_b
                    people[first, -1] += 1
                    people[first, -2] += candidates[int(id_b), 2] + limb_score
            elif k < NEW_PERSON_LIMBS:
                row_values = np.full(NUM_PARTS + 2, -1.0)
                row_values[part_a] = id_a
                row_values[part_b] = id_b
                row_values[-1] = 2
                row_values[-2] = candidates[int(id_a), 2] + candidates[int(id_b), 2] + limb_score
                people = np.vstack([people, row_values])
    keep = (people[:, -1] >= MIN_PARTS) & (people[:, -2] / people[:, -1] >= MIN_MEAN_SCORE)
    return people[keep]


def decode_body_pose(heatmaps: np.ndarray, pafs: np.ndarray) -> PoseDecoding:
    """Decode heat maps (H, W, >=18) and PAFs (H, W, 38) at image resolution into people.

    People come in the published order, so `people[0]` is the person the published code uses.
    """
    if heatmaps.ndim != 3 or heatmaps.shape[2] < NUM_PARTS:
        raise ValueError(f"heatmaps must be (H, W, {HEATMAP_CHANNELS}), got {heatmaps.shape}")
    if pafs.shape != (*heatmaps.shape[:2], PAF_CHANNELS):
        raise ValueError(f"pafs must be (H, W, {PAF_CHANNELS}) like the heat maps, got {pafs.shape}")
    image_height = heatmaps.shape[0]
    peaks = find_peaks(heatmaps)
    pafs = np.asarray(pafs, dtype=np.float64)
    connections: list[np.ndarray | None] = []
    for (part_a, part_b), (channel_x, channel_y) in zip(LIMBS, LIMB_PAF_CHANNELS, strict=True):
        if len(peaks[part_a]) == 0 or len(peaks[part_b]) == 0:
            connections.append(None)
            continue
        connections.append(
            _limb_connections(
                peaks[part_a], peaks[part_b], pafs[:, :, channel_x], pafs[:, :, channel_y], image_height
            )
        )
    candidates = np.concatenate(peaks, axis=0)
    return PoseDecoding(candidates=candidates, people=_assemble_people(connections, candidates))


def people_keypoints(decoding: PoseDecoding, width: int, height: int) -> np.ndarray:
    """(P, 18, 2) keypoints in pixels of a width x height image; (0, 0) where a part is missing.

    The published code normalises by the image size and multiplies by 384 x 512, the size it
    asserts the image has; doing the same arithmetic keeps the numbers bit-identical to it.
    """
    ids = decoding.people[:, :NUM_PARTS].astype(np.intp)
    points = np.zeros((len(ids), NUM_PARTS, 2), dtype=np.float64)
    present = ids >= 0
    found = decoding.candidates[ids[present]]
    points[present, 0] = found[:, 0] / float(width) * width
    points[present, 1] = found[:, 1] / float(height) * height
    return points


def first_person_keypoints(heatmaps: np.ndarray, pafs: np.ndarray) -> np.ndarray:
    """(18, 2) keypoints of the published "first person"; raises when nobody is found."""
    decoding = decode_body_pose(heatmaps, pafs)
    if len(decoding.people) == 0:
        raise NoPersonDetectedError()
    height, width = heatmaps.shape[:2]
    return people_keypoints(decoding, width, height)[0]

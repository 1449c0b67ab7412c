"""Tiny stand-ins for the published `body_pose_model.pth`, for tests and CI without the 200 MB file.

`write_tiny_body_pose_checkpoint` writes a plain state dict with the published file's keys and layer
structure (same layers, kernels and strides, 38 PAF and 19 heat-map outputs) but a few channels per
layer, so `BodyPoseEstimator.from_checkpoint` loads it with the code that loads the real file.

Purely random weights find nobody in almost every photo, which would stop the end-to-end try-on
test at the pose step. So the written network is built to find one person: a few channels carry
position (zero padding at the map's edges turns a constant channel into row and column ramps),
and the last stage turns the position into one heat-map bump per part of a fixed skeleton and
constant part affinity fields along its limbs. Those channels ignore the image; every other
weight is random (from `seed`), so the file is still a random network in everything the skeleton
does not need. `random_body_pose_state_dict` gives the plain random version, and
`published_weight_shapes` the real widths (for the parameter-layout test and the benchmark).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from preprocess.pose import CONV_LAYERS, STAGES, STEM_LAYERS, BodyPoseNet, stage_layers
from preprocess.pose_decode import HEATMAP_CHANNELS, LIMB_PAF_CHANNELS, LIMBS, NUM_PARTS, PAF_CHANNELS

Shapes = dict[str, tuple[int, int, int, int]]

TINY_WIDTH = 4
"""Channels of most tiny layers: 3 carry the constant and the two coordinates, 1 stays random."""

SKELETON_GRID: tuple[tuple[int, int], ...] = (
    (9, 3), (9, 6), (6, 6), (5, 10), (4, 13), (12, 6), (13, 10), (14, 13), (7, 13),
    (7, 17), (7, 21), (11, 13), (11, 17), (11, 21), (8, 2), (10, 2), (7, 3), (11, 3),
)  # fmt: skip
"""(column, row) of each part on the 18x23 output grid of a 384x512 image (one cell = 22.3 px):
an upright person facing the camera, arms slightly out."""

BUMP_RADIUS = 3.0
"""Heat-map bumps fall linearly from 1 at the part to 0 at this many grid cells (L1 distance)."""


def _shapes(stem: list[int], stage1: list[int], later: dict[int, list[int]]) -> Shapes:
    """Conv weight shapes (out, in, k, k) from per-layer output widths."""
    shapes: Shapes = {}
    previous = 3
    stem_convs = [name for name in STEM_LAYERS if not name.startswith("pool")]
    for name, width in zip(stem_convs, stem, strict=True):
        shapes[name] = (width, previous, 3, 3)
        previous = width
    stem_out = previous
    for branch, outputs in ((1, PAF_CHANNELS), (2, HEATMAP_CHANNELS)):
        previous = stem_out
        for n, (name, width) in enumerate(zip(stage_layers(1, branch), [*stage1, outputs], strict=True)):
            kernel = 3 if n < 3 else 1
            shapes[name] = (width, previous, kernel, kernel)
            previous = width
        for stage in range(2, STAGES + 1):
            widths = [*later[stage * 10 + branch], outputs]
            previous = PAF_CHANNELS + HEATMAP_CHANNELS + stem_out
            for n, (name, width) in enumerate(zip(stage_layers(stage, branch), widths, strict=True)):
                kernel = 7 if n < 5 else 1
                shapes[name] = (width, previous, kernel, kernel)
                previous = width
    return shapes


def published_weight_shapes() -> Shapes:
    """The real checkpoint's conv shapes (VGG-19 stem 64-512, stages of 128, stage-1 neck 512)."""
    stem = [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 256, 128]
    later = {stage * 10 + branch: [128] * 6 for stage in range(2, STAGES + 1) for branch in (1, 2)}
    return _shapes(stem, [128, 128, 128, 512], later)


def tiny_weight_shapes() -> Shapes:
    """Tiny widths; the last heat-map stage is wider because it draws the 18 bumps."""
    width = TINY_WIDTH
    later = {stage * 10 + branch: [width] * 6 for stage in range(2, STAGES + 1) for branch in (1, 2)}
    later[STAGES * 10 + 2] = [width] * 4 + [4 * NUM_PARTS, NUM_PARTS]
    return _shapes([width] * 12, [width] * 4, later)


def random_body_pose_state_dict(
    shapes: Mapping[str, tuple[int, ...]], seed: int = 0
) -> dict[str, torch.Tensor]:
    """PyTorch's default conv initialisation at the given shapes, with the published flat keys."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = BodyPoseNet({name: torch.Size(shape) for name, shape in shapes.items()})
    return net.checkpoint_state_dict()


class _Painter:
    """Writes the position-carrying channels into a random state dict, layer by layer."""

    CONST, ROW, COL = 0, 1, 2  # channel slots of the constant 1 and the row / column ramps

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def clear(self, layer: str, out: int) -> None:
        """Make output channel `out` of `layer` depend on nothing yet (zero weights and bias)."""
        self.state[f"{layer}.weight"][out].zero_()
        self.state[f"{layer}.bias"][out] = 0.0

    def centre(self, layer: str, out: int, source: int, value: float = 1.0) -> None:
        weight = self.state[f"{layer}.weight"]
        centre = weight.shape[-1] // 2
        weight[out, source, centre, centre] += value

    def carry(self, layer: str, in_offset: int, ramps: bool) -> None:
        """Channels 0-2 of `layer` take the constant and ramps from inputs offset..offset+2.

        Without `ramps` they are copied (centre tap). With `ramps`, a ramp min(t, n) becomes
        min(t, n + r) for a kernel of radius r: the input ramp shifted by r (zero beyond the edge)
        plus the constant at shifts 1..r, which counts how many of those shifts stay in the map.
        """
        weight = self.state[f"{layer}.weight"]
        radius = weight.shape[-1] // 2
        for slot in (self.CONST, self.ROW, self.COL):
            self.clear(layer, slot)
        self.centre(layer, self.CONST, in_offset + self.CONST)
        for slot in (self.ROW, self.COL):
            if not ramps or radius == 0:
                self.centre(layer, slot, in_offset + slot)
                continue
            for shift in range(1, radius + 1):  # tap (radius - shift) reads the input `shift` back
                tap = (radius - shift, radius) if slot == self.ROW else (radius, radius - shift)
                weight[slot, in_offset + self.CONST, tap[0], tap[1]] += 1.0
            tap = (0, radius) if slot == self.ROW else (radius, 0)
            weight[slot, in_offset + slot, tap[0], tap[1]] += 1.0


def person_body_pose_state_dict(seed: int = 0, shapes: Shapes | None = None) -> dict[str, torch.Tensor]:
    """Weights that report the `SKELETON_GRID` person for every 384x512 image: tiny, or at `shapes`
    (e.g. `published_weight_shapes()`, for benchmarks that need the real arithmetic and a person).

    The stem makes a constant channel (bias 1, no image weights) and, at 1/8 resolution, starts the
    row and column ramps; stage 1 and stage 2 (L1 branch) grow them to cover all 23 rows and 18
    columns, stages 3-5 pass them on through their PAF outputs. Stage 6 L1 outputs each limb's unit
    direction everywhere; stage 6 L2 computes |column - c_k| and |row - r_k| with ReLU pairs and
    draws a bump max(0, 1 - distance / BUMP_RADIUS) per part.
    """
    state = random_body_pose_state_dict(shapes or tiny_weight_shapes(), seed)
    paint = _Painter(state)
    const, row, col = paint.CONST, paint.ROW, paint.COL

    paint.clear("conv1_1", const)
    state["conv1_1.bias"][const] = 1.0
    first_ramp = STEM_LAYERS.index("pool3_stage1") + 1
    for index, layer in enumerate(STEM_LAYERS[1:], start=1):
        if layer.startswith("pool"):
            continue
        if index < first_ramp:  # above 1/8 resolution only the constant travels; ramps start at 0
            for slot in (const, row, col):
                paint.clear(layer, slot)
            paint.centre(layer, const, const)
        else:
            paint.carry(layer, 0, ramps=True)
    for layer in stage_layers(1, 1):
        paint.carry(layer, 0, ramps=True)
    for stage in range(2, STAGES):  # stage 2 finishes the ramps (7 + 5 * 3 = 22 rows), 3-5 copy
        for layer in stage_layers(stage, 1):
            paint.carry(layer, 0, ramps=stage == 2)

    for layer in stage_layers(STAGES, 1):  # PAFs: constant limb directions, image ignored
        state[f"{layer}.weight"].zero_()
        state[f"{layer}.bias"].zero_()
    paf_bias = state[f"{stage_layers(STAGES, 1)[-1]}.bias"]
    for (part_a, part_b), (channel_x, channel_y) in zip(LIMBS, LIMB_PAF_CHANNELS, strict=True):
        (xa, ya), (xb, yb) = SKELETON_GRID[part_a], SKELETON_GRID[part_b]
        length = ((xb - xa) ** 2 + (yb - ya) ** 2) ** 0.5
        paf_bias[channel_x] = (xb - xa) / length
        paf_bias[channel_y] = (yb - ya) / length

    heat_layers = stage_layers(STAGES, 2)
    for layer in heat_layers[:4]:
        paint.carry(layer, 0, ramps=False)
    distances, bumps, output = heat_layers[4], heat_layers[5], heat_layers[6]
    for name in (distances, bumps):
        state[f"{name}.weight"].zero_()
        state[f"{name}.bias"].zero_()
    state[f"{output}.weight"][:NUM_PARTS].zero_()
    state[f"{output}.bias"][:NUM_PARTS] = 0.0
    for part, (x, y) in enumerate(SKELETON_GRID):
        for n, (source, target, sign) in enumerate(((col, x, 1), (col, x, -1), (row, y, 1), (row, y, -1))):
            channel = 4 * part + n  # relu(sign * (coordinate - target))
            paint.centre(distances, channel, source, float(sign))
            state[f"{distances}.bias"][channel] = float(-sign * target)
            paint.centre(bumps, part, channel, -1.0 / BUMP_RADIUS)
        state[f"{bumps}.bias"][part] = 1.0
        paint.centre(output, part, part)
    return state


def write_tiny_body_pose_checkpoint(path: Path, seed: int = 0) -> None:
    """Write the tiny person-finding `body_pose_model.pth` (a plain state dict) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = person_body_pose_state_dict(seed)
    assert set(state) == {f"{name}.{kind}" for name in CONV_LAYERS for kind in ("weight", "bias")}
    torch.save({key: value.contiguous() for key, value in state.items()}, path)

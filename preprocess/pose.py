"""OpenPose COCO-18 body keypoints: the published network and the published single-scale inference.

The network is the CMU body model as ported by pytorch-openpose and the ControlNet annotator, which
OOTDiffusion ships as `openpose/ckpts/body_pose_model.pth`: a VGG-19 stem, then six stages that
each predict part affinity fields ("L1", 38 channels) and part heat maps ("L2", 19 channels). The
layer names are the checkpoint's keys; every width and kernel is read from the checkpoint, so the
real file and the tiny test file load through the same code with strict key checking.

`BodyPoseEstimator` reproduces the published pre- and post-processing (scale 0.5 of boxsize 368,
padding to stride 8 with 128, `/256 - 0.5` on BGR, Lanczos/area resizing as the annotator picks
them) and hands the maps to `preprocess.pose_decode`, which returns the first person's keypoints.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from core.images import WHITE, flatten
from preprocess.pose_decode import HEATMAP_CHANNELS, PAF_CHANNELS, first_person_keypoints

STAGES = 6

STEM_LAYERS: tuple[str, ...] = (
    "conv1_1", "conv1_2", "pool1_stage1", "conv2_1", "conv2_2", "pool2_stage1",
    "conv3_1", "conv3_2", "conv3_3", "conv3_4", "pool3_stage1",
    "conv4_1", "conv4_2", "conv4_3_CPM", "conv4_4_CPM",
)  # fmt: skip
"""The VGG-19 stem in order; `pool*` are 2x2 max pools with stride 2 (no parameters)."""


def stage_layers(stage: int, branch: int) -> tuple[str, ...]:
    """Conv names of one branch (1 = PAF "L1", 2 = heat map "L2") of a stage (1-6), in order."""
    if stage == 1:
        return tuple(f"conv5_{n}_CPM_L{branch}" for n in range(1, 6))
    return tuple(f"Mconv{n}_stage{stage}_L{branch}" for n in range(1, 8))


BLOCKS: dict[str, tuple[str, ...]] = {"model0": STEM_LAYERS} | {
    f"model{stage}_{branch}": stage_layers(stage, branch)
    for branch in (1, 2)
    for stage in range(1, STAGES + 1)
}
"""Module name -> its layers, as in the annotator's `bodypose_model` (so its keys are prefixed)."""

NO_RELU_LAYERS = frozenset(
    {"conv5_5_CPM_L1", "conv5_5_CPM_L2"}
    | {f"Mconv7_stage{stage}_L{branch}" for stage in range(2, STAGES) for branch in (1, 2)}
    | {"Mconv7_stage6_L1"}
)
"""Output convs without a ReLU. As published, the final heat-map conv (Mconv7_stage6_L2) is missing
from the annotator's list and so *is* followed by a ReLU; kept, because the decoder sees its output."""

CONV_LAYERS: tuple[str, ...] = tuple(
    name for layers in BLOCKS.values() for name in layers if not name.startswith("pool")
)

PAD_VALUE = 128
STRIDE = 8
BOXSIZE = 368
SCALE = 0.5


def _make_block(layers: tuple[str, ...], shapes: Mapping[str, torch.Size]) -> nn.Sequential:
    """One Sequential of convs (+ ReLU) and pools with the layer names as module names."""
    modules: list[tuple[str, nn.Module]] = []
    for name in layers:
        if name.startswith("pool"):
            modules.append((name, nn.MaxPool2d(kernel_size=2, stride=2, padding=0)))
            continue
        out_channels, in_channels, kernel_h, kernel_w = shapes[name]
        if kernel_h != kernel_w or kernel_h % 2 == 0:
            raise ValueError(f"{name}: expected an odd square kernel, got {kernel_h}x{kernel_w}")
        modules.append(
            (name, nn.Conv2d(in_channels, out_channels, kernel_size=kernel_h, padding=kernel_h // 2))
        )
        if name not in NO_RELU_LAYERS:
            modules.append((f"relu_{name}", nn.ReLU(inplace=True)))
    return nn.Sequential(OrderedDict(modules))


def _check_widths(shapes: Mapping[str, torch.Size]) -> None:
    """Fail with a readable message when the checkpoint's layer widths do not chain together."""

    def expect(name: str, in_channels: int) -> None:
        if shapes[name][1] != in_channels:
            raise ValueError(f"{name} takes {shapes[name][1]} channels but receives {in_channels}")

    previous = 3
    for name in STEM_LAYERS:
        if not name.startswith("pool"):
            expect(name, previous)
            previous = shapes[name][0]
    stem_out = previous
    for stage in range(1, STAGES + 1):
        for branch, outputs in ((1, PAF_CHANNELS), (2, HEATMAP_CHANNELS)):
            previous = stem_out if stage == 1 else PAF_CHANNELS + HEATMAP_CHANNELS + stem_out
            for name in stage_layers(stage, branch):
                expect(name, previous)
                previous = shapes[name][0]
            if previous != outputs:
                raise ValueError(f"stage {stage} branch L{branch} outputs {previous}, expected {outputs}")


def normalise_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint keys as in the published file ("conv1_1.weight"), whichever form came in.

    The published `.pth` has flat layer names; a state dict saved from the annotator's module has
    them prefixed with the block ("model0.conv1_1.weight"). Both are accepted.
    """
    flat: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] in BLOCKS:
            parts = parts[1:]
        flat[".".join(parts)] = value
    return flat


class BodyPoseNet(nn.Module):
    """The OpenPose body network, laid out like the annotator's `bodypose_model`.

    Build it with `from_state_dict` (widths from the checkpoint) or from a dict of conv weight
    shapes. `forward` returns (PAFs [N, 38, h, w], heat maps [N, 19, h, w]) at 1/8 resolution.
    """

    def __init__(self, shapes: Mapping[str, torch.Size]) -> None:
        super().__init__()
        missing = [name for name in CONV_LAYERS if name not in shapes]
        if missing:
            raise ValueError(f"body pose checkpoint lacks layers: {', '.join(missing[:5])}")
        _check_widths(shapes)
        for block, layers in BLOCKS.items():
            self.add_module(block, _make_block(layers, shapes))

    @staticmethod
    def weight_shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Size]:
        """Conv name -> weight shape, from a checkpoint in either key form."""
        flat = normalise_keys(state_dict)
        return {name: flat[f"{name}.weight"].shape for name in CONV_LAYERS if f"{name}.weight" in flat}

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> BodyPoseNet:
        """Build the network with the checkpoint's widths and load it strictly (no key left over)."""
        net = cls(cls.weight_shapes(state_dict))
        flat = normalise_keys(state_dict)
        prefixed = {f"{block}.{key}": value for key, value in flat.items() if (block := net.block_of(key))}
        unknown = sorted(key for key in flat if not net.block_of(key))
        if unknown:
            raise ValueError(f"unexpected keys in body pose checkpoint: {', '.join(unknown[:5])}")
        net.load_state_dict(prefixed, strict=True)
        return net.eval()

    @staticmethod
    def block_of(key: str) -> str | None:
        """The block holding a flat checkpoint key ("conv1_1.weight" -> "model0")."""
        layer = key.rsplit(".", 1)[0]
        for block, layers in BLOCKS.items():
            if layer in layers:
                return block
        return None

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict with the published file's flat keys (what `torch.save` should write)."""
        return {key.split(".", 1)[1]: value for key, value in self.state_dict().items()}

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each stage refines the previous stage's PAFs and heat maps, always seeing the stem features."""
        features = self.model0(image)
        stage_input = features
        for stage in range(1, STAGES + 1):
            pafs = getattr(self, f"model{stage}_1")(stage_input)
            heatmaps = getattr(self, f"model{stage}_2")(stage_input)
            stage_input = torch.cat([pafs, heatmaps, features], dim=1)
        return pafs, heatmaps


def _published_resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize like the annotator's `smart_resize`: area when shrinking, Lanczos-4 when growing.

    The annotator resizes maps of other than 1 or 3 channels one channel at a time. OpenCV applies
    the same kernel to each channel of a multi-channel array, so resizing up to 4 channels per call
    (OpenCV's limit for some paths) gives identical numbers in fewer calls (tests/test_pose.py).
    """
    in_height, in_width = array.shape[:2]
    growth = (height + width) / (in_height + in_width)
    interpolation = cv2.INTER_AREA if growth < 1 else cv2.INTER_LANCZOS4
    if array.ndim == 2 or array.shape[2] <= 4:
        resized = cv2.resize(np.ascontiguousarray(array), (width, height), interpolation=interpolation)
        return resized.reshape(height, width, *array.shape[2:])
    chunks = [_published_resize(array[:, :, c : c + 4], height, width) for c in range(0, array.shape[2], 4)]
    return np.concatenate(chunks, axis=2)


@contextmanager
def full_fp32_convolutions() -> Iterator[None]:
    """cuDNN convolutions in full float32 (no TF32) inside the block, every other flag kept.

    torch lets cuDNN use TF32 for float32 convolutions by default; on Ampere and newer that
    rounds the inputs to 10 mantissa bits, enough to move near-tied heat-map peaks away from the
    published fp32 (CPU) keypoints. Scoped to the pose forward: the UNets' settings stay global.
    The flags are process-wide, so this is not for use while another thread runs convolutions.
    """
    cudnn = torch.backends.cudnn
    with cudnn.flags(
        enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False
    ):
        yield


def rgb_array(image: Image.Image) -> np.ndarray:
    """uint8 (H, W, 3) RGB, with transparency composited onto white like the annotator's HWC3."""
    return np.asarray(flatten(image, WHITE), dtype=np.uint8)


class BodyPoseEstimator:
    """The published OpenPose body step: person image -> (18, 2) keypoints of the first person.

    The network is loaded once, on CUDA when available, in float32 as published (its outputs are
    thresholded at 0.1 and 0.05, where half precision would move peaks) and runs without TF32
    (`full_fp32_convolutions`) so that CUDA keypoints match the CPU computation.
    """

    def __init__(self, net: BodyPoseNet, device: torch.device) -> None:
        self.net = net.to(device=device, dtype=torch.float32).eval()
        self.device = device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None) -> BodyPoseEstimator:
        """Load `body_pose_model.pth` (published or tiny) onto `device` (default: CUDA if present)."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        state_dict = torch.load(Path(path), map_location="cpu", weights_only=True)
        return cls(BodyPoseNet.from_state_dict(state_dict), torch.device(device))

    @torch.inference_mode()
    def maps(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """Heat maps (H, W, 19) and PAFs (H, W, 38) at the image's resolution, float64, as published."""
        bgr = rgb_array(image)[:, :, ::-1]
        height, width = bgr.shape[:2]
        scale = SCALE * BOXSIZE / height
        small = _published_resize(bgr, int(height * scale), int(width * scale))
        pad_bottom, pad_right = (-small.shape[0]) % STRIDE, (-small.shape[1]) % STRIDE
        padded = cv2.copyMakeBorder(
            small, 0, pad_bottom, 0, pad_right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
        )
        # Contiguous NCHW like the published code: a channels-last view would pick other conv kernels
        # and move the outputs in the last float32 bits, enough to flip near-tied peaks.
        batch = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32))
        batch = batch / 256 - 0.5
        with full_fp32_convolutions():
            pafs, heatmaps = self.net(batch.to(self.device))
        outputs = []
        for maps in (heatmaps, pafs):
            maps = maps[0].float().cpu().numpy().transpose(1, 2, 0)
            grown = _published_resize(maps, maps.shape[0] * STRIDE, maps.shape[1] * STRIDE)
            cropped = grown[: padded.shape[0] - pad_bottom, : padded.shape[1] - pad_right]
            outputs.append(_published_resize(cropped, height, width).astype(np.float64))
        return outputs[0], outputs[1]

    def __call__(self, image: Image.Image) -> np.ndarray:
        """(18, 2) float keypoints (x, y) in pixels of `image` (the pipeline passes 384x512 RGB).

        Missing parts are (0, 0). Raises `NoPersonDetectedError` when nobody is found.
        """
        heatmaps, pafs = self.maps(image)
        return first_person_keypoints(heatmaps, pafs)

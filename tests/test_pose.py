"""The OpenPose body network, its checkpoints (published layout, tiny) and the estimator end to end."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from preprocess.errors import NoPersonDetectedError
from preprocess.pose import BodyPoseEstimator, BodyPoseNet, _published_resize, rgb_array
from preprocess.pose_decode import decode_body_pose, first_person_keypoints
from tiny_checkpoints.pose import (
    SKELETON_GRID,
    published_weight_shapes,
    random_body_pose_state_dict,
    tiny_weight_shapes,
    write_tiny_body_pose_checkpoint,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def published_layers() -> dict[str, tuple[int, int, int]]:
    """The published body network, written out here from the annotator's layer table:
    name -> (in, out, kernel). Kept independent of tiny_checkpoints.pose on purpose."""
    layers = {
        "conv1_1": (3, 64, 3), "conv1_2": (64, 64, 3), "conv2_1": (64, 128, 3), "conv2_2": (128, 128, 3),
        "conv3_1": (128, 256, 3), "conv3_2": (256, 256, 3), "conv3_3": (256, 256, 3),
        "conv3_4": (256, 256, 3), "conv4_1": (256, 512, 3), "conv4_2": (512, 512, 3),
        "conv4_3_CPM": (512, 256, 3), "conv4_4_CPM": (256, 128, 3),
    }  # fmt: skip
    for branch, out in ((1, 38), (2, 19)):
        for n in (1, 2, 3):
            layers[f"conv5_{n}_CPM_L{branch}"] = (128, 128, 3)
        layers[f"conv5_4_CPM_L{branch}"] = (128, 512, 1)
        layers[f"conv5_5_CPM_L{branch}"] = (512, out, 1)
        for stage in range(2, 7):
            layers[f"Mconv1_stage{stage}_L{branch}"] = (185, 128, 7)
            for n in (2, 3, 4, 5):
                layers[f"Mconv{n}_stage{stage}_L{branch}"] = (128, 128, 7)
            layers[f"Mconv6_stage{stage}_L{branch}"] = (128, 128, 1)
            layers[f"Mconv7_stage{stage}_L{branch}"] = (128, out, 1)
    return layers


@pytest.fixture(scope="module")
def real_size_net() -> BodyPoseNet:
    return BodyPoseNet.from_state_dict(random_body_pose_state_dict(published_weight_shapes(), seed=0))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pose") / "openpose" / "ckpts" / "body_pose_model.pth"
    write_tiny_body_pose_checkpoint(path, seed=0)
    return path


@pytest.fixture(scope="module")
def person_image() -> Image.Image:
    return Image.open(REPO_ROOT / "assets" / "models" / "0_astronaut.png").convert("RGB").resize((384, 512))


def test_real_size_network_has_the_published_layout(real_size_net: BodyPoseNet):
    layers = published_layers()
    file_keys = real_size_net.checkpoint_state_dict()
    assert set(file_keys) == {f"{name}.{kind}" for name in layers for kind in ("weight", "bias")}
    for name, (c_in, c_out, k) in layers.items():
        assert tuple(file_keys[f"{name}.weight"].shape) == (c_out, c_in, k, k), name
        assert tuple(file_keys[f"{name}.bias"].shape) == (c_out,), name
    expected_params = sum(c_in * c_out * k * k + c_out for c_in, c_out, k in layers.values())
    assert sum(p.numel() for p in real_size_net.parameters()) == expected_params == 52_311_446
    # The module keeps the annotator's block names, e.g. model0.conv1_1 of 64x3x3x3.
    module_keys = real_size_net.state_dict()
    assert module_keys["model0.conv1_1.weight"].shape == (64, 3, 3, 3)
    assert module_keys["model2_1.Mconv1_stage2_L1.weight"].shape == (128, 185, 7, 7)
    assert module_keys["model6_2.Mconv7_stage6_L2.weight"].shape == (19, 128, 1, 1)


def test_real_size_network_output_shapes_and_published_relus(real_size_net: BodyPoseNet):
    with torch.no_grad():
        pafs, heatmaps = real_size_net(torch.zeros(1, 3, 184, 144))
    assert pafs.shape == (1, 38, 23, 18) and heatmaps.shape == (1, 19, 23, 18)
    # As published: no ReLU after the PAF output, but one after the final heat-map output.
    assert not isinstance(real_size_net.model6_1[-1], nn.ReLU)
    assert isinstance(real_size_net.model6_2[-1], nn.ReLU)
    assert not isinstance(real_size_net.model1_2[-1], nn.ReLU)
    assert heatmaps.min() >= 0


def test_tiny_checkpoint_has_the_published_keys_and_kernels(tiny_checkpoint: Path):
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    layers = published_layers()
    assert set(state) == {f"{name}.{kind}" for name in layers for kind in ("weight", "bias")}
    for name, (_, c_out, k) in layers.items():
        weight = state[f"{name}.weight"]
        assert weight.shape[2:] == (k, k), name
        if c_out in (38, 19):  # every stage's PAF and heat-map heads keep their published widths
            assert weight.shape[0] == c_out, name
    assert sum(v.numel() for v in state.values()) < 400_000  # tiny: a few channels per layer
    net = BodyPoseNet.from_state_dict(state)  # strict: raises on any missing/unexpected key
    assert set(net.checkpoint_state_dict()) == set(state)


def test_loading_is_strict_and_accepts_block_prefixed_keys():
    state = random_body_pose_state_dict(tiny_weight_shapes(), seed=1)
    prefixed = BodyPoseNet.from_state_dict(state).state_dict()  # "model0.conv1_1.weight", ...
    reloaded = BodyPoseNet.from_state_dict(prefixed)
    for key, value in reloaded.checkpoint_state_dict().items():
        assert torch.equal(value, state[key])
    with pytest.raises(ValueError, match="unexpected keys"):
        BodyPoseNet.from_state_dict({**state, "conv9_9.weight": torch.zeros(1)})
    missing = {k: v for k, v in state.items() if k != "Mconv3_stage4_L2.bias"}
    with pytest.raises(RuntimeError, match="Missing key"):
        BodyPoseNet.from_state_dict(missing)
    no_layer = {k: v for k, v in state.items() if not k.startswith("conv4_2.")}
    with pytest.raises(ValueError, match="lacks layers: conv4_2"):
        BodyPoseNet.from_state_dict(no_layer)
    wrong_head = dict(state)
    wrong_head["Mconv7_stage6_L2.weight"] = torch.zeros(18, *state["Mconv7_stage6_L2.weight"].shape[1:])
    wrong_head["Mconv7_stage6_L2.bias"] = torch.zeros(18)
    with pytest.raises(ValueError, match="outputs 18, expected 19"):
        BodyPoseNet.from_state_dict(wrong_head)


def test_tiny_estimator_finds_its_fixed_person_on_any_image(tiny_checkpoint: Path, person_image: Image.Image):
    estimator = BodyPoseEstimator.from_checkpoint(tiny_checkpoint, device="cpu")
    keypoints = estimator(person_image)
    assert keypoints.shape == (18, 2) and keypoints.dtype == np.float64
    # A grid cell c of the 1/8 output lands at pixel (8c + 4) * 512/184 - 0.5 after the published
    # Lanczos up-sampling and resizing (pixel-centre alignment, scale 0.359375).
    expected = (8 * np.array(SKELETON_GRID, dtype=float) + 4) * (512 / 184) - 0.5
    np.testing.assert_allclose(keypoints, expected, atol=1.5)
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (512, 384, 3), dtype=np.uint8))
    np.testing.assert_array_equal(estimator(noise), keypoints)
    np.testing.assert_array_equal(estimator(Image.new("RGB", (384, 512), "white")), keypoints)


def test_tiny_seed_changes_the_random_weights_not_the_person(tmp_path: Path, tiny_checkpoint: Path):
    path = tmp_path / "body_pose_model.pth"
    write_tiny_body_pose_checkpoint(path, seed=1)
    seed0 = torch.load(tiny_checkpoint, weights_only=True)
    seed1 = torch.load(path, weights_only=True)
    assert not torch.equal(seed0["conv1_1.weight"], seed1["conv1_1.weight"])
    blank = Image.new("RGB", (384, 512), "black")
    np.testing.assert_array_equal(
        BodyPoseEstimator.from_checkpoint(path, device="cpu")(blank),
        BodyPoseEstimator.from_checkpoint(tiny_checkpoint, device="cpu")(blank),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_weights_find_part_peaks_but_nobody_and_say_so(
    tmp_path: Path, person_image: Image.Image, seed: int
):
    """Random weights (not built to find a person, unlike the tiny checkpoint) give heat-map peaks
    above the published threshold but no limbs that join into a person: the typed error, not a crash
    in the decoding and not a made-up person."""
    path = tmp_path / "body_pose_model.pth"
    torch.save(random_body_pose_state_dict(tiny_weight_shapes(), seed), path)
    estimator = BodyPoseEstimator.from_checkpoint(path, device="cpu")
    heatmaps, pafs = estimator.maps(person_image)  # what `estimator(person_image)` decodes
    decoding = decode_body_pose(heatmaps, pafs)
    assert len(decoding.candidates) > 0 and len(decoding.people) == 0
    with pytest.raises(NoPersonDetectedError, match=r"^no person detected in the person image$"):
        first_person_keypoints(heatmaps, pafs)


def test_network_input_is_the_published_preprocessing(tiny_checkpoint: Path):
    estimator = BodyPoseEstimator.from_checkpoint(tiny_checkpoint, device="cpu")
    seen: list[torch.Tensor] = []
    handle = estimator.net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        heatmaps, pafs = estimator.maps(Image.new("RGB", (384, 512), (255, 0, 0)))
    finally:
        handle.remove()
    (batch,) = seen
    # 512 rows x 0.359375 = 184, 384 columns -> 138, padded right to 144 with 128 (-> 0 after /256-0.5).
    assert batch.shape == (1, 3, 184, 144) and batch.dtype == torch.float32 and batch.is_contiguous()
    assert torch.equal(batch[:, :, :, 138:], torch.zeros(1, 3, 184, 6))
    # BGR order: pure red is channel 2.
    assert torch.equal(batch[0, :, :, :138].amax(dim=(1, 2)), torch.tensor([-0.5, -0.5, 255 / 256 - 0.5]))
    assert heatmaps.shape == (512, 384, 19) and pafs.shape == (512, 384, 38)
    assert heatmaps.dtype == pafs.dtype == np.float64


def test_multichannel_resize_is_the_annotators_per_channel_resize():
    maps = np.random.default_rng(0).standard_normal((23, 18, 38)).astype(np.float32)
    for height, width in ((184, 144), (5, 4), (512, 384)):
        per_channel = np.stack(
            [_published_resize(maps[:, :, c], height, width) for c in range(maps.shape[2])], axis=2
        )
        np.testing.assert_array_equal(_published_resize(maps, height, width), per_channel)
    shrunk = _published_resize(maps[:, :, 0], 11, 9)  # shrinking uses area averaging, as published
    np.testing.assert_array_equal(shrunk, cv2.resize(maps[:, :, 0], (9, 11), interpolation=cv2.INTER_AREA))


def test_transparent_pixels_become_white_like_the_annotator():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255
    rgb = rgb_array(Image.fromarray(rgba, "RGBA"))
    assert rgb[0, 0].tolist() == [200, 0, 0] and rgb[1, 1].tolist() == [255, 255, 255]
    assert rgb_array(Image.new("L", (3, 2), 77)).tolist() == [[[77] * 3] * 3] * 2


def test_the_pose_forward_runs_without_tf32_and_leaves_the_global_flags_alone(
    tiny_checkpoint: Path, person_image: Image.Image
):
    # On CUDA, TF32 convolutions would move near-tied peaks away from the fp32 CPU keypoints; the
    # switch is scoped to the pose network, the UNets keep the process-wide settings.
    estimator = BodyPoseEstimator.from_checkpoint(tiny_checkpoint, device="cpu")
    cudnn = torch.backends.cudnn

    def flags() -> tuple[bool, bool, bool, bool]:
        return (cudnn.allow_tf32, cudnn.enabled, cudnn.benchmark, cudnn.deterministic)

    before = flags()
    seen: list[tuple[bool, bool, bool, bool]] = []
    handle = estimator.net.register_forward_pre_hook(lambda module, args: seen.append(flags()))
    try:
        keypoints = estimator(person_image)
    finally:
        handle.remove()
    assert seen == [(False, *before[1:])]
    assert flags() == before
    assert before[0] is True  # torch's default, which the diffusion keeps
    assert keypoints.shape == (18, 2)

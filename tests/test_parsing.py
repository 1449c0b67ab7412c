"""Human parsing: the SCHP affine round trip, the ATR hole filling, the neck, and the tiny ONNX files.

The round-trip test runs real onnxruntime sessions on ONNX models built here that "parse" by
reading a label back out of one colour channel of the photo: with them, any slip in the colour
order, the normalisation, the letterbox warp or its inverse changes the labels that come back.
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from preprocess import labels as L
from preprocess.layout import PARSING_ATR, PARSING_LIP
from preprocess.parsing import (
    PARSING_GPU_MEM_LIMIT,
    HumanParser,
    cuda_provider_options,
    default_providers,
    fill_upper_clothes_holes,
    logits_to_person,
    person_box_affine,
    upsample_align_corners,
)
from tiny_checkpoints.preprocessing import write_tiny_parsing_onnx

H, W = 512, 384
STEP = 12
"""A label l is stored as colour value l * STEP (labels up to 19 fit in 0..228)."""
BGR_MEAN = (0.406, 0.456, 0.485)
BGR_STD = (0.225, 0.224, 0.229)


def write_label_passthrough_onnx(path: Path, size: int, num_classes: int, channel: int) -> Path:
    """An SCHP-shaped ONNX model whose fusion logits are one-hot-like in the label stored in `channel`.

    It undoes the BGR ImageNet normalisation of input channel `channel`, reads the label as
    value / STEP and scores class c with -(label - c)^2, at full input resolution (so the
    upsampling step is the identity and the affine round trip is all that is left).
    """
    consts = [
        numpy_helper.from_array(np.array([channel], np.int64), "channel"),
        numpy_helper.from_array(np.array(BGR_STD[channel] * 255.0 / STEP, np.float32), "scale"),
        numpy_helper.from_array(np.array(BGR_MEAN[channel] * 255.0 / STEP, np.float32), "offset"),
        numpy_helper.from_array(np.arange(num_classes, dtype=np.float32).reshape(1, -1, 1, 1), "classes"),
    ]
    nodes = [
        helper.make_node("Gather", ["input.1", "channel"], ["plane"], axis=1),
        helper.make_node("Mul", ["plane", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset"], ["label"]),
        helper.make_node("Sub", ["label", "classes"], ["diff"]),
        helper.make_node("Mul", ["diff", "diff"], ["square"]),
        helper.make_node("Neg", ["square"], ["fusion"]),
        helper.make_node("Identity", ["fusion"], ["parsing"]),
        helper.make_node("Identity", ["plane"], ["edge"]),
    ]
    shape = [1, num_classes, size, size]
    graph = helper.make_graph(
        nodes,
        "label_passthrough",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, size, size])],
        [
            helper.make_tensor_value_info("parsing", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("fusion", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("edge", TensorProto.FLOAT, [1, 1, size, size]),
        ],
        initializer=consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_passthrough_parsers(root: Path) -> Path:
    """ATR reads its label from the blue channel, LIP from the green one (BGR channels 0 and 1)."""
    write_label_passthrough_onnx(root / PARSING_ATR, 512, L.ATR_NUM_CLASSES, channel=0)
    write_label_passthrough_onnx(root / PARSING_LIP, 473, L.LIP_NUM_CLASSES, channel=1)
    return root


def encode_labels(atr: np.ndarray, lip: np.ndarray) -> Image.Image:
    """A 'photo' whose blue channel holds the ATR labels and green channel the LIP labels."""
    rgb = np.zeros((*atr.shape, 3), np.uint8)
    rgb[..., 2] = atr * STEP
    rgb[..., 1] = lip * STEP
    return Image.fromarray(rgb)


def person_labels() -> tuple[np.ndarray, np.ndarray]:
    """ATR and LIP label maps of a person; LIP calls only rows < 90 of the ATR face 'face'."""
    atr = np.zeros((H, W), np.uint8)
    atr[15:50, 160:224] = L.HAIR
    atr[50:110, 165:219] = L.FACE
    atr[110:260, 130:254] = L.UPPER_CLOTHES
    atr[120:300, 94:130] = L.RIGHT_ARM
    atr[120:300, 254:290] = L.LEFT_ARM
    atr[260:420, 136:248] = L.PANTS
    atr[420:470, 136:192] = L.RIGHT_LEG
    atr[420:470, 192:248] = L.LEFT_LEG
    atr[470:500, 136:192] = L.RIGHT_SHOE
    atr[470:500, 192:248] = L.LEFT_SHOE
    atr[200:300, 310:360] = L.BAG
    atr[0:40, 0:30] = L.SCARF  # touches the image corner: the letterbox must not eat it
    lip = np.zeros((H, W), np.uint8)
    lip[40:90, 155:229] = L.LIP_FACE  # a little larger than ATR's face except at the chin
    lip[90:110, 165:219] = 10  # LIP "jumpsuits": anything but face
    lip[110:260, 130:254] = 5  # LIP "upper-clothes"
    return atr, lip


@pytest.fixture(scope="module")
def passthrough_parser(tmp_path_factory: pytest.TempPathFactory) -> HumanParser:
    root = write_passthrough_parsers(tmp_path_factory.mktemp("passthrough"))
    return HumanParser.from_checkpoints(root, providers=["CPUExecutionProvider"])


def test_affine_round_trip_returns_the_labels_and_adds_the_neck(passthrough_parser: HumanParser) -> None:
    atr, lip = person_labels()
    parse = passthrough_parser(encode_labels(atr, lip))
    assert parse.dtype == np.uint8 and parse.shape == (H, W)

    expected = atr.copy()
    expected[90:110, 165:219] = L.NECK  # ATR face, not LIP face
    # LIP runs at 473 px (scale 472/511), so its face/neck edge may move by a pixel.
    near_lip_edge = np.zeros((H, W), bool)
    near_lip_edge[88:92, 165:219] = True
    assert np.array_equal(parse[~near_lip_edge], expected[~near_lip_edge])
    assert set(np.unique(parse[near_lip_edge])) <= {L.FACE, L.NECK}


def test_channel_order_matters(passthrough_parser: HumanParser) -> None:
    """Labels put in the red channel instead of the blue one are not read (the input is BGR)."""
    atr, _ = person_labels()
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = atr * STEP
    assert not passthrough_parser(Image.fromarray(rgb)).any()


def test_parser_rejects_other_sizes(passthrough_parser: HumanParser) -> None:
    with pytest.raises(ValueError, match="384x512"):
        passthrough_parser(Image.new("RGB", (768, 1024)))


def test_person_box_affine_matches_the_letterbox_geometry() -> None:
    for size in (512, 473):
        affine = person_box_affine(W, H, size)
        # The 511 px high box spans size - 1 network pixels, centred on the network square.
        k = (size - 1) / (H - 1)
        expected = np.array(
            [[k, 0, (size - 1) / 2 - k * (W - 1) / 2], [0, k, (size - 1) / 2 - k * (H - 1) / 2]]
        )
        np.testing.assert_allclose(affine.to_network, expected, atol=1e-4)
        back = np.vstack([affine.to_person, [0, 0, 1]]) @ np.vstack([affine.to_network, [0, 0, 1]])
        np.testing.assert_allclose(back, np.eye(3), atol=1e-5)
    atr = person_box_affine(W, H, 512).to_network
    np.testing.assert_allclose(atr, [[1, 0, 64], [0, 1, 0]], atol=1e-6)  # a pure 64 px letterbox shift


def test_logits_are_warped_back_bilinearly() -> None:
    """A ramp in network space comes back as the ramp sampled at each person pixel's position."""
    size = 473
    affine = person_box_affine(W, H, size)
    ramp_x = np.tile(np.arange(size, dtype=np.float32), (size, 1))
    logits = np.stack([ramp_x, ramp_x.T], axis=2)  # channel 0: network x, channel 1: network y
    back = logits_to_person(logits, affine, W, H)
    k = (size - 1) / (H - 1)
    xs, ys = np.meshgrid(np.arange(W), np.arange(H))
    # OpenCV quantises bilinear weights to 1/32 px: linear interpolation, not nearest (error <= 0.5).
    np.testing.assert_allclose(back[..., 0], k * xs + (size - 1) / 2 - k * (W - 1) / 2, atol=1 / 32)
    np.testing.assert_allclose(back[..., 1], k * ys, atol=1 / 32)


@pytest.mark.parametrize(("classes", "side", "size"), [(18, 128, 512), (20, 119, 473)])
def test_upsample_matches_torch_align_corners(classes: int, side: int, size: int) -> None:
    logits = np.random.default_rng(side).normal(size=(classes, side, side)).astype(np.float32)
    ours = upsample_align_corners(logits, size)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(logits)[None], size=(size, size), mode="bilinear", align_corners=True
    )[0].numpy()
    assert ours.shape == (classes, size, size)
    np.testing.assert_allclose(ours, ref, atol=2e-6)


def test_hole_filling_as_published() -> None:
    parse = np.zeros((H, W), np.uint8)
    parse[100:400, 80:300] = L.UPPER_CLOTHES
    parse[100:400, 300:340] = L.LEFT_ARM
    parse[150:170, 150:170] = L.BACKGROUND  # small hole (contour area 19*19 < 2000): becomes cloth
    parse[200:260, 150:210] = L.BAG  # big hole (59*59 > 2000): keeps its label
    parse[300:320, 290:310] = L.BACKGROUND  # hole between cloth and arm: becomes cloth
    parse[350:400, 120:140] = L.BACKGROUND  # open to the outside below: stays
    # At the threshold: the published code finds contours on an int32 map, where OpenCV's label
    # tracing reports a 45x45 block as area 45*45 = 2025 (kept), a 44x44 one as 1936 (filled).
    parse[280:325, 200:245] = L.HAT
    parse[110:154, 220:264] = L.BELT
    parse[450:500, 0:100] = L.UPPER_CLOTHES
    parse[460:480, 0:20] = L.FACE  # touches the image border: not enclosed
    filled = fill_upper_clothes_holes(parse)

    expected = parse.copy()
    expected[150:170, 150:170] = L.UPPER_CLOTHES
    expected[300:320, 290:300] = L.UPPER_CLOTHES
    expected[300:320, 300:310] = L.UPPER_CLOTHES  # the arm side of the gap too: it was a hole
    expected[110:154, 220:264] = L.UPPER_CLOTHES
    assert filled.dtype == np.uint8
    np.testing.assert_array_equal(filled, expected)


def test_default_providers_prefer_cuda_and_fall_back_to_cpu() -> None:
    providers = default_providers()
    names = [entry if isinstance(entry, str) else entry[0] for entry in providers]
    assert names[-1] == "CPUExecutionProvider"
    assert set(names) <= set(ort.get_available_providers())
    assert ("CUDAExecutionProvider" in names) == ("CUDAExecutionProvider" in ort.get_available_providers())
    for entry in providers:
        if not isinstance(entry, str):
            assert entry == ("CUDAExecutionProvider", cuda_provider_options())


def test_cuda_provider_options_keep_fp32_search_heuristically_and_bound_the_arena() -> None:
    # What onnxruntime-gpu would get on a CUDA machine (this build may have no CUDA provider).
    providers = default_providers(["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert providers[-1] == "CPUExecutionProvider"
    name, options = providers[0]
    assert name == "CUDAExecutionProvider"
    # No TF32: the published parsing ran in full float32 on the CPU.
    assert options["use_tf32"] == "0"
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert options["arena_extend_strategy"] == "kSameAsRequested"
    assert all(isinstance(value, str) for value in options.values())  # what the provider API takes
    assert int(cuda_provider_options(gpu_mem_limit=123 * 2**20)["gpu_mem_limit"]) == 123 * 2**20
    assert default_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_on_the_cpu_only_the_cpu_provider_is_asked_for() -> None:
    # onnxruntime-gpu lists CUDA on a machine without a GPU too: asking for it there logs errors.
    assert default_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], device="cpu") == [
        "CPUExecutionProvider"
    ]
    assert default_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], device="mps") == [
        "CPUExecutionProvider"
    ]


@pytest.fixture
def asked(monkeypatch) -> list[list]:
    """The providers each onnxruntime session is asked for, with onnxruntime-gpu's provider list
    (this build's sessions fall back to the CPU with a warning, as a GPU build's would without CUDA)."""
    from preprocess import parsing

    asked: list[list] = []
    real_session = ort.InferenceSession

    def session(*args, providers=None, **kwargs):
        asked.append(list(providers))
        return real_session(*args, providers=["CPUExecutionProvider"], **kwargs)

    monkeypatch.setattr(parsing, "_cuda_libraries_loaded", True)  # nothing to preload here
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: both)
    monkeypatch.setattr(ort, "InferenceSession", session)
    return asked


def test_both_sessions_arenas_together_stay_within_the_one_limit(tmp_path: Path, asked: list[list]) -> None:
    HumanParser.from_checkpoints(write_passthrough_parsers(tmp_path), providers=default_providers())
    assert len(asked) == 2
    limits = [int(dict(entry[1])["gpu_mem_limit"]) for providers in asked for entry in providers
              if not isinstance(entry, str) and entry[0] == "CUDAExecutionProvider"]  # fmt: skip
    assert len(limits) == 2 and sum(limits) == PARSING_GPU_MEM_LIMIT


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_without_cuda_the_preprocessor_asks_onnxruntime_gpu_for_the_cpu_only(tiny_root: Path, asked) -> None:
    from preprocess import Preprocessor

    Preprocessor.from_checkpoints(tiny_root)  # device and parsing device left to the machine
    assert asked == [["CPUExecutionProvider"], ["CPUExecutionProvider"]]
    asked.clear()
    # PARSING_DEVICE=cuda is the operator's word (the worker refuses it at start without a GPU).
    Preprocessor.from_checkpoints(tiny_root, parsing_device="cuda")
    names = [[entry[0] if isinstance(entry, tuple) else entry for entry in providers] for providers in asked]
    assert names == [["CUDAExecutionProvider", "CPUExecutionProvider"]] * 2


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_cuda_libraries_are_preloaded_once_before_the_first_cuda_session(tmp_path: Path, monkeypatch) -> None:
    # onnxruntime-gpu must find cuDNN/cuBLAS in torch's pip nvidia packages: `preload_dlls` runs
    # before any CUDA session is created, once per process, and never for a CPU-only parser.
    from preprocess import parsing

    root = write_passthrough_parsers(tmp_path)
    events: list[str] = []
    real_session = ort.InferenceSession

    def session(*args, **kwargs):
        events.append("session")
        return real_session(*args, **kwargs)

    monkeypatch.setattr(parsing, "_cuda_libraries_loaded", False)
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: both)
    monkeypatch.setattr(ort, "preload_dlls", lambda: events.append("preload"), raising=False)
    monkeypatch.setattr(ort, "InferenceSession", session)

    HumanParser.from_checkpoints(root, providers=["CPUExecutionProvider"])
    assert events == ["session", "session"]
    events.clear()
    cuda = default_providers(both)
    HumanParser.from_checkpoints(root, providers=cuda)
    HumanParser.from_checkpoints(root, providers=cuda)
    assert events == ["preload", "session", "session", "session", "session"]


def test_tiny_parsing_files_have_the_published_interface(tmp_path: Path) -> None:
    for name, size, classes, side in ((PARSING_ATR, 512, 18, 128), (PARSING_LIP, 473, 20, 119)):
        path = write_tiny_parsing_onnx(tmp_path / name, input_size=size, num_classes=classes, seed=3)
        model = onnx.load(str(path))
        assert model.ir_version == 8
        assert {op.domain: op.version for op in model.opset_import}[""] == 17
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (inp,) = session.get_inputs()
        assert (inp.name, inp.shape, inp.type) == ("input.1", [1, 3, size, size], "tensor(float)")
        outputs = session.run(None, {"input.1": np.zeros((1, 3, size, size), np.float32)})
        assert [o.shape for o in outputs] == [
            (1, classes, side, side),
            (1, classes, side, side),
            (1, 2, side, side),
        ]


def test_parser_on_tiny_random_networks(tmp_path: Path) -> None:
    write_tiny_parsing_onnx(tmp_path / PARSING_ATR, input_size=512, num_classes=18, seed=0)
    write_tiny_parsing_onnx(tmp_path / PARSING_LIP, input_size=473, num_classes=20, seed=1)
    parser = HumanParser.from_checkpoints(tmp_path)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8))
    parse = parser(photo)
    assert parse.shape == (H, W) and parse.dtype == np.uint8
    assert parse.max() <= L.NECK
    assert np.array_equal(parser(photo), parse)  # deterministic


def test_missing_parsing_file_is_named(tmp_path: Path) -> None:
    write_tiny_parsing_onnx(tmp_path / PARSING_ATR, input_size=512, num_classes=18)
    with pytest.raises(FileNotFoundError, match=r"parsing_lip\.onnx"):
        HumanParser.from_checkpoints(tmp_path)

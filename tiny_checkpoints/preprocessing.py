"""Tiny random stand-ins for the published preprocessing networks, in their exact file layout.

The real files (two ~267 MB SCHP ONNX exports and the ~200 MB OpenPose state dict) cannot be
downloaded on development or CI machines. These keep what the loading and post-processing code
depends on: the paths, the ONNX input name "input.1", the 1x3xSxS float32 input (S = 512 for ATR,
473 for LIP) and the SCHP output list [parsing logits, fusion logits, edge logits] at a quarter of
the input resolution (128x128 / 119x119: SCHP's stem is a stride-2 conv plus a stride-2 max
pool), with 18 (ATR) or 20 (LIP) classes. The real files are drop-in replacements.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from preprocess.labels import ATR_NUM_CLASSES, LIP_NUM_CLASSES
from preprocess.layout import BODY_POSE, PARSING_ATR, PARSING_LIP

IR_VERSION = 8
OPSET = 17
OUTPUT_NAMES = ("parsing", "fusion", "edge")
"""Our names for SCHP's three outputs. Readers select them by position, never by name."""

_HIDDEN = 8


def write_tiny_preprocess_checkpoints(root: Path, seed: int = 0) -> None:
    """Write tiny random `humanparsing/parsing_{atr,lip}.onnx` and the OpenPose `.pth` under `root`."""
    from tiny_checkpoints.pose import write_tiny_body_pose_checkpoint

    root = Path(root)
    write_tiny_parsing_onnx(root / PARSING_ATR, input_size=512, num_classes=ATR_NUM_CLASSES, seed=seed)
    write_tiny_parsing_onnx(root / PARSING_LIP, input_size=473, num_classes=LIP_NUM_CLASSES, seed=seed + 1)
    write_tiny_body_pose_checkpoint(root / BODY_POSE, seed)


def write_tiny_parsing_onnx(path: Path, input_size: int, num_classes: int, seed: int = 0) -> Path:
    """One SCHP-shaped network: stride-4 stem, then three 1x1 heads (parsing, fusion, edge)."""
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0.0, 0.5, size=shape).astype(np.float32), name)

    initializers = [
        weight("stem.weight", _HIDDEN, 3, 3, 3),
        weight("stem.bias", _HIDDEN),
        weight("parsing.weight", num_classes, _HIDDEN, 1, 1),
        weight("parsing.bias", num_classes),
        weight("fusion.weight", num_classes, _HIDDEN, 1, 1),
        weight("fusion.bias", num_classes),
        weight("edge.weight", 2, _HIDDEN, 1, 1),
        weight("edge.bias", 2),
    ]
    nodes = [
        helper.make_node(
            "Conv",
            ["input.1", "stem.weight", "stem.bias"],
            ["stem"],
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["stem"], ["stem_relu"]),
        helper.make_node(
            "MaxPool", ["stem_relu"], ["features"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
    ]
    for head in OUTPUT_NAMES:
        nodes.append(helper.make_node("Conv", ["features", f"{head}.weight", f"{head}.bias"], [head]))
    side = schp_output_size(input_size)
    outputs = [
        helper.make_tensor_value_info(
            name, TensorProto.FLOAT, [1, 2 if name == "edge" else num_classes, side, side]
        )
        for name in OUTPUT_NAMES
    ]
    graph = helper.make_graph(
        nodes,
        f"tiny_schp_{input_size}",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, input_size, input_size])],
        outputs,
        initializer=initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ootd-worker"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def schp_output_size(input_size: int) -> int:
    """Side of SCHP's logits: a 3x3 stride-2 conv then a 3x3 stride-2 max pool, both padded by 1."""
    after_conv = (input_size + 2 - 3) // 2 + 1
    return (after_conv + 2 - 3) // 2 + 1

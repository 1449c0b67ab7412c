"""Human parsing with the published SCHP networks (`humanparsing/parsing_{atr,lip}.onnx`).

The published code ran both ONNX files through onnxruntime with an affine "person box"
pre-processing inherited from SCHP, and post-processed the ATR result (hole filling of the upper
clothes) before adding a neck label from LIP. The try-on mask depends on every one of these steps,
so they are reproduced here operation for operation; only the plumbing (torch DataLoader,
torchvision transforms, a CUDA-only device call) is replaced by NumPy/OpenCV.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from PIL import Image

from preprocess import labels
from preprocess.layout import PARSING_ATR, PARSING_LIP

PARSE_SIZE = (384, 512)
"""(width, height) of the person image both parsing networks are fed and of the parse map."""

INPUT_NAME = "input.1"
"""The input name of the published ONNX exports (PyTorch's default name for the first input)."""

FUSION_OUTPUT = 1
"""Index of the SCHP fusion logits among the outputs ([parsing, fusion, edge] in the export)."""

# ImageNet statistics in BGR order: SCHP was trained on BGR input.
_BGR_MEAN = np.array([0.406, 0.456, 0.485], dtype=np.float32)
_BGR_STD = np.array([0.225, 0.224, 0.229], dtype=np.float32)

_HOLE_KEEP_AREA = 2000.0
"""Enclosed holes in the upper clothes larger than this (contour area, px) keep their own labels."""


@dataclass(frozen=True)
class NetworkInput:
    """One network's square input size and the affine map from the person image into it."""

    size: int
    to_network: np.ndarray  # 2x3, person pixels -> network pixels
    to_person: np.ndarray  # 2x3, network pixels -> person pixels


def person_box_affine(width: int, height: int, size: int) -> NetworkInput:
    """The SCHP affine maps between a `width` x `height` image and a `size` x `size` input.

    SCHP takes the whole image as the person box, centres it, pads the box to the network's square
    aspect ratio and scales it so the box spans `size - 1` pixels. For 384x512 -> 512 this is a
    pure 64 px shift (the image is letterboxed); for LIP's 473 it also scales by 472/511. The three
    reference points are computed in float32 and solved with `cv2.getAffineTransform`, as the
    published code does, so the matrices match it to the last bit.
    """
    center = np.array([(width - 1) * 0.5, (height - 1) * 0.5], dtype=np.float32)
    box_w, box_h = float(width - 1), float(height - 1)
    # Pad the box to the network's aspect ratio (1: the inputs are square).
    if box_w > box_h:
        box_h = box_w
    elif box_w < box_h:
        box_w = box_h
    src_half = np.array([0.0, box_w * -0.5], dtype=np.float32)
    dst_half = np.array([0.0, (size - 1) * -0.5], dtype=np.float32)
    dst_center = np.array([(size - 1) * 0.5, (size - 1) * 0.5], dtype=np.float32)
    src = np.stack([center, center + src_half, np.zeros(2, np.float32)]).astype(np.float32)
    dst = np.stack([dst_center, dst_center + dst_half, np.zeros(2, np.float32)]).astype(np.float32)
    src[2] = _third_point(src[0], src[1])
    dst[2] = _third_point(dst[0], dst[1])
    return NetworkInput(
        size=size,
        to_network=cv2.getAffineTransform(src, dst),
        to_person=cv2.getAffineTransform(dst, src),
    )


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The point that makes (a, b, c) a right angle at b: fixes the affine map's rotation."""
    d = a - b
    return (b + np.array([-d[1], d[0]], dtype=np.float32)).astype(np.float32)


def network_input(image_bgr: np.ndarray, affine: NetworkInput) -> np.ndarray:
    """Warp a BGR uint8 image into the network square and normalise it: 1x3xSxS float32."""
    warped = cv2.warpAffine(
        image_bgr,
        affine.to_network,
        (affine.size, affine.size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    x = (warped.astype(np.float32) / np.float32(255.0) - _BGR_MEAN) / _BGR_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def upsample_align_corners(logits: np.ndarray, size: int) -> np.ndarray:
    """Bilinearly resize CxHxW logits to CxSxS with `align_corners=True` semantics.

    Equal to `torch.nn.functional.interpolate(..., mode="bilinear", align_corners=True)` (the
    published call) up to float rounding; done as two small interpolation matrices so this module
    needs no torch.
    """
    _, h, w = logits.shape
    rows = _interpolation_matrix(h, size)
    cols = _interpolation_matrix(w, size)
    return np.einsum("yh,chw,xw->cyx", rows, logits.astype(np.float32), cols, optimize=True)


def _interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """n_out x n_in linear-interpolation weights mapping the corner samples onto each other."""
    weights = np.zeros((n_out, n_in), dtype=np.float32)
    if n_in == 1 or n_out == 1:
        weights[:, 0] = 1.0
        return weights
    # float32 throughout, in torch's order of operations, so the weights round the same way.
    scale = np.float32(n_in - 1) / np.float32(n_out - 1)
    pos = scale * np.arange(n_out, dtype=np.float32)
    lo = np.minimum(np.floor(pos).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = np.clip(pos - lo.astype(np.float32), 0.0, 1.0).astype(np.float32)
    np.add.at(weights, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(weights, (np.arange(n_out), hi), frac)
    return weights


def logits_to_person(logits: np.ndarray, affine: NetworkInput, width: int, height: int) -> np.ndarray:
    """Warp SxSxC network logits back onto the person image (HxWxC), channel by channel.

    One channel at a time on purpose: OpenCV's multi-channel INTER_LINEAR path rounds differently
    (up to ~3e-2 on unit-range data), which can flip an argmax on a class boundary.
    """
    channels = [
        cv2.warpAffine(
            np.ascontiguousarray(logits[:, :, c]),
            affine.to_person,
            (width, height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        for c in range(logits.shape[2])
    ]
    return np.stack(channels, axis=2)


def fill_upper_clothes_holes(parse: np.ndarray) -> np.ndarray:
    """The published ATR clean-up: relabel small holes enclosed by upper clothes and arms as 4.

    Pixels enclosed by (upper clothes ∪ arms) that are neither become upper clothes, except holes
    whose contour area exceeds 2000 px (a bag or a hand held in front of the shirt) and the arms
    themselves, which keep their labels. The map is padded by one pixel first so that a region
    touching the image border still counts as "outside".
    """
    padded = np.pad(parse.astype(np.int64), 1, mode="constant", constant_values=0)
    arms = np.isin(padded, (labels.LEFT_ARM, labels.RIGHT_ARM))
    cloth_or_arms = (padded == labels.UPPER_CLOTHES) | arms
    enclosed = _fill_enclosed(np.where(cloth_or_arms, 255, 0).astype(np.uint8)) > 0
    all_cloth = np.where(enclosed, labels.UPPER_CLOTHES, padded)
    holes = enclosed & (padded != labels.UPPER_CLOTHES) & ~arms
    big_holes = np.zeros(padded.shape, dtype=np.uint8)
    # int32 on purpose: the published code hands OpenCV an int32 array here, and findContours
    # treats CV_32S input as a label image with its own border following, whose contours (and
    # so areas) differ from those of the same picture as uint8.
    contours, _ = cv2.findContours(
        np.where(holes, 255, 0).astype(np.int32), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_TC89_L1
    )
    for index, contour in enumerate(contours):
        if abs(cv2.contourArea(contour, True)) > _HOLE_KEEP_AREA:
            cv2.drawContours(big_holes, contours, index, color=255, thickness=-1)
    # The published code adds the uint8 arm indicator to the 255-valued hole map, so an arm pixel
    # inside a filled big hole wraps to 0 and becomes upper clothes; kept for parity.
    keep_own_label = (big_holes + arms.astype(np.uint8)) > 0
    result = np.where(keep_own_label, padded, all_cloth)
    return result[1:-1, 1:-1].astype(np.uint8)


def _fill_enclosed(binary: np.ndarray) -> np.ndarray:
    """255 on the foreground and on every background pixel not reachable from the corner."""
    flooded = binary.copy()
    cv2.floodFill(flooded, np.zeros((binary.shape[0] + 2, binary.shape[1] + 2), np.uint8), (0, 0), 255)
    return cv2.bitwise_or(binary, cv2.bitwise_not(flooded))


ProviderSpec = str | tuple[str, dict[str, str]]

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"

PARSING_NETWORKS: tuple[str, ...] = (PARSING_ATR, PARSING_LIP)
"""The published networks, one onnxruntime session each, in the order they run."""

PARSING_GPU_MEM_LIMIT = 2 * 1024**3
"""Bytes onnxruntime's CUDA arenas may hold for both parsing sessions together. Each session has
its own arena, so each is bounded to its share (`cuda_provider_options`). Both SCHP networks at
batch 1 need a few hundred MB; the bound keeps the arenas, which torch's allocator cannot see or
reclaim, from growing into the memory the UNets need."""


def cuda_provider_options(
    gpu_mem_limit: int = PARSING_GPU_MEM_LIMIT // len(PARSING_NETWORKS),
) -> dict[str, str]:
    """onnxruntime CUDA provider options for one parsing session, and why each is set.

    - `use_tf32: 0`: the published code parsed on the CPU in full float32, and TF32
      matmuls/convolutions shift the logits enough to flip labels on class boundaries.
    - `cudnn_conv_algo_search: HEURISTIC`: the default (EXHAUSTIVE) benchmarks every cuDNN
      algorithm on the first run of each convolution shape, seconds per network that the first
      job (or the warm-up) would pay; the input shapes here never change, so cuDNN's heuristic
      pick is all that is needed.
    - a bounded arena (by default the session's share of `PARSING_GPU_MEM_LIMIT`) grown only by
      what each allocation asks (`kSameAsRequested`), not doubled, so it stays near what the
      network uses instead of rounding up to powers of two.
    """
    return {
        "use_tf32": "0",
        "cudnn_conv_algo_search": "HEURISTIC",
        "gpu_mem_limit": str(int(gpu_mem_limit)),
        "arena_extend_strategy": "kSameAsRequested",
    }


def default_providers(available: Sequence[str] | None = None, *, device: str = "cuda") -> list[ProviderSpec]:
    """The providers to ask for on `device` (a torch device type: "cuda", "cpu").

    "cuda": CUDA (with `cuda_provider_options`) when this onnxruntime build offers it, with the
    CPU provider last as the fallback for nodes CUDA does not implement; else the CPU alone.
    Any other device: the CPU provider alone. onnxruntime-gpu lists its CUDA provider whether or
    not there is a GPU, and a session that asks for it on a machine without one tries to load
    CUDA and logs errors before falling back; so off CUDA nothing else is asked for.
    `available` defaults to `ort.get_available_providers()`.
    """
    available = ort.get_available_providers() if available is None else available
    if device == "cuda" and CUDA_PROVIDER in available:
        return [(CUDA_PROVIDER, cuda_provider_options()), CPU_PROVIDER]
    return [CPU_PROVIDER]


def _wants_cuda(providers: Sequence[ProviderSpec]) -> bool:
    return any((entry if isinstance(entry, str) else entry[0]) == CUDA_PROVIDER for entry in providers)


_cuda_libraries_loaded = False


def preload_cuda_libraries() -> None:
    """Load CUDA/cuDNN/cuBLAS from the pip `nvidia-*` packages before a CUDA session is made.

    The image has no system CUDA libraries: torch's wheel brings them as pip packages, where
    onnxruntime-gpu's CUDA provider does not look on its own. `onnxruntime.preload_dlls` (1.21+)
    loads them from there; on a build without it, or without the CUDA provider, nothing is done.
    Once per process.
    """
    global _cuda_libraries_loaded
    if _cuda_libraries_loaded or CUDA_PROVIDER not in ort.get_available_providers():
        return
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()
    _cuda_libraries_loaded = True


class HumanParser:
    """ATR + LIP parsing of a 384x512 person image into the 19-label map the mask rules use."""

    def __init__(self, atr_session: ort.InferenceSession, lip_session: ort.InferenceSession) -> None:
        self.atr_session = atr_session
        self.lip_session = lip_session
        width, height = PARSE_SIZE
        self._atr = person_box_affine(width, height, _square_input_size(atr_session, 512))
        self._lip = person_box_affine(width, height, _square_input_size(lip_session, 473))

    @classmethod
    def from_checkpoints(
        cls, root: str | Path, providers: Sequence[ProviderSpec] | None = None, threads: int | None = None
    ) -> "HumanParser":
        """Create one onnxruntime session per published file under the checkpoints `root`.

        Sessions are expensive (graph optimisation of a ~267 MB ResNet-101 each), so a worker makes
        them once at start-up and reuses them for every request. `threads` sizes each session's
        intra-op pool (onnxruntime's default is the host's core count, not the container's).
        """
        root = Path(root)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads is not None:
            options.intra_op_num_threads = threads
        chosen = list(providers) if providers is not None else default_providers()
        if _wants_cuda(chosen):
            preload_cuda_libraries()
        sessions = []
        for name in PARSING_NETWORKS:
            path = root / name
            if not path.is_file():
                raise FileNotFoundError(f"human-parsing network not found: {path}")
            sessions.append(ort.InferenceSession(str(path), sess_options=options, providers=chosen))
        return cls(*sessions)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """Parse a 384x512 RGB person image: uint8 (512, 384), ATR labels plus 18 = neck."""
        if image.size != PARSE_SIZE:
            raise ValueError(f"the parser expects a {PARSE_SIZE[0]}x{PARSE_SIZE[1]} image, got {image.size}")
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        atr = fill_upper_clothes_holes(self._run(self.atr_session, self._atr, bgr))
        lip = self._run(self.lip_session, self._lip, bgr)
        neck = (atr == labels.FACE) & (lip != labels.LIP_FACE)
        return np.where(neck, labels.NECK, atr).astype(np.uint8)

    @staticmethod
    def _run(session: ort.InferenceSession, affine: NetworkInput, bgr: np.ndarray) -> np.ndarray:
        """One network: person BGR image -> per-pixel argmax label map at the person's size."""
        outputs = session.run(None, {INPUT_NAME: network_input(bgr, affine)})
        fusion = np.asarray(outputs[FUSION_OUTPUT][0], dtype=np.float32)
        logits = upsample_align_corners(fusion, affine.size).transpose(1, 2, 0)
        width, height = PARSE_SIZE
        return np.argmax(logits_to_person(logits, affine, width, height), axis=2)


def _square_input_size(session: ort.InferenceSession, default: int) -> int:
    """The network's square input side from its ONNX shape, or `default` if it is symbolic."""
    shape = session.get_inputs()[0].shape
    if len(shape) == 4 and isinstance(shape[2], int) and shape[2] == shape[3]:
        return int(shape[2])
    return default

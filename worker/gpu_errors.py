"""Which exceptions mean "the GPU failed" rather than "the code has a bug": one classifier.

A job's GPU stages raise through three libraries that report CUDA trouble differently: torch
(`torch.OutOfMemoryError`, `torch.AcceleratorError` and plain `RuntimeError`s whose text starts
"CUDA error:" or names a cuDNN/cuBLAS status), and onnxruntime, whose exceptions are not
`RuntimeError` at all (`RuntimeException`, `Fail`, `EPFail`, ... from its pybind module) and only
say what happened in their text ("CUDA failure 2: out of memory", "Failed to allocate memory for
requested buffer", "CUDNN failure 4: CUDNN_STATUS_INTERNAL_ERROR"). The worker treats both kinds
of GPU failure alike: the job ends with a sentence and the worker asks RunPod for a fresh one,
because an out-of-memory can leave the allocators fragmented and a failed kernel leaves the CUDA
context unusable for every later job. Anything else is a bug and must stay a traceback.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import re

import onnxruntime.capi.onnxruntime_pybind11_state as ort_errors
import torch


class GpuFailure(enum.Enum):
    """What went wrong on the GPU; both end the job and ask for a fresh worker."""

    OUT_OF_MEMORY = "out of memory"
    DEVICE_ERROR = "device error"


# Exception types that can carry a CUDA failure: torch raises RuntimeError subclasses,
# onnxruntime raises its own Exception subclasses (every one of them, by status code).
_ORT_ERRORS: tuple[type[BaseException], ...] = tuple(
    value
    for value in vars(ort_errors).values()
    if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == ort_errors.__name__
)
_CARRIERS: tuple[type[BaseException], ...] = (RuntimeError, *_ORT_ERRORS)
_ACCELERATOR_ERROR: type[BaseException] | None = getattr(torch, "AcceleratorError", None)

_OUT_OF_MEMORY = re.compile(
    r"out of memory|failed to allocate memory|cublas_status_alloc_failed|cudnn_status_alloc_failed"
    r"|cudaerrormemoryallocation",
    re.IGNORECASE,
)
_DEVICE_ERROR = re.compile(
    r"cuda error|cuda failure|cudnn failure|cublas failure|cuda driver error|cudaerror"
    r"|illegal memory access|device-side assert|illegal instruction|misaligned address"
    r"|unspecified launch failure|cudnn_status_|cublas_status_|cudnn error|cublas error",
    re.IGNORECASE,
)


def classify_gpu_failure(error: BaseException) -> GpuFailure | None:
    """`OUT_OF_MEMORY`, `DEVICE_ERROR`, or None when `error` is not a GPU failure (a bug).

    Only exception types that CUDA failures arrive as are read at all, so a ValueError that
    happens to mention memory is still a bug.
    """
    if isinstance(error, torch.OutOfMemoryError):
        return GpuFailure.OUT_OF_MEMORY
    if not isinstance(error, _CARRIERS):
        return None
    text = str(error)
    if _OUT_OF_MEMORY.search(text):
        return GpuFailure.OUT_OF_MEMORY
    if _ACCELERATOR_ERROR is not None and isinstance(error, _ACCELERATOR_ERROR):
        return GpuFailure.DEVICE_ERROR
    if _DEVICE_ERROR.search(text):
        return GpuFailure.DEVICE_ERROR
    return None


MAX_DETAIL = 200
"""Characters of the library's own message quoted in the job's error (its first line only)."""


def failure_detail(error: BaseException) -> str:
    """The first line of the library's message, bounded: what the caller and the log are told.

    onnxruntime prefixes its messages with a source location in brackets, which helps nobody
    reading a job error; it is dropped.
    """
    lines = str(error).strip().splitlines()
    line = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", lines[0] if lines else "")
    line = re.sub(r"\s+", " ", line) or type(error).__name__
    return line if len(line) <= MAX_DETAIL else line[: MAX_DETAIL - 3] + "..."


def free_gpu_memory() -> None:
    """Drop what a failed run left cached, so the next job (if any runs here) has room.

    Called outside the `except` block that caught the failure: until that ends, the traceback
    keeps the failed run's frames and their tensors alive. After a device error the context may
    refuse even this; that must not hide the job's own error.
    """
    gc.collect()
    if torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.empty_cache()

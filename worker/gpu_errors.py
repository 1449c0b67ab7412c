"""Which exceptions mean "the GPU is unusable now" rather than "the code has a bug": one classifier.

A job's GPU stages raise through three libraries that report CUDA trouble differently: torch
(`torch.OutOfMemoryError`, `torch.AcceleratorError` and plain `RuntimeError`s whose text starts
"CUDA error:" or names a cuDNN/cuBLAS status), and onnxruntime, whose exceptions are not
`RuntimeError` at all (`RuntimeException`, `Fail`, `EPFail`, ... from its pybind module) and only
say what happened in their text ("CUDA failure 2: out of memory", "Failed to allocate memory for
requested buffer", "CUDNN failure 4000: CUDNN_STATUS_INTERNAL_ERROR").

Two kinds of failure end the job with a sentence and ask RunPod for a fresh worker, because no
later job could count on this one: running out of memory (the allocators may stay fragmented)
and a context that is really gone (an illegal address, a device-side assert, a launch failure:
CUDA's "sticky" errors, after which every call in the process fails; cuDNN/cuBLAS
`EXECUTION_FAILED`, `INTERNAL_ERROR`, `MAPPING_ERROR`). Statuses that are deterministic for the
input (`NOT_SUPPORTED`, `BAD_PARAM`, `INVALID_VALUE`, cuDNN finding no engine for a shape, CUDA's
"invalid argument") are not: the same request fails the same way on any worker, so recycling the
worker for it would only let one poison request take down worker after worker. They are bugs, as
is anything else: raised, with their traceback in the log, and the worker takes the next job.
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
ORT_ERRORS: tuple[type[BaseException], ...] = tuple(
    value
    for value in vars(ort_errors).values()
    if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == ort_errors.__name__
)
_CARRIERS: tuple[type[BaseException], ...] = (RuntimeError, *ORT_ERRORS)

_OUT_OF_MEMORY = re.compile(
    r"out of memory|failed to allocate memory|cublas_status_alloc_failed|cudnn_status_alloc_failed"
    r"|cudnn_status_internal_error_device_allocation_failed|cudaerrormemoryallocation",
    re.IGNORECASE,
)
# A context that is really gone: CUDA's sticky errors in cudaGetErrorString's words (torch says
# "CUDA error: <words>", onnxruntime "CUDA failure <code>: <words>"), and the cuDNN/cuBLAS statuses
# of a failed launch or a broken library state (cuDNN 9's sub-statuses, such as
# CUDNN_STATUS_EXECUTION_FAILED_CUDART, start with these). Only these: any other status or CUDA
# error (NOT_SUPPORTED, BAD_PARAM, INVALID_VALUE, "invalid argument", "no kernel image") is not
# a reason to recycle the worker.
_CONTEXT_GONE = re.compile(
    r"illegal memory access|illegal address|device-side assert|launch failure|misaligned address"
    r"|illegal instruction|hardware stack error|invalid program counter|launch timed out"
    r"|uncorrectable ecc error|cuda (error|failure)[^:]*: unknown error"
    r"|_status_execution_failed|_status_internal_error|_status_mapping_error",
    re.IGNORECASE,
)


def classify_gpu_failure(error: BaseException) -> GpuFailure | None:
    """`OUT_OF_MEMORY`, `DEVICE_ERROR`, or None when `error` is a bug (the module says which is which).

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
    if _CONTEXT_GONE.search(text):
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

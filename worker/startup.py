"""The worker's start-up: device policy -> thread pools -> load -> log what runs where -> warm-up.

Every entry point that serves jobs (`handler.py`, `python -m worker.local`, the local endpoint
in `worker/serve.py`) calls `start` before its first job, so they all refuse the same things
with the same sentence:

- no CUDA device and no `ALLOW_CPU=true`: a GPU worker that silently falls back to the CPU loads
  ~15 GB of fp32 weights into RAM and then times out on every job, which is worse than not
  starting (RunPod shows the failed start, and the reason is one log line);
- `OOTD_COMPILE=true` with no compiler to build the compiled kernels (`worker.compiler`): the
  warm-up would fail with a traceback at every start, a crash loop;
- `PARSING_DEVICE=cuda` where parsing cannot get CUDA (no GPU, or an onnxruntime without its CUDA
  provider);
- on CUDA, onnxruntime-gpu is installed but the parsing sessions did not get its CUDA provider
  (usually cuDNN/cuBLAS not found): parsing would run on the CPU, seconds per job, unnoticed.
  `PARSING_DEVICE=cpu` says that this is meant, and the worker starts.

Then one log line says what actually runs (device, dtype, GPU and its memory, library versions,
the parsing providers in use), and the warm-up runs unless `WARMUP=false`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

import onnxruntime as ort
import torch

from ootd.pipeline import resolve_device_dtype
from preprocess.parsing import CUDA_PROVIDER
from worker.compiler import compiler_problem
from worker.config import Settings
from worker.gpu_errors import GpuFailure, classify_gpu_failure, failure_detail
from worker.job import precompute_house_masks
from worker.runtime import Runtime, WeightsMissingError, get_runtime
from worker.threads import size_thread_pools
from worker.warmup import warm_up

log = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("torch", "diffusers", "transformers", "onnxruntime")


class StartupError(RuntimeError):
    """The worker must not take jobs; `str(error)` is the one-line reason (and how to fix it)."""


def start(settings: Settings) -> Runtime:
    """Check the device, load the models (once per process), log the set-up, warm up; or refuse.

    Raises `StartupError` with a one-line reason; a GPU failure during the warm-up is one too.
    """
    device, _ = resolve_device_dtype(None, None)
    if device.type != "cuda":
        if not settings.allow_cpu:
            raise StartupError(
                f"no CUDA GPU is available to torch {torch.__version__}, and on the CPU every job "
                "would time out; set ALLOW_CPU=true to run on the CPU anyway (local runs and tests)"
            )
        log.warning("no CUDA GPU: running on the CPU because ALLOW_CPU=true")
    if settings.compile:
        problem = compiler_problem(device.type)
        if problem:
            raise StartupError(problem)
    problem = parsing_device_problem(settings.parsing_device, device, ort.get_available_providers())
    if problem:
        raise StartupError(problem)
    size_thread_pools()
    try:
        runtime = get_runtime(settings)
    except WeightsMissingError as error:
        raise StartupError(str(error)) from None
    except Exception as error:
        failure = classify_gpu_failure(error)
        if failure is None:
            raise
        raise StartupError(loading_failure(settings, failure, failure_detail(error))) from None
    providers = parsing_providers(runtime)
    if device.type == "cuda" and settings.parsing_device != "cpu":
        problem = parsing_provider_problem(providers, ort.get_available_providers())
        if problem:
            raise StartupError(problem)
    log.info("running on %s", describe(runtime, providers, settings.parsing_device))
    if settings.precompute_house_masks:
        _precompute_house_masks(runtime, settings)
    if not settings.warmup:
        log.info("warm-up skipped (WARMUP=false)")
        return runtime
    try:
        seconds = warm_up(runtime.pipelines, runtime.preprocessor)
    except Exception as error:
        if classify_gpu_failure(error) is None:
            raise
        detail = failure_detail(error)
    else:
        log.info("warm-up done in %.1f s", seconds)
        return runtime
    raise StartupError(f"the warm-up failed on the GPU ({detail})")


def loading_failure(settings: Settings, failure: GpuFailure, detail: str) -> str:
    """The one-line refusal when the models do not fit on (or cannot be moved to) the GPU.

    A card too small for the model types asked for is a deployment mistake, not a transient
    fault: the line says what to change (a larger card, or fewer model types) instead of a
    traceback from deep inside `Module.to`.
    """
    types = ",".join(settings.model_types)
    message = f"loading the models ({types}) failed on the GPU ({detail})"
    if failure is not GpuFailure.OUT_OF_MEMORY:
        return message
    card = f"the card is {gpu_card(torch.cuda.current_device())}; " if torch.cuda.is_available() else ""
    fewer = " or fewer model types (e.g. OOTD_MODEL_TYPES=hd)" if len(settings.model_types) > 1 else ""
    return f"{message}: {card}use a GPU with more memory{fewer}"


def _precompute_house_masks(runtime: Runtime, settings: Settings) -> None:
    """PRECOMPUTE_HOUSE_MASKS: every house photo's masks before the first job (time logged)."""
    runtime.configure_caches(settings)
    started = time.perf_counter()
    count = precompute_house_masks(runtime, settings)
    log.info("precomputed %d house-model masks in %.1f s", count, time.perf_counter() - started)


def parsing_providers(runtime: Runtime) -> list[list[str]]:
    """The execution providers each parsing session actually got (onnxruntime falls back
    silently when a provider cannot load, so what was asked for proves nothing)."""
    parser = getattr(runtime.preprocessor, "parser", None)
    if parser is None:
        return []
    return [list(session.get_providers()) for session in (parser.atr_session, parser.lip_session)]


def parsing_device_problem(
    requested: str | None, device: torch.device, available: Sequence[str]
) -> str | None:
    """Why `PARSING_DEVICE=cuda` cannot be honoured here (checked before loading), or None."""
    if requested != "cuda":
        return None
    if device.type != "cuda":
        return "PARSING_DEVICE=cuda, but there is no CUDA GPU; unset it or set PARSING_DEVICE=cpu"
    if CUDA_PROVIDER not in available:
        return (
            f"PARSING_DEVICE=cuda, but this onnxruntime ({_version('onnxruntime')}) has no CUDA provider "
            "(onnxruntime-gpu has one); unset it to parse on the CPU, or set PARSING_DEVICE=cpu"
        )
    return None


def parsing_provider_problem(
    session_providers: Sequence[Sequence[str]], available: Sequence[str]
) -> str | None:
    """Why the worker must not start when onnxruntime offers CUDA but a parsing session lacks it."""
    if CUDA_PROVIDER not in available:
        return None
    fallen_back = [list(providers) for providers in session_providers if CUDA_PROVIDER not in providers]
    if not fallen_back:
        return None
    return (
        f"onnxruntime-gpu is installed but the parsing sessions run on {', '.join(fallen_back[0])}: its "
        "CUDA provider could not load (see onnxruntime's error above; usually cuDNN or cuBLAS for "
        "its CUDA version is missing), and parsing on the CPU would slow every job; set "
        "PARSING_DEVICE=cpu to parse on the CPU anyway"
    )


def describe(
    runtime: Runtime, session_providers: Sequence[Sequence[str]], parsing_device: str | None = None
) -> str:
    """One line: device and GPU, dtype, library versions, parsing providers (and PARSING_DEVICE
    when it was set: CPU parsing on a GPU worker must read as meant, not as a fallback)."""
    pipeline = next(iter(runtime.pipelines.values()))
    device = pipeline.unet_vton.device
    where = str(device)
    if device.type == "cuda":
        where += f" ({gpu_card(device)})"
    versions = ", ".join(f"{name} {_version(name)}" for name in VERSIONED_PACKAGES)
    used = sorted({name for providers in session_providers for name in providers})
    return (
        f"{where}, {str(pipeline.unet_vton.dtype).removeprefix('torch.')}, models "
        f"{','.join(runtime.pipelines)}; {versions}; parsing providers {', '.join(used) or 'none'}"
        + (f" (PARSING_DEVICE={parsing_device})" if parsing_device else "")
    )


def gpu_card(device: torch.device | int) -> str:
    """`NVIDIA H100 80GB HBM3, 79.1 GiB`: the card's name and memory, as the log lines give them."""
    properties = torch.cuda.get_device_properties(device)
    return f"{properties.name}, {properties.total_memory / 2**30:.1f} GiB"


def _version(package: str) -> str:
    """The installed version; onnxruntime-gpu installs the module `onnxruntime` under another name."""
    names = (package, f"{package}-gpu") if package == "onnxruntime" else (package,)
    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "unknown"

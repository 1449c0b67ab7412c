"""GPU failures in every stage of a job, injected into the real tiny models.

Without a GPU the failures are raised where CUDA would raise them: forward pre-hooks on the real
torch modules (pose network, CLIP image and text encoders, both UNets, the VAE's encoder and
decoder) and, for parsing, an exception of onnxruntime's own types raised where each real
session runs; the messages are the libraries' own. Jobs go through the runpod SDK's own job
runner, which turns `refresh_worker` into `stopPod` and a raised exception into an error with
its traceback. Running out of memory or losing the context ends the job with one sentence naming
the stage and `stopPod`; a cuDNN/cuBLAS status that the input alone causes is a bug: a traceback,
no `stopPod`. Either way the same process serves the next job, with the bytes it gave before the
failures. The real out-of-memory path is measured by the GPU benchmark.
"""

import asyncio
import itertools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnxruntime.capi.onnxruntime_pybind11_state as ort_errors
import pytest
import torch
from mutations import leaking_fusion_store
from runpod.serverless.modules.rp_job import run_job
from worker_support import data_uri, image_bytes

from worker.config import Settings
from worker.gpu_errors import MAX_DETAIL, GpuFailure, classify_gpu_failure, failure_detail
from worker.job import handle
from worker.runtime import Runtime, get_runtime

REPO = Path(__file__).resolve().parent.parent
GARMENT = REPO / "assets" / "garments" / "0_tshirt.png"
RESTART = "(this worker will be restarted)"

# What CUDA, cuDNN and cuBLAS say through torch (torch.AcceleratorError carries CUDA's sticky
# errors; cuDNN and cuBLAS statuses come as RuntimeErrors) and through onnxruntime.
ILLEGAL = "CUDA error: an illegal memory access was encountered\nCompile with `TORCH_USE_CUDA_DSA` to enable"
DEVICE_ASSERT = "CUDA error: device-side assert triggered"
CUDNN_FAILED = "cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"
ORT_OOM = (
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. "
    "Name:'/conv1/Conv' Status Message: CUDA failure 2: out of memory ; GPU=0 ; hostname=worker ; "
    "file=/onnxruntime_src/onnxruntime/core/providers/cuda/cuda_call.cc ; line=129 ; "
    "expr=cudaMalloc(&p, size);"
)
ORT_ARENA = (
    "[ONNXRuntimeError] : 1 : FAIL : /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:359 "
    "void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool) Failed to allocate memory for "
    "requested buffer of size 268435456"
)
ORT_ILLEGAL = (
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 700: an illegal memory access was "
    "encountered ; GPU=0 ; hostname=worker ; expr=cudaStreamSynchronize(stream);"
)


def ort_status(code: int, status: str, expr: str) -> str:
    """onnxruntime's text for a cuDNN/cuBLAS status raised inside a node."""
    library = status.split("_")[0]
    return (
        "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv node. "
        f"Name:'/conv1/Conv' Status Message: {library} failure {code}: {status} ; GPU=0 ; "
        f"hostname=worker ; file=/onnxruntime_src/onnxruntime/core/providers/cuda/nn/conv.cc ; "
        f"line=470 ; expr={expr};"
    )


# Per library and family, the exceptions raised (the stages of a library take them in turn).
TORCH_FAILURES = {
    "out of memory": [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"),
        RuntimeError("CUDA error: out of memory"),
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    ],
    "context gone": [
        torch.AcceleratorError(ILLEGAL),
        torch.AcceleratorError(DEVICE_ASSERT),
        RuntimeError(CUDNN_FAILED),
        torch.AcceleratorError("CUDA error: unspecified launch failure"),
        RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, ...)`"),
        RuntimeError("CUDA error: CUBLAS_STATUS_INTERNAL_ERROR when calling `cublasGemmEx( handle, ...)`"),
        RuntimeError("CUDA error: CUBLAS_STATUS_MAPPING_ERROR when calling `cublasSgemm( handle, ...)`"),
    ],
    "poison": [
        RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a "
                     "non-contiguous input."),
        RuntimeError("GET was unable to find an engine to execute this computation"),
        RuntimeError("CUDA error: CUBLAS_STATUS_INVALID_VALUE when calling `cublasGemmStridedBatchedEx( "
                     "handle, opa, opb, m, n, k, ...)`"),
        RuntimeError("cuDNN error: CUDNN_STATUS_BAD_PARAM"),
        RuntimeError("CUDA error: CUBLAS_STATUS_NOT_SUPPORTED when calling `cublasLtMatmul( ...)`"),
        torch.AcceleratorError("CUDA error: invalid argument"),
    ],
}  # fmt: skip
ORT_FAILURES = {
    "out of memory": [ort_errors.RuntimeException(ORT_OOM), ort_errors.Fail(ORT_ARENA)],
    "context gone": [
        ort_errors.RuntimeException(ORT_ILLEGAL),
        ort_errors.Fail(ort_status(4000, "CUDNN_STATUS_INTERNAL_ERROR", "cudnnConvolutionForward(...)")),
        ort_errors.EPFail(ort_status(5000, "CUDNN_STATUS_EXECUTION_FAILED", "cudnnConvolutionForward(...)")),
    ],
    "poison": [
        ort_errors.Fail(ort_status(3000, "CUDNN_STATUS_NOT_SUPPORTED", "cudnnConvolutionForward(...)")),
        ort_errors.RuntimeException(ort_status(2000, "CUDNN_STATUS_BAD_PARAM", "cudnnSetTensor()")),
        ort_errors.Fail(ort_status(7, "CUBLAS_STATUS_INVALID_VALUE", "cublasSgemm(...)")),
    ],
}  # fmt: skip


@dataclass(frozen=True)
class Stage:
    """Where a failure is injected, the job that reaches it, and what the sentence calls it."""

    name: str
    part: str  # in the job's error sentence
    fail: Callable[[Runtime, BaseException], object]  # a context manager that makes it raise
    library: str  # whose exceptions it raises: "torch" or "onnxruntime"
    request: dict  # fields on top of the base job
    scales: bool = False  # memory grows with samples and resolution: the sentence says so


def module_of(get: Callable[[Runtime], torch.nn.Module]) -> Callable[[Runtime, BaseException], object]:
    return lambda runtime, error: failing_module(get(runtime), error)


def session_of(name: str) -> Callable[[Runtime, BaseException], object]:
    return lambda runtime, error: failing_session(runtime, name, error)


LIBRARIES = {"torch": TORCH_FAILURES, "onnxruntime": ORT_FAILURES}
MASK = data_uri(image_bytes((96, 128), mode="L"))
STAGES = [
    Stage("pose", "pose estimation", module_of(lambda r: r.preprocessor.pose.net), "torch", {}),
    Stage("parsing atr", "human parsing", session_of("atr_session"), "onnxruntime", {}),
    Stage("parsing lip", "human parsing", session_of("lip_session"), "onnxruntime", {}),
    Stage("garment parsing", "garment parsing", session_of("atr_session"), "onnxruntime",
          {"garment_photo_type": "model"}),
    Stage("category auto", "category detection", module_of(lambda r: r.pipelines["hd"].image_encoder),
          "torch", {"category": "auto"}),
    # The caller's mask: no pose or parsing before the diffusion (they are covered above).
    *(Stage(name, "diffusion", module_of(get), "torch", {"mask": MASK}, scales=True) for name, get in (
        ("clip", lambda r: r.pipelines["hd"].image_encoder),
        ("text_encoder", lambda r: r.pipelines["hd"].text_encoder),
        ("unet_garm", lambda r: r.pipelines["hd"].unet_garm),
        ("unet_vton", lambda r: r.pipelines["hd"].unet_vton),
        ("vae_encode", lambda r: r.pipelines["hd"].vae.encoder),
        ("vae_decode", lambda r: r.pipelines["hd"].vae.decoder),
    )),
]  # fmt: skip


@pytest.fixture(scope="module")
def settings(tiny_root: Path) -> Settings:
    # No caches: every job must run the stage whose failure it injects, whatever ran before.
    return Settings(
        checkpoints_dir=tiny_root, extra_resolutions=("256x192",), garment_cache_mb=0, house_mask_cache_mb=0
    )


@pytest.fixture(scope="module")
def runtime(settings: Settings) -> Runtime:
    return get_runtime(settings)


@pytest.fixture(scope="module")
def job() -> dict:
    # A house photo and no mask, so that pose and parsing run too; two steps, so that the image
    # depends on the garment's conditioning (one step returns the starting noise).
    garment = data_uri(GARMENT.read_bytes())
    inputs = {"person_index": 0, "garment": garment, "resolution": "256x192", "steps": 2, "seed": 3,
              "guidance_scale": 1.0}  # fmt: skip
    return {"id": "gpu", "input": inputs}


def run(job: dict, runtime: Runtime, settings: Settings) -> dict:
    return handle(job, runtime, settings, progress=lambda update: None)


def run_by_sdk(job: dict, runtime: Runtime, settings: Settings) -> dict:
    """The job as the runpod SDK runs it on RunPod: its result, as sent to the platform."""
    return asyncio.run(run_job(lambda job: run(job, runtime, settings), job))


@contextmanager
def failing_module(module: torch.nn.Module, error: BaseException) -> Iterator[None]:
    """`module` raises `error` when it is called, as a CUDA kernel launch inside it would."""

    def hook(module, args):
        raise error

    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def failing_session(runtime: Runtime, name: str, error: BaseException) -> Iterator[None]:
    """The parser's real onnxruntime session `name` raises `error` when it runs."""
    session = getattr(runtime.preprocessor.parser, name)

    def run_and_fail(*args, **kwargs):
        raise error

    session.run = run_and_fail
    try:
        yield
    finally:
        del session.run  # back to the class's own method


def expected_sentence(stage: Stage, family: str, error: BaseException) -> str:
    if family == "out of memory" and stage.scales:
        return (f"the GPU ran out of memory in {stage.part} for 1 sample(s) at 256x192; try fewer samples "
                f"or a smaller resolution {RESTART}")  # fmt: skip
    if family == "out of memory":
        return f"the GPU ran out of memory in {stage.part}; send the job again {RESTART}"
    return f"the GPU failed in {stage.part} ({failure_detail(error)}); send the job again {RESTART}"


@contextmanager
def nothing_failed_is_used(job: dict, runtime: Runtime, settings: Settings) -> Iterator[dict]:
    """`job` gives the same bytes after the block as before it: nothing the jobs that failed
    inside left behind (their garment's conditioning, say) is used (2 steps, no caches). Yields
    `job` with another garment, for the failing jobs. AssertionError where this fails."""
    reference = run(job, runtime, settings)
    assert "error" not in reference, reference
    yield {**job, "input": {**job["input"], "garment": data_uri(image_bytes((96, 128), seed=2))}}
    result = run(job, runtime, settings)
    assert "error" not in result, result
    assert result["images"] == reference["images"], "the job gave other bytes after the failures"


def test_a_gpu_failure_in_any_stage_is_one_sentence_and_a_new_worker_a_poison_request_is_a_bug(
    runtime, settings, job, subtests, capfd
) -> None:
    # One process, every stage, each family of failure in turn (each library's own exceptions);
    # then the good job again, with the bytes it gave before.
    turns = {(name, family): itertools.cycle(errors)
             for name, library in LIBRARIES.items() for family, errors in library.items()}  # fmt: skip
    used: set[int] = set()
    with nothing_failed_is_used(job, runtime, settings) as other_garment:
        for stage in STAGES:
            for family in LIBRARIES[stage.library]:
                error = next(turns[stage.library, family])
                used.add(id(error))
                with subtests.test(stage=stage.name, family=family, error=repr(error)[:80]):
                    failing = {**other_garment, "input": {**other_garment["input"], **stage.request}}
                    with stage.fail(runtime, error):
                        result = run_by_sdk(failing, runtime, settings)
                    if family == "poison":
                        # A bug: the SDK reports it with its traceback and the worker is kept.
                        assert "stopPod" not in result, result
                        report = json.loads(result["error"])
                        assert report["error_message"] == str(error)
                        assert report["error_traceback"].startswith("Traceback (most recent call last)")
                        assert "Captured Handler Exception" in capfd.readouterr().out
                    else:
                        assert result == {"error": expected_sentence(stage, family, error), "stopPod": True}
    # Every exception was injected somewhere.
    assert used == {id(e) for library in LIBRARIES.values() for errors in library.values() for e in errors}


def test_the_check_fails_when_a_failed_jobs_garment_is_left_behind(runtime, settings, job) -> None:
    """Mutation: each job conditions on the garment the job before it left behind, here the
    one whose try-on UNet failed."""
    stage = next(stage for stage in STAGES if stage.name == "unet_vton")
    with (
        leaking_fusion_store(runtime),
        pytest.raises(AssertionError, match="the job gave other bytes after the failures"),
        nothing_failed_is_used(job, runtime, settings) as failing,
        stage.fail(runtime, RuntimeError(CUDNN_FAILED)),
    ):
        assert "error" in run({**failing, "input": {**failing["input"], **stage.request}}, runtime, settings)


def test_any_other_exception_in_a_gpu_stage_is_still_raised(runtime, settings, job, subtests) -> None:
    pose = runtime.preprocessor.pose.net
    not_gpu = ValueError("out of memory")
    shapes = RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    argument = ort_errors.InvalidArgument("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dims")
    bugs = [
        (failing_module(pose, not_gpu), not_gpu),
        (failing_module(pose, shapes), shapes),
        (failing_session(runtime, "atr_session", argument), argument),
    ]
    for injected, error in bugs:
        # The words "out of memory" alone do not make a GPU failure, nor does a RuntimeError.
        with subtests.test(error=repr(error)), injected, pytest.raises(type(error)) as raised:
            run(job, runtime, settings)
        assert raised.value is error


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (torch.OutOfMemoryError("CUDA out of memory."), GpuFailure.OUT_OF_MEMORY),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
         GpuFailure.OUT_OF_MEMORY),
        (RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, ...)`"),
         GpuFailure.DEVICE_ERROR),
        (RuntimeError("CUDA driver error: unspecified launch failure"), GpuFailure.DEVICE_ERROR),
        (RuntimeError("GET was unable to find an engine to execute this computation"), None),
        (RuntimeError("FIND was unable to find an engine to execute this computation"), None),
        (ort_errors.EPFail("CUDNN failure 4: CUDNN_STATUS_INTERNAL_ERROR ; GPU=0"), GpuFailure.DEVICE_ERROR),
        # cuDNN 9's sub-statuses: input-bound stays input-bound, a lost device allocation is memory.
        (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED_SHAPE"), None),
        (RuntimeError("cuDNN error: CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH"), None),
        (RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED_CUDART"), GpuFailure.DEVICE_ERROR),
        (RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED"),
         GpuFailure.OUT_OF_MEMORY),
        (ort_errors.Fail("CUDA failure 999: unknown error ; GPU=0 ; hostname=w"), GpuFailure.DEVICE_ERROR),
        (torch.AcceleratorError("CUDA error: misaligned address"), GpuFailure.DEVICE_ERROR),
        (torch.AcceleratorError("CUDA error: the launch timed out and was terminated"),
         GpuFailure.DEVICE_ERROR),
        # The build or the card, not this worker's context: every worker would fail the same way.
        (torch.AcceleratorError("CUDA error: no kernel image is available for execution on the device"),
         None),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ARCH_MISMATCH"), None),
        (ort_errors.NoSuchFile("Load model from parsing_atr.onnx failed"), None),
        (MemoryError(), None),  # the host, not the GPU: a bug to see, not a worker to recycle
        (KeyError("CUDA error"), None),
    ],
)  # fmt: skip
def test_classification(error: BaseException, failure: GpuFailure | None) -> None:
    assert classify_gpu_failure(error) is failure


def test_failure_detail_is_one_bounded_line_without_onnxruntimes_prefix() -> None:
    assert failure_detail(RuntimeError(ILLEGAL)) == "CUDA error: an illegal memory access was encountered"
    assert failure_detail(ort_errors.Fail(ORT_ARENA)).startswith("/onnxruntime_src/")
    long = failure_detail(RuntimeError("CUDA error: " + "x" * 1000))
    assert len(long) == MAX_DETAIL and long.endswith("...")
    assert failure_detail(RuntimeError("")) == "RuntimeError"

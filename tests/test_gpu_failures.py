"""GPU failures in every stage of a job, injected into the real tiny models.

Without a GPU the failures are raised where CUDA would raise them: forward pre-hooks on the real
torch modules (pose network, CLIP image and text encoders, both UNets, the VAE's encoder and
decoder) and, for parsing, an exception of onnxruntime's own types raised where each real
session runs. A GPU failure ends the job with one sentence and `refresh_worker`; the next job
in the same process is served, with the bytes it got before the failures; any other exception
is still a bug and is raised. The real out-of-memory path is measured by the GPU benchmark.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import onnxruntime.capi.onnxruntime_pybind11_state as ort_errors
import pytest
import torch
from mutations import leaking_fusion_store
from worker_support import data_uri, image_bytes

from worker.config import Settings
from worker.gpu_errors import MAX_DETAIL, GpuFailure, classify_gpu_failure, failure_detail
from worker.job import handle
from worker.runtime import Runtime, get_runtime

REPO = Path(__file__).resolve().parent.parent
GARMENT = REPO / "assets" / "garments" / "0_tshirt.png"
OOM_ERROR = (
    "the GPU ran out of memory for 1 sample(s) at 256x192; try fewer samples or a smaller resolution "
    "(this worker will be restarted)"
)
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
ILLEGAL = "CUDA error: an illegal memory access was encountered\nCompile with `TORCH_USE_CUDA_DSA` to enable"
DEVICE_ASSERT = "CUDA error: device-side assert triggered"
CUDNN_FAILED = "cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"

Stage = Callable[[Runtime], torch.nn.Module]
TORCH_STAGES: dict[str, Stage] = {
    "pose": lambda runtime: runtime.preprocessor.pose.net,
    "clip": lambda runtime: runtime.pipelines["hd"].image_encoder,
    "text_encoder": lambda runtime: runtime.pipelines["hd"].text_encoder,
    "unet_garm": lambda runtime: runtime.pipelines["hd"].unet_garm,
    "unet_vton": lambda runtime: runtime.pipelines["hd"].unet_vton,
    "vae_encode": lambda runtime: runtime.pipelines["hd"].vae.encoder,
    "vae_decode": lambda runtime: runtime.pipelines["hd"].vae.decoder,
}


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
    # A house photo and no mask, so that pose and parsing run too.
    garment = data_uri(GARMENT.read_bytes())
    inputs = {"person_index": 0, "garment": garment, "resolution": "256x192", "steps": 2, "seed": 3,
              "guidance_scale": 1.0}  # fmt: skip
    return {"id": "gpu", "input": inputs}


def run(job: dict, runtime: Runtime, settings: Settings) -> dict:
    return handle(job, runtime, settings, progress=lambda update: None)


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


RESTART = "; send the job again (this worker will be restarted)"
TORCH_CASES = [
    ("pose", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"), OOM_ERROR),
    ("clip", RuntimeError(ILLEGAL), "the GPU failed (CUDA error: an illegal memory access was encountered)"),
    ("text_encoder", torch.AcceleratorError(DEVICE_ASSERT), f"the GPU failed ({DEVICE_ASSERT})"),
    ("unet_garm", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), OOM_ERROR),
    ("unet_vton", RuntimeError("CUDA error: out of memory"), OOM_ERROR),
    ("vae_encode", RuntimeError(CUDNN_FAILED), f"the GPU failed ({CUDNN_FAILED})"),
    ("vae_decode", RuntimeError(DEVICE_ASSERT), f"the GPU failed ({DEVICE_ASSERT})"),
]
PARSING_CASES = [
    ("atr_session", ort_errors.RuntimeException(ORT_OOM), OOM_ERROR),
    ("lip_session", ort_errors.Fail(ORT_ARENA), OOM_ERROR),
    ("lip_session", ort_errors.RuntimeException(ORT_ILLEGAL),
     "the GPU failed (CUDA failure 700: an illegal memory access was encountered ; GPU=0 ; "
     "hostname=worker ; expr=cudaStreamSynchronize(stream);)"),
]  # fmt: skip


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


def test_a_gpu_failure_in_any_stage_asks_for_a_new_worker_and_the_next_job_is_served(
    runtime, settings, job, subtests
) -> None:
    # One process, one failure after another (each stage's own kind of error), then a good job.
    with nothing_failed_is_used(job, runtime, settings) as failing:
        for stage, error, message in TORCH_CASES:
            with subtests.test(stage=stage, error=type(error).__name__):
                with failing_module(TORCH_STAGES[stage](runtime), error):
                    result = run(failing, runtime, settings)
                expected = message if message == OOM_ERROR else message + RESTART
                assert result == {"error": expected, "refresh_worker": True}
        for session, error, message in PARSING_CASES:
            with subtests.test(stage=session, error=type(error).__name__):
                assert not isinstance(error, RuntimeError)  # why parsing needs its own classification
                with failing_session(runtime, session, error):
                    result = run(failing, runtime, settings)
                expected = message if message == OOM_ERROR else message + RESTART
                assert result == {"error": expected, "refresh_worker": True}


def test_the_check_fails_when_a_failed_jobs_garment_is_left_behind(runtime, settings, job) -> None:
    """Mutation: each job conditions on the garment the job before it left behind, here the
    one whose try-on UNet failed."""
    stage, error, _ = next(case for case in TORCH_CASES if case[0] == "unet_vton")
    with (
        leaking_fusion_store(runtime),
        pytest.raises(AssertionError, match="the job gave other bytes after the failures"),
        nothing_failed_is_used(job, runtime, settings) as failing,
        failing_module(TORCH_STAGES[stage](runtime), error),
    ):
        assert "error" in run(failing, runtime, settings)


def test_any_other_exception_in_a_gpu_stage_is_still_raised(runtime, settings, job, subtests) -> None:
    pose = TORCH_STAGES["pose"](runtime)
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
        (ort_errors.EPFail("CUDNN failure 4: CUDNN_STATUS_INTERNAL_ERROR ; GPU=0"), GpuFailure.DEVICE_ERROR),
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

"""The worker's start-up on the real tiny models: device policy, the set-up log line, the warm-up.

The process-level behaviour (`python handler.py` refusing to start, serving with ALLOW_CPU) is
in test_handler_process.py; these call `worker.startup.start` in-process, where the models load
once for the whole test session.
"""

import logging
from collections import Counter
from contextlib import contextmanager
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from worker.config import Settings
from worker.startup import (
    StartupError,
    parsing_device_problem,
    parsing_provider_problem,
    parsing_providers,
    start,
)
from worker.warmup import WARMUP_STEPS

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")


@pytest.fixture(scope="module")
def settings(tiny_root: Path) -> Settings:
    # One model type: its warm-up costs half as much as hd,dc's (test_warmup covers both).
    return Settings(checkpoints_dir=tiny_root, model_types=("hd",), allow_cpu=True)


@contextmanager
def counted_unet_calls(runtime_settings: Settings):
    """Count the try-on UNet's forward calls per model type while the block runs."""
    from worker.runtime import get_runtime

    calls: Counter[str] = Counter()
    handles = [
        pipeline.unet_vton.register_forward_pre_hook(lambda module, args, name=name: calls.update([name]))
        for name, pipeline in get_runtime(runtime_settings).pipelines.items()
    ]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


@needs_no_cuda
def test_without_cuda_start_refuses_in_one_line_before_loading_anything(tmp_path: Path) -> None:
    # The checkpoints folder is empty: the device is refused before any weight is looked for.
    with pytest.raises(StartupError) as refused:
        start(Settings(checkpoints_dir=tmp_path))
    message = str(refused.value)
    assert message == (
        f"no CUDA GPU is available to torch {torch.__version__}, and on the CPU every job would time out; "
        "set ALLOW_CPU=true to run on the CPU anyway (local runs and tests)"
    )
    assert "\n" not in message


def test_missing_weights_are_a_startup_error_too(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=f"^CHECKPOINTS_DIR={tmp_path} lacks"):
        start(Settings(checkpoints_dir=tmp_path, allow_cpu=True))


@needs_no_cuda
def test_start_logs_what_runs_where_and_warms_up(settings: Settings, caplog) -> None:
    caplog.set_level(logging.INFO, logger="worker.startup")
    with counted_unet_calls(settings) as calls:
        runtime = start(settings)
    assert calls == {"hd": WARMUP_STEPS}
    messages = [record.getMessage() for record in caplog.records if record.name == "worker.startup"]
    assert "no CUDA GPU: running on the CPU because ALLOW_CPU=true" in messages
    versions = ", ".join(
        f"{name} {version(name)}" for name in ("torch", "diffusers", "transformers", "onnxruntime")
    )
    assert (
        f"running on cpu, float32, models hd; {versions}; parsing providers CPUExecutionProvider"
    ) in messages
    (warm,) = [message for message in messages if message.startswith("warm-up done in ")]
    assert float(warm.removeprefix("warm-up done in ").removesuffix(" s")) > 0
    assert parsing_providers(runtime) == [["CPUExecutionProvider"], ["CPUExecutionProvider"]]


def test_warmup_false_skips_the_warm_up(settings: Settings, caplog) -> None:
    caplog.set_level(logging.INFO, logger="worker.startup")
    with counted_unet_calls(settings) as calls:
        start(replace(settings, warmup=False))
    assert calls == {}
    assert "warm-up skipped (WARMUP=false)" in caplog.messages
    assert not [message for message in caplog.messages if message.startswith("warm-up done")]


def test_a_gpu_failure_in_the_warm_up_is_a_startup_error_and_a_bug_is_raised(settings: Settings) -> None:
    from worker.runtime import get_runtime

    unet = get_runtime(settings).pipelines["hd"].unet_garm
    for error in (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), KeyError("bug")):

        def fail(module, args, error=error):
            raise error

        handle = unet.register_forward_pre_hook(fail)
        try:
            with pytest.raises(StartupError if isinstance(error, RuntimeError) else KeyError) as raised:
                start(settings)
        finally:
            handle.remove()
        if isinstance(error, RuntimeError):
            assert str(raised.value) == (
                "the warm-up failed on the GPU (CUDA out of memory. Tried to allocate 2.00 GiB)"
            )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.54 GiB"),
            "loading the models (hd,dc) failed on the GPU (CUDA out of memory. Tried to allocate "
            "1.54 GiB): use a GPU with more memory or fewer model types (e.g. OOTD_MODEL_TYPES=hd)",
        ),
        (
            RuntimeError("CUDA error: an illegal memory access was encountered\nCompile with ..."),
            "loading the models (hd,dc) failed on the GPU (CUDA error: an illegal memory access was "
            "encountered)",
        ),
        (KeyError("bug"), None),
    ],
)
def test_a_gpu_failure_while_loading_is_one_line_and_a_bug_is_raised(
    tiny_root: Path, tmp_path: Path, monkeypatch, error: BaseException, expected: str | None
) -> None:
    from diffusers import UNet2DConditionModel

    # A folder of its own (links to the tiny tree's parts) so that this start really loads:
    # runtimes are kept per resolved folder. The failure is raised where a real one comes from:
    # moving a UNet's weights onto the device.
    (tmp_path / "tree").mkdir()
    for part in tiny_root.iterdir():
        (tmp_path / "tree" / part.name).symlink_to(part, target_is_directory=part.is_dir())
    settings = Settings(checkpoints_dir=tmp_path / "tree", allow_cpu=True, warmup=False)
    module_to = torch.nn.Module.to

    def to(module, *args, **kwargs):
        if isinstance(module, UNet2DConditionModel):
            raise error
        return module_to(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    with pytest.raises(StartupError if expected else KeyError) as raised:
        start(settings)
    if expected:
        assert str(raised.value) == expected


def test_onnxruntime_gpu_without_its_cuda_provider_in_the_sessions_is_refused(settings: Settings) -> None:
    from worker.runtime import get_runtime

    # The real sessions of this (CPU) onnxruntime, as onnxruntime-gpu leaves them when its CUDA
    # provider fails to load: it falls back to the CPU with only an error in its own log.
    fallen_back = parsing_providers(get_runtime(settings))
    cuda_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    problem = parsing_provider_problem(fallen_back, cuda_build)
    assert problem is not None and problem.startswith(
        "onnxruntime-gpu is installed but the parsing sessions run on CPUExecutionProvider: "
        "its CUDA provider could not load"
    )
    # The way out that needs no new image.
    assert problem.endswith("; set PARSING_DEVICE=cpu to parse on the CPU anyway")
    assert "\n" not in problem
    # Plain onnxruntime (the GPU benchmark machines) runs parsing on the CPU by design.
    assert parsing_provider_problem(fallen_back, ort.get_available_providers()) is None
    with_cuda = [["CUDAExecutionProvider", "CPUExecutionProvider"]] * 2
    assert parsing_provider_problem(with_cuda, cuda_build) is None


@pytest.mark.parametrize(
    ("env", "allow_cpu", "warmup"),
    [
        ({}, False, True),
        ({"ALLOW_CPU": "true", "WARMUP": "false"}, True, False),
        ({"ALLOW_CPU": " Yes ", "WARMUP": "0"}, True, False),
        ({"ALLOW_CPU": "off", "WARMUP": "on"}, False, True),
        ({"ALLOW_CPU": "", "WARMUP": ""}, False, True),
    ],
)
def test_allow_cpu_and_warmup_settings(env: dict, allow_cpu: bool, warmup: bool) -> None:
    settings = Settings.from_env(env)
    assert (settings.allow_cpu, settings.warmup) == (allow_cpu, warmup)


def test_a_malformed_flag_is_named() -> None:
    with pytest.raises(ValueError, match=r"^WARMUP must be true or false, not 'maybe'$"):
        Settings.from_env({"WARMUP": "maybe"})


@pytest.mark.parametrize(
    ("raw", "device"), [(None, None), ("", None), ("cuda", "cuda"), (" CPU ", "cpu"), ("cpu", "cpu")]
)
def test_parsing_device_setting(raw: str | None, device: str | None) -> None:
    env = {} if raw is None else {"PARSING_DEVICE": raw}
    assert Settings.from_env(env).parsing_device == device


def test_a_malformed_parsing_device_is_named() -> None:
    with pytest.raises(ValueError, match=r"^PARSING_DEVICE must be cuda or cpu, not 'gpu'$"):
        Settings.from_env({"PARSING_DEVICE": "gpu"})


def test_parsing_device_cuda_where_parsing_cannot_have_cuda_is_refused() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert parsing_device_problem("cuda", cpu, both) == (
        "PARSING_DEVICE=cuda, but there is no CUDA GPU; unset it or set PARSING_DEVICE=cpu"
    )
    assert parsing_device_problem("cuda", cuda, ["CPUExecutionProvider"]) == (
        f"PARSING_DEVICE=cuda, but this onnxruntime ({version('onnxruntime')}) has no CUDA provider "
        "(onnxruntime-gpu has one); unset it to parse on the CPU, or set PARSING_DEVICE=cpu"
    )
    assert parsing_device_problem("cuda", cuda, both) is None
    for requested in (None, "cpu"):
        assert parsing_device_problem(requested, cpu, both) is None
        assert parsing_device_problem(requested, cuda, ["CPUExecutionProvider"]) is None


@needs_no_cuda
def test_parsing_device_cuda_without_a_gpu_refuses_to_start_before_loading(tmp_path: Path) -> None:
    # The checkpoints folder is empty: refused before any weight is looked for.
    with pytest.raises(StartupError, match=r"^PARSING_DEVICE=cuda, but there is no CUDA GPU; "):
        start(Settings(checkpoints_dir=tmp_path, allow_cpu=True, parsing_device="cuda"))


def test_parsing_device_cpu_is_said_in_the_setup_line(settings: Settings, caplog) -> None:
    caplog.set_level(logging.INFO, logger="worker.startup")
    runtime = start(replace(settings, parsing_device="cpu", warmup=False))
    assert parsing_providers(runtime) == [["CPUExecutionProvider"], ["CPUExecutionProvider"]]
    (line,) = [message for message in caplog.messages if message.startswith("running on ")]
    assert line.endswith("; parsing providers CPUExecutionProvider (PARSING_DEVICE=cpu)")

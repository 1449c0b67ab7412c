"""The warm-up on the real tiny models: every GPU stage runs once, at the shapes a job uses."""

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from core.generation import smallest_resolution
from worker.config import Settings
from worker.runtime import get_runtime
from worker.warmup import WARMUP_STEPS, warm_up

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def runtime(tiny_root):
    return get_runtime(Settings(checkpoints_dir=tiny_root))  # shared with the other in-process tests


def test_smallest_published_resolution() -> None:
    assert smallest_resolution() == (384, 512)


def test_warm_up_runs_pose_parsing_and_a_short_diffusion_per_model_type(runtime, monkeypatch) -> None:
    calls: Counter[str] = Counter()
    shapes: dict[str, tuple] = {}
    handles = []

    def count(name: str):
        def hook(module, args) -> None:
            calls[name] += 1
            shapes[name] = tuple(args[0].shape)

        return hook

    handles.append(runtime.preprocessor.pose.net.register_forward_pre_hook(count("pose")))
    for model_type, pipeline in runtime.pipelines.items():
        handles.append(pipeline.unet_garm.register_forward_pre_hook(count(f"{model_type}/unet_garm")))
        handles.append(pipeline.unet_vton.register_forward_pre_hook(count(f"{model_type}/unet_vton")))
    vae = next(iter(runtime.pipelines.values())).vae  # shared by both model types
    handles.append(vae.decoder.register_forward_pre_hook(count("vae.decode")))
    parser = runtime.preprocessor.parser
    for name in ("atr_session", "lip_session"):
        session = getattr(parser, name)

        def counted_run(*args, _run=session.run, _name=name, **kwargs):
            calls[_name] += 1
            return _run(*args, **kwargs)

        monkeypatch.setattr(session, "run", counted_run)
    try:
        seconds = warm_up(runtime.pipelines, runtime.preprocessor)
    finally:
        for handle in handles:
            handle.remove()

    assert seconds > 0
    assert calls["pose"] == 1 and calls["atr_session"] == 1 and calls["lip_session"] == 1
    # Pose always sees the 384x512 picture a job gives it (halved and padded to stride 8).
    assert shapes["pose"][2:] == (184, 144)
    width, height = smallest_resolution()
    for model_type in runtime.pipelines:
        assert calls[f"{model_type}/unet_garm"] == 1
        assert calls[f"{model_type}/unet_vton"] == WARMUP_STEPS
        # Guidance on (the default 2.0): both halves in one batch, at the smallest published size.
        assert shapes[f"{model_type}/unet_vton"] == (2, 8, height // 8, width // 8)
    assert calls["vae.decode"] == len(runtime.pipelines)


def test_warmup_imports_nothing_of_runpod_boto3_or_the_worker_transport() -> None:
    # The GPU benchmark imports it on a machine without runpod or boto3: blocked here, the import
    # must still work. (requests is diffusers' own dependency, so it is there wherever diffusers is.)
    code = (
        "import sys\n"
        "for name in ('runpod', 'boto3', 'botocore'): sys.modules[name] = None\n"
        "import worker.warmup\n"
        "transport = ('storage', 'worker.job', 'worker.images', 'worker.runtime')\n"
        "print(sorted(m for m in transport if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

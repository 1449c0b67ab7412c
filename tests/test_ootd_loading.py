"""Loading the published tree with stock diffusers/transformers classes: exact keys, dtypes, sharing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel, UniPCMultistepScheduler
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPVisionModelWithProjection

from ootd import OOTDiffusionPipeline, layout
from ootd.loading import CLIP_TEXT_TOWER_PREFIXES, load_unets
from ootd.pipeline import build_scheduler

PUBLISHED_20_STEP_TIMESTEPS = [
    999,
    962,
    921,
    876,
    827,
    772,
    710,
    640,
    561,
    474,
    380,
    285,
    197,
    123,
    69,
    35,
    15,
    6,
    2,
    0,
]


@pytest.mark.parametrize("model_type", layout.MODEL_TYPES)
def test_stock_classes_load_every_file_with_zero_missing_or_unexpected_keys(tiny_ootd_root: Path, model_type):
    root = tiny_ootd_root
    for which in ("unet_garm", "unet_vton"):
        _, info = UNet2DConditionModel.from_pretrained(
            root / layout.unet_dir(model_type, which), output_loading_info=True
        )
        assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    _, info = AutoencoderKL.from_pretrained(root / layout.VAE_DIR, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    _, info = CLIPTextModel.from_pretrained(root / layout.TEXT_ENCODER_DIR, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    _, info = CLIPVisionModelWithProjection.from_pretrained(root / layout.CLIP_DIR, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    # only the text tower of the whole-CLIP file is left over
    assert info["unexpected_keys"] and all(
        k.startswith(CLIP_TEXT_TOWER_PREFIXES) for k in info["unexpected_keys"]
    )


def test_loader_refuses_a_checkpoint_with_a_missing_key(tiny_ootd_root: Path, tmp_path: Path):
    for which in ("unet_garm", "unet_vton"):
        shutil.copytree(
            tiny_ootd_root / layout.unet_dir("hd", which), tmp_path / layout.unet_dir("hd", which)
        )
    weights_file = tmp_path / layout.unet_dir("hd", "unet_vton") / "diffusion_pytorch_model.safetensors"
    weights = load_file(weights_file)
    del weights["mid_block.attentions.0.transformer_blocks.0.norm1.weight"]
    save_file(weights, weights_file)
    with pytest.raises(RuntimeError, match=r"hd/unet_vton.*missing"):
        load_unets(tmp_path, "hd", device="cpu")


def test_loader_names_missing_files(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="lacks"):
        OOTDiffusionPipeline.from_checkpoints(tmp_path, model_type="hd")
    with pytest.raises(ValueError, match="model_type"):
        OOTDiffusionPipeline.from_checkpoints(tmp_path, model_type="xl")


def test_cpu_defaults_to_float32_and_clip_stays_float32(pipes, tiny_ootd_root: Path):
    pipe = pipes["hd"]
    assert pipe.device.type == "cpu"
    for module in (pipe.unet_garm, pipe.unet_vton, pipe.vae, pipe.text_encoder, pipe.image_encoder):
        assert module.dtype == torch.float32
    half = OOTDiffusionPipeline.from_checkpoints(
        tiny_ootd_root, model_type="dc", device="cpu", dtype=torch.bfloat16
    )
    assert half.model_type == "dc"
    assert half.unet_garm.dtype == half.unet_vton.dtype == half.vae.dtype == torch.bfloat16
    assert half.text_encoder.dtype == half.image_encoder.dtype == torch.float32


def test_both_model_types_share_the_common_parts(pipes):
    hd, dc = pipes["hd"], pipes["dc"]
    assert (hd.model_type, dc.model_type) == ("hd", "dc")
    for name in ("vae", "text_encoder", "tokenizer", "image_encoder", "image_processor"):
        assert getattr(hd, name) is getattr(dc, name), name
    assert hd.scheduler is not dc.scheduler  # stateful: one per pipeline
    assert hd.unet_vton is not dc.unet_vton
    assert not torch.equal(hd.unet_vton.conv_in.weight, dc.unet_vton.conv_in.weight)
    expected = {"vae", "text_encoder", "tokenizer", "image_encoder", "image_processor", "scheduler"}
    assert set(hd.components) == expected | {"unet_garm", "unet_vton"}


def test_scheduler_is_published_unipc(pipes):
    scheduler = pipes["hd"].scheduler
    assert isinstance(scheduler, UniPCMultistepScheduler)
    config = scheduler.config
    assert config.solver_type == "bh2"
    assert config.solver_order == 2
    assert config.use_karras_sigmas is True
    assert config.final_sigmas_type == "sigma_min"
    assert config.predict_x0 is True
    assert config.timestep_spacing == "leading"
    scheduler.set_timesteps(20)
    assert scheduler.timesteps.tolist() == PUBLISHED_20_STEP_TIMESTEPS
    # the last step lands on sigma_min (0.0292), not 0 (diffusers >= 0.26 default)
    assert scheduler.sigmas[-1].item() == pytest.approx(0.0292, abs=1e-4)
    fresh = build_scheduler(dict(config))
    fresh.set_timesteps(20)
    assert torch.equal(fresh.sigmas, scheduler.sigmas)


def test_ootd_package_stays_free_of_worker_and_preprocessing_imports():
    import ast
    import subprocess
    import sys

    forbidden = {"runpod", "boto3", "botocore", "requests", "preprocess", "worker", "storage", "handler"}
    package = Path(__file__).resolve().parent.parent / "ootd"
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            assert not {name.split(".")[0] for name in names} & forbidden, (source.name, names)
    # and at run time nothing of the project's pulls them in (diffusers imports requests, and
    # accelerate imports boto3 when installed: those are the libraries' own business)
    probe = "import sys, ootd; print(sorted({'runpod', 'preprocess', 'worker'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=package.parent, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

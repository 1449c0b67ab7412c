"""`builder.to_fp16` on a copy of the tiny published tree: what it writes, what it leaves, and that
the worker loads and serves the converted tree with exactly the weights a cast at load gives."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import handler
from builder.to_fp16 import convert_tree, main, parts, safetensors_dtypes
from ootd import layout
from ootd.loading import load_shared_components, load_unets

REPO_ROOT = Path(__file__).resolve().parent.parent
GARMENT_PNG = REPO_ROOT / "assets" / "garments" / "0_tshirt.png"
UNET_FILES = [f"{layout.unet_dir(t, w)}/{layout.UNET_WEIGHTS}" for t in layout.MODEL_TYPES
              for w in ("unet_garm", "unet_vton")]  # fmt: skip
VAE_ST = layout.CONVERTED_WEIGHTS[layout.VAE_WEIGHTS]
TEXT_ST = layout.CONVERTED_WEIGHTS[layout.TEXT_ENCODER_WEIGHTS]
HUB_NAME = {part.target: part.listed for part in parts()}  # converted name -> name on the hub


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def converted(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """A converted copy of the tiny tree, and the conversion's report."""
    root = tmp_path_factory.mktemp("fp16") / "checkpoints"
    shutil.copytree(tiny_root, root)
    return root, convert_tree(root)


def test_unets_and_vae_halve_and_text_encoder_keeps_fp32(tiny_root, converted):
    root, report = converted
    assert sorted(report.converted) == sorted([*UNET_FILES, VAE_ST, TEXT_ST])
    sizes = {item.name: (item.bytes_before, item.bytes_after) for item in report.files}
    for name in [*UNET_FILES, VAE_ST]:
        before, after = sizes[name]
        assert before == (tiny_root / HUB_NAME[name]).stat().st_size
        assert 0.45 < after / before < 0.55, name
        assert safetensors_dtypes(root / name) == {"F16"}, name
    assert safetensors_dtypes(root / TEXT_ST) == {"F32", "I64"}  # weights fp32, position_ids int
    assert report.bytes_after < 0.55 * report.bytes_before


def test_every_tensor_is_the_fp32_originals_half(tiny_root, converted):
    root, _ = converted
    for name in [*UNET_FILES, layout.VAE_WEIGHTS, layout.TEXT_ENCODER_WEIGHTS]:
        original = read_weights(tiny_root / name)
        new = load_file(root / layout.accepted_forms(name)[0])
        assert new.keys() == original.keys(), name
        for key, tensor in original.items():
            if name == layout.TEXT_ENCODER_WEIGHTS or not tensor.is_floating_point():
                expected = tensor
            else:
                expected = tensor.half()
            assert new[key].dtype == expected.dtype and torch.equal(new[key], expected), (name, key)


def test_replaced_pickles_are_gone_and_everything_else_is_untouched(tiny_root, converted):
    root, _ = converted
    before, after = digests(tiny_root), digests(root)
    rewritten = {*UNET_FILES, VAE_ST, TEXT_ST}
    assert set(after) == set(before) - {layout.VAE_WEIGHTS, layout.TEXT_ENCODER_WEIGHTS} | rewritten
    assert {name: digest for name, digest in after.items() if name not in rewritten} == {
        name: digest for name, digest in before.items() if name in after and name not in rewritten
    }  # CLIP, configs, tokenizer, scheduler, parsing and pose bytes unchanged
    assert not [p for p in root.rglob("*.tmp")]
    assert layout.missing_files(root, layout.ootd_files()) == []


def test_a_second_run_writes_nothing(converted):
    root, _ = converted
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    again = convert_tree(root)
    assert [item.action for item in again.files] == ["unchanged"] * len(parts())
    assert again.bytes_before == again.bytes_after
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps


def test_partial_trees_convert_what_they_hold(tiny_root, tmp_path):
    clip_only = tmp_path / "clip"
    shutil.copytree(tiny_root / layout.CLIP_DIR, clip_only / layout.CLIP_DIR)
    snapshot = digests(clip_only)
    assert convert_tree(clip_only).files == []
    assert digests(clip_only) == snapshot

    hd = tmp_path / "hd"
    for folder in [layout.VAE_DIR, layout.TEXT_ENCODER_DIR] + [layout.unet_dir("hd", w)
                                                                for w in ("unet_garm", "unet_vton")]:
        shutil.copytree(tiny_root / folder, hd / folder)
    report = convert_tree(hd)
    assert sorted(report.converted) == sorted([*UNET_FILES[:2], VAE_ST, TEXT_ST])
    assert not (hd / "ootd" / "ootd_dc").exists()


def test_an_interrupted_run_is_finished_by_the_next(tiny_root, converted, tmp_path):
    """Killed after the rename but before the pickle was removed: the next run removes it, and a
    converted file is never rewritten from the stale pickle."""
    root = tmp_path / "tree"
    for folder in (layout.VAE_DIR, layout.TEXT_ENCODER_DIR):
        shutil.copytree(converted[0] / folder, root / folder)
    shutil.copy2(tiny_root / layout.VAE_WEIGHTS, root / layout.VAE_WEIGHTS)
    converted_bytes = (root / VAE_ST).read_bytes()
    report = convert_tree(root)
    actions = [(item.name, item.action) for item in report.files]
    assert actions == [(VAE_ST, "converted"), (TEXT_ST, "unchanged")]
    assert not (root / layout.VAE_WEIGHTS).exists()
    assert (root / VAE_ST).read_bytes() == converted_bytes


def test_fp16_files_load_to_the_same_parameters_as_the_fp32_files_cast_at_load(tiny_root, converted):
    root, _ = converted
    for model_type in layout.MODEL_TYPES:
        for fp32, fp16 in zip(load_unets(tiny_root, model_type, "cpu", torch.float16),
                              load_unets(root, model_type, "cpu", torch.float16), strict=True):
            assert_same_state(fp32, fp16)
    fp32 = load_shared_components(tiny_root, "cpu", torch.float16)
    fp16 = load_shared_components(root, "cpu", torch.float16)
    assert fp16.vae.dtype == torch.float16 and fp16.text_encoder.dtype == torch.float32
    for name in ("vae", "text_encoder", "image_encoder"):
        assert_same_state(getattr(fp32, name), getattr(fp16, name))


def assert_same_state(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    a, b = expected.state_dict(), actual.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_the_worker_serves_a_job_from_the_converted_tree(converted, monkeypatch):
    root, _ = converted
    monkeypatch.setenv("CHECKPOINTS_DIR", str(root))
    monkeypatch.setenv("EXTRA_RESOLUTIONS", "256x192")
    monkeypatch.setenv("OOTD_MODEL_TYPES", "dc")  # one model type is enough, and loads faster
    garment = "data:image/png;base64," + base64.b64encode(GARMENT_PNG.read_bytes()).decode()
    result = handler.handler({"id": "fp16-job", "input": {
        "person_index": 0, "garment": garment, "model_type": "dc", "category": "lower_body",
        "resolution": "256x192", "steps": 2, "seed": 7}})  # fmt: skip
    assert "error" not in result, result.get("error")
    image = Image.open(io.BytesIO(base64.b64decode(result["images"][0]["base64"])))
    assert image.format == "PNG" and image.size == (512, 512)  # the house photo's own size


def run_command(stage: Path, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder.to_fp16", str(root)], cwd=stage,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})


def test_the_command_runs_from_the_image_build_context(build_stage, tiny_root, tmp_path):
    """As the Dockerfile runs it: only `builder.BUILD_CONTEXT` copied in, before the project."""
    weights = tmp_path / "weights"
    shutil.copytree(tiny_root / layout.VAE_DIR, weights / layout.VAE_DIR)
    before = (weights / layout.VAE_WEIGHTS).stat().st_size
    done = run_command(build_stage, weights)
    assert done.returncode == 0, done.stderr
    after = (weights / VAE_ST).stat().st_size
    assert f"{before} bytes before, {after} bytes after" in done.stdout
    assert not (weights / layout.VAE_WEIGHTS).exists()



def test_the_command_refuses_a_root_that_is_not_a_folder(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_loader_prefers_the_converted_file_and_keeps_its_strict_key_check(converted, tmp_path):
    root = tmp_path / "tree"
    for folder in (layout.VAE_DIR, layout.TEXT_ENCODER_DIR, layout.TOKENIZER_DIR, layout.SCHEDULER_DIR,
                   layout.CLIP_DIR):  # fmt: skip
        shutil.copytree(converted[0] / folder, root / folder)
    zeros = {key: torch.zeros_like(value) for key, value in load_file(root / VAE_ST).items()}
    torch.save(zeros, root / layout.VAE_WEIGHTS)  # a stale pickle beside the converted file
    vae = load_shared_components(root, "cpu", torch.float16).vae
    assert_same_state(load_shared_components(converted[0], "cpu", torch.float16).vae, vae)

    text = load_file(root / TEXT_ST)
    del text["text_model.final_layer_norm.weight"]
    save_file(text, root / TEXT_ST, metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match=r"text_encoder.*missing"):
        load_shared_components(root, "cpu", torch.float16)

"""The tiny checkpoint tree has the published layout, formats and configs, and is deterministic."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from ootd import layout
from tiny_checkpoints.diffusion import write_tiny_ootd_checkpoints


def _digest(root: Path) -> dict[str, str]:
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in layout.ootd_files()}


def test_every_layout_file_exists_in_published_formats(tiny_ootd_root: Path):
    assert layout.missing_files(tiny_ootd_root, layout.ootd_files()) == []
    root = tiny_ootd_root
    # fp32 pickles where the hub has .bin, safetensors where it has safetensors
    for name in (
        f"{layout.VAE_DIR}/diffusion_pytorch_model.bin",
        f"{layout.TEXT_ENCODER_DIR}/pytorch_model.bin",
    ):
        state = torch.load(root / name, map_location="cpu", weights_only=True)
        weights = {k: t for k, t in state.items() if not k.endswith("position_ids")}
        assert weights and all(t.dtype == torch.float32 for t in weights.values())
    # the text encoder in transformers-4 naming, as the hub file was written
    text_state = torch.load(root / layout.TEXT_ENCODER_DIR / "pytorch_model.bin", weights_only=True)
    assert all(k.startswith("text_model.") for k in text_state)
    assert "text_model.embeddings.position_ids" in text_state
    clip_state = load_file(root / layout.CLIP_DIR / "model.safetensors")
    assert any(k.startswith("vision_model.") for k in clip_state)
    assert any(k.startswith("text_model.") for k in clip_state)  # the whole CLIP model, as on the hub

    index = json.loads((root / "ootd/model_index.json").read_text())
    assert index["_class_name"] == "OotdPipeline"
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"]
    feature = json.loads((root / "ootd/feature_extractor/preprocessor_config.json").read_text())
    assert feature["crop_size"] == 224


@pytest.mark.parametrize("model_type", layout.MODEL_TYPES)
def test_unet_configs_are_sd15_shaped_with_published_class_names(tiny_ootd_root: Path, model_type: str):
    for which, channels in (("unet_garm", 4), ("unet_vton", 8)):
        folder = tiny_ootd_root / layout.unet_dir(model_type, which)
        config = json.loads((folder / "config.json").read_text())
        assert config["_class_name"] == {"unet_garm": "UNetGarm2DConditionModel"}.get(
            which, "UNetVton2DConditionModel"
        )
        assert config["in_channels"] == channels
        assert config["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
        assert config["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
        assert config["layers_per_block"] == 2
        assert config["mid_block_type"] == "UNetMidBlock2DCrossAttn"
        weights = load_file(folder / "diffusion_pytorch_model.safetensors")
        assert weights["conv_in.weight"].shape[1] == channels
        blocks = {k.split(".transformer_blocks.")[0] for k in weights if ".transformer_blocks." in k}
        assert len(blocks) == 16


def test_scheduler_config_is_the_published_dpmsolver_config(tiny_ootd_root: Path):
    config = json.loads((tiny_ootd_root / layout.SCHEDULER_DIR / "scheduler_config.json").read_text())
    assert config["_class_name"] == "DPMSolverMultistepScheduler"
    expected = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "use_karras_sigmas": True,
        "timestep_spacing": "leading",
        "steps_offset": 1,
        "solver_order": 2,
        "solver_type": "midpoint",
        "lower_order_final": True,
    }
    assert {k: config[k] for k in expected} == expected


def test_tokenizer_splits_dc_words_like_clip_and_fits_the_text_encoder(tiny_ootd_root: Path):
    tokenizer = CLIPTokenizer.from_pretrained(tiny_ootd_root / layout.TOKENIZER_DIR)
    vocab = json.loads((tiny_ootd_root / layout.TOKENIZER_DIR / "vocab.json").read_text())
    assert sorted(vocab.values()) == list(range(len(vocab)))  # contiguous ids
    assert len(tokenizer) == len(vocab)
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]

    def ids(text: str, length: int) -> list[int]:
        batch = tokenizer(
            [text], max_length=length, padding="max_length", truncation=True, return_tensors="pt"
        )
        return batch.input_ids[0].tolist()

    assert ids("", 2) == [bos, eos]
    assert tokenizer.tokenize("upperbody") == ["upper", "body</w>"]
    assert ids("upperbody", 3) == [bos, vocab["upper"], eos]
    assert ids("lowerbody", 3) == [bos, vocab["lower"], eos]
    assert ids("dress", 3) == [bos, vocab["dress</w>"], eos]

    text_config = json.loads((tiny_ootd_root / layout.TEXT_ENCODER_DIR / "config.json").read_text())
    clip_config = json.loads((tiny_ootd_root / layout.CLIP_DIR / "config.json").read_text())
    unet_config = json.loads(
        (tiny_ootd_root / layout.unet_dir("hd", "unet_vton") / "config.json").read_text()
    )
    assert text_config["vocab_size"] == len(vocab)
    assert text_config["eos_token_id"] == eos
    width = unet_config["cross_attention_dim"]
    assert text_config["hidden_size"] == width
    assert clip_config["projection_dim"] == clip_config["vision_config"]["projection_dim"] == width


def test_writer_is_deterministic_in_the_seed(tmp_path: Path, tiny_ootd_root: Path):
    again, other = tmp_path / "again", tmp_path / "other"
    write_tiny_ootd_checkpoints(again, seed=0)
    write_tiny_ootd_checkpoints(other, seed=1)
    reference = _digest(tiny_ootd_root)
    assert _digest(again) == reference
    changed = {name for name, digest in _digest(other).items() if digest != reference[name]}
    weights = {name for name in layout.ootd_files() if name.endswith((".bin", ".safetensors"))}
    assert weights <= changed
    # HD and DC weights differ (tests can tell the model types apart)
    hd = load_file(
        tiny_ootd_root / layout.unet_dir("hd", "unet_vton") / "diffusion_pytorch_model.safetensors"
    )
    dc = load_file(
        tiny_ootd_root / layout.unet_dir("dc", "unet_vton") / "diffusion_pytorch_model.safetensors"
    )
    assert not torch.equal(hd["conv_in.weight"], dc["conv_in.weight"])


def test_norms_and_biases_are_perturbed(tiny_ootd_root: Path):
    weights = load_file(
        tiny_ootd_root / layout.unet_dir("hd", "unet_vton") / "diffusion_pytorch_model.safetensors"
    )
    norm = weights["down_blocks.0.attentions.0.transformer_blocks.0.norm1.weight"]
    bias = weights["down_blocks.0.attentions.0.transformer_blocks.0.norm1.bias"]
    assert (norm - 1).abs().max() > 0.05 and bias.abs().max() > 0.01

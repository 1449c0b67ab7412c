"""The garment fusion on stock UNets equals the published "concatenate tokens" formulation.

The reference here is written out by hand from the published block (architecture §3.3): concatenate
[try-on ; garment] tokens, the try-on block's `norm1`, plain multi-head self-attention over all of
them, residual, keep the first half, then the stock cross-attention and feed-forward.
"""

from __future__ import annotations

import math
from types import MethodType

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

from ootd import load_pipelines
from ootd.fusion import GarmentFusedAttnProcessor, GarmentFusion, transformer_block_names
from ootd.loading import load_unets

EXPECTED_BLOCKS = [
    f"{prefix}.transformer_blocks.0"
    for prefix in (
        "down_blocks.0.attentions.0",
        "down_blocks.0.attentions.1",
        "down_blocks.1.attentions.0",
        "down_blocks.1.attentions.1",
        "down_blocks.2.attentions.0",
        "down_blocks.2.attentions.1",
        "mid_block.attentions.0",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
        "up_blocks.1.attentions.2",
        "up_blocks.2.attentions.0",
        "up_blocks.2.attentions.1",
        "up_blocks.2.attentions.2",
        "up_blocks.3.attentions.0",
        "up_blocks.3.attentions.1",
        "up_blocks.3.attentions.2",
    )
]
LATENT_HW = (32, 24)  # a 256 x 192 image


@pytest.fixture(scope="module")
def pipe(tiny_ootd_root):
    return load_pipelines(tiny_ootd_root, model_types=("dc",))["dc"]


@pytest.fixture(scope="module")
def inputs(pipe):
    """Garment latents [garment ; zeros], try-on input for a batch of 2 samples x 2 halves, prompt states."""
    gen = torch.Generator().manual_seed(7)
    garment = torch.randn(1, 4, *LATENT_HW, generator=gen)
    garment_batch = torch.cat([garment, torch.zeros_like(garment)])
    width = pipe.unet_vton.config.cross_attention_dim
    prompt = torch.randn(1, 4, width, generator=gen)
    vton_input = torch.randn(4, 8, *LATENT_HW, generator=gen)
    return garment_batch, prompt, vton_input


def plain_self_attention(attn, x: torch.Tensor) -> torch.Tensor:
    """Multi-head self-attention with explicit matmuls and softmax (no SDPA, no processor)."""
    batch, tokens, _ = x.shape
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    heads = attn.heads
    dim = q.shape[-1] // heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, tokens, heads, dim).transpose(1, 2)

    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(dim), dim=-1)
    out = (weights @ split(v)).transpose(1, 2).reshape(batch, tokens, heads * dim)
    return attn.to_out[1](attn.to_out[0](out))


def published_self_attention_part(block, h: torch.Tensor, garment: torch.Tensor) -> torch.Tensor:
    """Published block up to the chunk: cat tokens, norm1, self-attention, residual, first half."""
    garment = garment.repeat_interleave(h.shape[0] // garment.shape[0], dim=0)
    joined = torch.cat([h, garment], dim=1)
    joined = plain_self_attention(block.attn1, block.norm1(joined)) + joined
    return joined[:, : h.shape[1]]


def record_garment_inputs(unet_garm, garment_batch, prompt) -> dict[str, torch.Tensor]:
    """The test's own recording of every garment block's input (independent of GarmentFusion)."""
    recorded: dict[str, torch.Tensor] = {}
    modules = dict(unet_garm.named_modules())
    handles = [
        modules[name].register_forward_pre_hook(
            lambda module, args, kwargs, name=name: recorded.__setitem__(name, args[0]), with_kwargs=True
        )
        for name in transformer_block_names(unet_garm)
    ]
    try:
        with torch.inference_mode():
            unet_garm(garment_batch, 0, encoder_hidden_states=torch.cat([prompt] * garment_batch.shape[0]))
    finally:
        for handle in handles:
            handle.remove()
    return recorded


def test_sixteen_blocks_in_execution_order(pipe):
    assert transformer_block_names(pipe.unet_garm) == EXPECTED_BLOCKS
    assert pipe.fusion.block_names == EXPECTED_BLOCKS
    processors = pipe.unet_vton.attn_processors
    for name in EXPECTED_BLOCKS:
        assert isinstance(processors[f"{name}.attn1.processor"], GarmentFusedAttnProcessor)
        # cross-attention and the garment UNet stay stock
        assert not isinstance(processors[f"{name}.attn2.processor"], GarmentFusedAttnProcessor)
    assert not any(isinstance(p, GarmentFusedAttnProcessor) for p in pipe.unet_garm.attn_processors.values())


def test_recorded_features_are_the_block_inputs_before_norm1_and_give_the_try_on_kv(pipe, inputs):
    garment_batch, prompt, _ = inputs
    features = pipe.fusion.encode_garment(garment_batch, torch.cat([prompt] * 2))
    try:
        kv = dict(pipe.fusion.store.kv)
        assert pipe.fusion.store.features == {}  # given back, not kept: the try-on reads only the K/V
    finally:
        pipe.fusion.clear()
    expected = record_garment_inputs(pipe.unet_garm, garment_batch, prompt)
    assert list(features) == EXPECTED_BLOCKS
    for name in EXPECTED_BLOCKS:
        assert torch.equal(features[name], expected[name]), name
        assert features[name].shape[0] == 2
        assert not torch.allclose(features[name][0], features[name][1])  # garment vs zero garment
        # What each try-on block attends to: its own norm1 and K/V projections of those tokens.
        block = dict(pipe.unet_vton.named_modules())[name]
        with torch.inference_mode():
            normed = block.norm1(expected[name])
            assert torch.equal(kv[name][0], block.attn1.to_k(normed)), name
            assert torch.equal(kv[name][1], block.attn1.to_v(normed)), name

    # Independently of any hook: the first block's input is the Transformer2DModel's GroupNorm +
    # 1x1 proj_in output of its input, flattened row-major to tokens.
    transformer = pipe.unet_garm.down_blocks[0].attentions[0]
    seen: dict[str, torch.Tensor] = {}
    handle = transformer.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    try:
        with torch.inference_mode():
            pipe.unet_garm(garment_batch, 0, encoder_hidden_states=torch.cat([prompt] * 2))
    finally:
        handle.remove()
    with torch.inference_mode():
        x = transformer.proj_in(transformer.norm(seen["x"]))
        tokens = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])
    assert torch.allclose(tokens, features[EXPECTED_BLOCKS[0]], atol=1e-6)


def test_every_block_matches_concatenate_norm_attend_keep_first_half(pipe, inputs):
    garment_batch, prompt, vton_input = inputs
    garment_features = record_garment_inputs(pipe.unet_garm, garment_batch, prompt)
    vton_blocks = dict(pipe.unet_vton.named_modules())
    block_inputs: dict[str, torch.Tensor] = {}
    handles = [
        vton_blocks[name].register_forward_pre_hook(
            lambda module, args, kwargs, name=name: block_inputs.__setitem__(name, args[0]), with_kwargs=True
        )
        for name in EXPECTED_BLOCKS
    ]
    pipe.fusion.encode_garment(garment_batch, torch.cat([prompt] * 2))
    try:
        with torch.inference_mode():
            pipe.unet_vton(vton_input, 500, encoder_hidden_states=torch.cat([prompt] * 4))
            worst = 0.0
            for name in EXPECTED_BLOCKS:
                block, h = vton_blocks[name], block_inputs[name]
                fused = block.attn1(block.norm1(h)) + h
                reference = published_self_attention_part(block, h, garment_features[name])
                assert fused.shape == h.shape
                worst = max(worst, (fused - reference).abs().max().item())
                assert (fused - reference).abs().max().item() <= 1e-5, name

                # The perturbed tiny weights make the classic mistake visible: normalising the
                # garment tokens with the garment UNet's norm1 instead of the try-on block's.
                garm_block = dict(pipe.unet_garm.named_modules())[name]
                wrong_g = garm_block.norm1(garment_features[name])
                wrong_g = wrong_g.repeat_interleave(2, dim=0)
                attn = block.attn1
                n = block.norm1(h)
                k = torch.cat([attn.to_k(n), attn.to_k(wrong_g)], dim=1)
                v = torch.cat([attn.to_v(n), attn.to_v(wrong_g)], dim=1)
                heads, dim = attn.heads, k.shape[-1] // attn.heads
                q = attn.to_q(n).view(4, -1, heads, dim).transpose(1, 2)
                out = F.scaled_dot_product_attention(
                    q, k.view(4, -1, heads, dim).transpose(1, 2), v.view(4, -1, heads, dim).transpose(1, 2)
                )
                wrong = attn.to_out[0](out.transpose(1, 2).reshape(4, -1, heads * dim)) + h
                assert (wrong - reference).abs().max().item() > 1e-3, name
    finally:
        for handle in handles:
            handle.remove()
        pipe.fusion.clear()
    assert len(block_inputs) == 16
    print(f"worst per-block max abs diff: {worst:.2e}")


def test_whole_try_on_unet_matches_published_block_forward(pipe, inputs):
    """Swap every try-on block's forward for the published algorithm and compare the UNet output."""
    garment_batch, prompt, vton_input = inputs
    garment_features = record_garment_inputs(pipe.unet_garm, garment_batch, prompt)
    states = torch.cat([prompt] * 4)
    pipe.fusion.encode_garment(garment_batch, torch.cat([prompt] * 2))
    try:
        with torch.inference_mode():
            fused = pipe.unet_vton(vton_input, 500, encoder_hidden_states=states).sample
    finally:
        pipe.fusion.clear()

    def published_forward(block, hidden_states, *args, encoder_hidden_states=None, name=None, **kwargs):
        h = published_self_attention_part(block, hidden_states, garment_features[name])
        h = block.attn2(block.norm2(h), encoder_hidden_states=encoder_hidden_states) + h
        return block.ff(block.norm3(h)) + h

    blocks = dict(pipe.unet_vton.named_modules())
    try:
        for name in EXPECTED_BLOCKS:
            blocks[name].forward = MethodType(
                lambda block, *a, name=name, **kw: published_forward(block, *a, name=name, **kw), blocks[name]
            )
        with torch.inference_mode():
            reference = pipe.unet_vton(vton_input, 500, encoder_hidden_states=states).sample
    finally:
        for name in EXPECTED_BLOCKS:
            del blocks[name].forward
    diff = (fused - reference).abs().max().item()
    assert diff <= 1e-5 * max(1.0, reference.abs().max().item()), diff
    # The garment actually matters: zero garment rows give a different prediction.
    assert not torch.allclose(fused[:2], fused[2:], atol=1e-4)


def test_missing_features_raise_and_remove_restores_stock_processors(tiny_ootd_root):
    unet_garm, unet_vton = load_unets(tiny_ootd_root, "hd", device="cpu")
    fusion = GarmentFusion(unet_garm, unet_vton)
    x = torch.randn(1, 8, 16, 16)
    states = torch.randn(1, 2, unet_vton.config.cross_attention_dim)
    with pytest.raises(RuntimeError, match="encode_garment"), torch.inference_mode():
        unet_vton(x, 10, encoder_hidden_states=states)
    fusion.remove()
    assert all(isinstance(p, AttnProcessor2_0) for p in unet_vton.attn_processors.values())
    with torch.inference_mode():
        assert unet_vton(x, 10, encoder_hidden_states=states).sample.shape == (1, 4, 16, 16)
    # the garment hooks are gone too: running the garment UNet records nothing
    fusion.store.recording = True
    with torch.inference_mode():
        unet_garm(torch.randn(1, 4, 16, 16), 0, encoder_hidden_states=states)
    assert fusion.store.features == {}


def test_mismatched_unets_are_refused(tiny_ootd_root):
    from diffusers import UNet2DConditionModel

    unet_garm, _ = load_unets(tiny_ootd_root, "hd", device="cpu")
    other = UNet2DConditionModel(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        layers_per_block=1,
        in_channels=8,
    )
    with pytest.raises(ValueError, match="same transformer blocks"):
        GarmentFusion(unet_garm, other)


def test_rebuilding_a_pipeline_from_components_reuses_the_wiring(pipe):
    from ootd import OOTDiffusionPipeline

    again = OOTDiffusionPipeline(**pipe.components, model_type="dc")
    assert again.fusion is pipe.fusion
    hooks = sum(len(dict(pipe.unet_garm.named_modules())[n]._forward_pre_hooks) for n in EXPECTED_BLOCKS)
    assert hooks == 16

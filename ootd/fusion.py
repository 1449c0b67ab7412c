"""OOTDiffusion's outfitting fusion on two stock `UNet2DConditionModel`s.

The published code forks every UNet, block and transformer file of diffusers 0.24 only to thread a
list of garment features through the forward pass. The same maths fits in two small pieces on
stock modules:

* the garment UNet gets a forward pre-hook on each `BasicTransformerBlock` that records the block
  input (the residual stream *before* `norm1`) while a garment is being encoded;
* each try-on block's self-attention gets `GarmentFusedAttnProcessor`: queries from its own tokens,
  keys/values over [own tokens ; this try-on block's `norm1`(garment tokens)].

The published block concatenates [try-on ; garment] tokens, applies `norm1`, self-attends over all
of them, adds the residual and keeps the first half. LayerNorm is per token and the garment-query
rows are thrown away, so computing only the try-on queries against the concatenated keys/values is
exactly the same function, minus the wasted work. Because the garment features come from one
garment-UNet pass at t=0, their keys/values are constant for a request: they are computed once,
when the garment is encoded or its recorded features are handed back (`use_features`), outside
the try-on UNet, whose forward only reads them. That keeps the forward the same function on every
step, so a compiled UNet traces one graph per shape (computing them lazily on the first step made
dynamo trace a second graph for the steps after it).

Blocks are matched by module name (`down_blocks.0.attentions.0.transformer_blocks.0`, ...), which
is identical in both UNets: the published code matched them by execution order, which is the same.

Not thread-safe: one `GarmentFusion` holds one request's garment at a time (the worker runs one
job at a time per pipeline).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention

# UNet2DConditionModel registers up_blocks before mid_block; the forward runs down, mid, up.
_EXECUTION_RANK = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def transformer_block_names(unet: torch.nn.Module) -> list[str]:
    """Names of the `BasicTransformerBlock`s of `unet` in execution order (the published code's
    list order: down blocks, mid block, up blocks)."""
    names = [name for name, module in unet.named_modules() if isinstance(module, BasicTransformerBlock)]
    return sorted(names, key=lambda name: _EXECUTION_RANK.get(name.split(".", 1)[0], len(_EXECUTION_RANK)))


class GarmentFeatureStore:
    """One request's garment as the try-on blocks see it.

    `kv[name]` are the keys and values of try-on block `name`'s self-attention over the garment
    tokens, each (G, M, C) with G = 1 (garment) or 2 ([garment ; zero garment] for guidance).
    `features` holds the garment blocks' inputs only while `GarmentFusion.encode_garment` records
    them.
    """

    def __init__(self) -> None:
        self.features: dict[str, torch.Tensor] = {}
        self.kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.recording = False

    def clear(self) -> None:
        """Drop the garment (frees memory between requests)."""
        self.features.clear()
        self.kv.clear()


class GarmentFusedAttnProcessor:
    """`attn1` processor of one try-on transformer block.

    Called by the stock block with `hidden_states = norm1(h)` of the try-on tokens (B, N, C).
    Returns (B, N, C): SDPA of queries from those tokens over keys/values of
    [those tokens ; `norm1`(garment tokens of the matching garment block)], the garment's part
    read from the store (`GarmentFusion` fills it before the UNet runs). The try-on batch must be
    G groups of B / G rows in the order of the garment rows ([cond x n ; uncond x n]).
    """

    def __init__(self, name: str, store: GarmentFeatureStore) -> None:
        self.name = name
        self.store = store

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("the fused self-attention takes neither encoder states nor an attention mask")
        batch, tokens, _ = hidden_states.shape
        garment_kv = self.store.kv.get(self.name)
        if garment_kv is None:
            raise RuntimeError(
                f"no garment keys/values for try-on block {self.name!r}: "
                "run GarmentFusion.encode_garment (or use_features) first"
            )
        garment_k, garment_v = garment_kv
        groups = garment_k.shape[0]
        if batch % groups:
            raise ValueError(f"try-on batch {batch} is not a multiple of the {groups} garment rows")
        repeat = batch // groups
        if repeat > 1:
            garment_k = garment_k.repeat_interleave(repeat, dim=0)
            garment_v = garment_v.repeat_interleave(repeat, dim=0)

        query = attn.to_q(hidden_states)
        key = torch.cat([attn.to_k(hidden_states), garment_k], dim=1)
        value = torch.cat([attn.to_v(hidden_states), garment_v], dim=1)

        head_dim = query.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            query, key, value, dropout_p=0.0, is_causal=False, scale=attn.scale
        )
        out = out.transpose(1, 2).reshape(batch, tokens, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def _check_plain_self_attention(name: str, attn: Attention) -> None:
    """The processor implements SD-1.5's `attn1` only; refuse anything with extra machinery."""
    unsupported = (
        attn.is_cross_attention
        or attn.spatial_norm is not None
        or attn.group_norm is not None
        or attn.norm_q is not None
        or attn.norm_k is not None
        or attn.residual_connection
        or attn.rescale_output_factor != 1.0
    )
    if unsupported:
        raise ValueError(
            f"{name}.attn1 is not a plain SD-1.5 self-attention; the garment fusion cannot wrap it"
        )


class GarmentFusion:
    """Wires a garment UNet to a try-on UNet (hooks + processors) and runs the garment pass.

    Both UNets stay stock `UNet2DConditionModel`s that load the published weights unchanged.
    """

    def __init__(self, unet_garm: UNet2DConditionModel, unet_vton: UNet2DConditionModel) -> None:
        garm_names = transformer_block_names(unet_garm)
        vton_names = transformer_block_names(unet_vton)
        if not garm_names or garm_names != vton_names:
            raise ValueError(
                "unet_garm and unet_vton must have the same transformer blocks "
                f"({len(garm_names)} vs {len(vton_names)})"
            )
        self.unet_garm = unet_garm
        self.unet_vton = unet_vton
        self.block_names = garm_names
        self.store = GarmentFeatureStore()
        self._vton_blocks: dict[str, BasicTransformerBlock] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._previous_processors: dict[str, Any] = {}

        garm_blocks = dict(unet_garm.named_modules())
        vton_blocks = dict(unet_vton.named_modules())
        for name in self.block_names:
            self._hooks.append(
                garm_blocks[name].register_forward_pre_hook(self._recorder(name), with_kwargs=True)
            )
            block = self._vton_blocks[name] = vton_blocks[name]
            _check_plain_self_attention(name, block.attn1)
            self._previous_processors[name] = block.attn1.processor
            # Attention.set_processor on each module directly: set_attn_processor(dict) would
            # need every processor of the UNet (attn2 too) and empties the dict it is given.
            block.attn1.set_processor(GarmentFusedAttnProcessor(name, self.store))
        unet_vton._ootd_garment_fusion = self

    @classmethod
    def attach(cls, unet_garm: UNet2DConditionModel, unet_vton: UNet2DConditionModel) -> GarmentFusion:
        """The fusion already wiring these two UNets, or a new one.

        Rebuilding a pipeline from another's components (`OOTDiffusionPipeline(**pipe.components)`)
        must not wire the same UNets twice: the second set of processors would read a store the
        first pipeline never fills.
        """
        existing = getattr(unet_vton, "_ootd_garment_fusion", None)
        if existing is not None:
            if existing.unet_garm is not unet_garm:
                raise ValueError("unet_vton is already wired to another unet_garm; call remove() first")
            return existing
        return cls(unet_garm, unet_vton)

    def _recorder(self, name: str):
        store = self.store

        def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            if store.recording:
                store.features[name] = args[0] if args else kwargs["hidden_states"]

        return record

    @torch.inference_mode()
    def encode_garment(
        self, garment_latents: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Run the garment UNet once at timestep 0 and condition the try-on blocks on its 16 block
        inputs (`use_features`). Returns those inputs (a new dict, not kept here), for a caller
        that keeps them to skip the garment pass next time.

        `garment_latents` (G, 4, h, w) are the unscaled VAE latents, [garment] or
        [garment ; zeros]; `encoder_hidden_states` (G, T, D) the prompt embeddings of the request.
        """
        self.store.clear()
        self.store.recording = True
        try:
            self.unet_garm(garment_latents, 0, encoder_hidden_states=encoder_hidden_states, return_dict=False)
        finally:
            self.store.recording = False
        features = dict(self.store.features)
        self.store.features.clear()
        missing = [name for name in self.block_names if name not in features]
        if missing:
            raise RuntimeError(f"garment UNet pass recorded no input for {missing}")
        self.use_features(features)
        return features

    @torch.inference_mode()
    def use_features(self, features: dict[str, torch.Tensor]) -> None:
        """Condition the try-on blocks on the garment block inputs `features` (from this or an
        earlier `encode_garment`): each try-on block's `norm1`, then its self-attention's key and
        value projections, of the matching garment tokens (the same tensors give the same result).
        """
        missing = [name for name in self.block_names if name not in features]
        if missing:
            raise ValueError(f"the garment features lack the blocks {missing}")
        self.store.clear()
        for name, block in self._vton_blocks.items():
            normed = block.norm1(features[name])
            self.store.kv[name] = (block.attn1.to_k(normed), block.attn1.to_v(normed))

    def clear(self) -> None:
        """Forget the current garment (call at the end of every request)."""
        self.store.clear()

    def remove(self) -> None:
        """Undo the wiring: remove the hooks and give the try-on blocks their old processors back."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        vton_blocks = dict(self.unet_vton.named_modules())
        for name, processor in self._previous_processors.items():
            vton_blocks[name].attn1.set_processor(processor)
        self._previous_processors.clear()
        self._vton_blocks.clear()
        self.store.clear()
        if getattr(self.unet_vton, "_ootd_garment_fusion", None) is self:
            del self.unet_vton._ootd_garment_fusion

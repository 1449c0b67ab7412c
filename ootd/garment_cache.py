"""The garment's conditioning, kept between requests that dress someone in the same garment.

Per request the pipeline derives from the garment alone (given model type, category, frame size
and whether guidance is on): the prompt embeddings (CLIP image embedding + the category's text
states), the garment's VAE latents and the garment UNet's 16 recorded block inputs (one pass at
t=0, `GarmentFusion.encode_garment`). None of it depends on the person, the mask, the seed or
the number of steps or samples, so a client that renders one garment on several house models
pays for it once. The try-on blocks' keys/values are not stored: a hit derives them again from
these features (`GarmentFusion.use_features`: each block's `norm1` and two linear layers, small
next to one UNet step), where storing them would take twice the features' bytes.

A hit hands the pipeline the very tensors a miss computed (no copy, no cast), so it produces
exactly the same bytes. The cache lives on the pipelines' device (no host round trip per hit)
and is bounded in bytes.

Size of one entry at 1024x768 in fp16, from SD-1.5's UNet shapes (latent 128x96; the recorded
inputs are (G, tokens, channels) per transformer block): 5 blocks at 12288 tokens x 320, 5 at
3072 x 640, 5 at 768 x 1280 and the mid block's 192 x 1280 = 34,652,160 values per garment row,
69.3 MB in fp16; with guidance G = 2 (garment and zero garment) 138.6 MB; latents (4x128x96)
and embeddings add 0.1 MB. At 512x384 an entry is a quarter of that.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ootd.lru import ByteBoundedLru

if TYPE_CHECKING:  # annotations only: the worker's settings import the bound without torch
    import PIL.Image
    import torch

MB = 1_000_000
DEFAULT_GARMENT_CACHE_MB = 1500
"""About ten guided 1024x768 entries (139 MB each). On a 24 GB card with both model types
resident in fp16 (7.5 GB of diffusion weights + 1.7 GB CLIP in fp32 + pose and parsing) and the
peak of a 4-sample 1024x768 guided job, 1.5 GB is what is left with a margin for the allocator."""


@dataclass(frozen=True)
class GarmentConditioning:
    """What the pipeline computes from the garment alone (see the module doc)."""

    prompt_embeds: torch.Tensor
    """(1, T, D) in the UNets' dtype on their device."""
    garment_latents: torch.Tensor
    """(1, 4, H/8, W/8) unscaled VAE `mode()` latents."""
    features: dict[str, torch.Tensor]
    """The garment UNet's recorded block inputs, (G, tokens, channels) each."""

    @property
    def nbytes(self) -> int:
        tensors = [self.prompt_embeds, self.garment_latents, *self.features.values()]
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def garment_key(
    garment: PIL.Image.Image, model_type: str, category: str, guided: bool
) -> tuple[str, str, str, tuple[int, int], bool]:
    """The cache key: a hash of the garment's pixels as the pipeline uses them (RGB, already at
    the frame size, so two photos that resize to the same pixels rightly share an entry), the
    frame size, model type, category and guidance on/off."""
    digest = hashlib.sha256(garment.tobytes()).hexdigest()
    return (digest, model_type, category, garment.size, guided)


class GarmentCache(ByteBoundedLru[GarmentConditioning]):
    """Least recently used garment conditionings within `max_bytes` (0 disables)."""

    def __init__(self, max_bytes: int = DEFAULT_GARMENT_CACHE_MB * MB) -> None:
        super().__init__(max_bytes, size_of=lambda value: value.nbytes)

"""`torch.compile` of the try-on UNet (and optionally the VAE decoder), behind a setting.

The try-on UNet runs once per denoising step (20 per job) and dominates a job; diffusers'
published measurements give 1.2-1.3x per SD-1.5 UNet step from `torch.compile` with
channels-last. The price is compile time when a shape is first seen (the warm-up's 512x384,
then each resolution x batch size on its first job), paid at cold start, which RunPod bills,
and kernels that round differently from eager ones (channels-last convolutions choose other
algorithms), so the images are close to, not bit-identical with, the eager ones. Hence off by
default (`OOTD_COMPILE`) until a GPU measurement says otherwise (bench/README.md).

Shapes are static (`dynamic=False`): one graph per resolution and batch, the fastest kernels for
each. The modules are compiled in place (`nn.Module.compile`), so the pipeline, the garment
fusion's processors and every attribute (`dtype`, `config`) stay as they are; the garment
UNet runs once per job at t=0 and is left eager.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ootd.pipeline import OOTDiffusionPipeline

RECOMPILE_LIMIT = 32
"""Graphs kept per compiled module: 3 resolutions x 4 sample counts x guidance on/off = 24, plus
the fused attention's first step (its garment keys/values are computed there) for some."""


def compile_pipeline(
    pipe: OOTDiffusionPipeline, decoder: bool = False, backend: str | Callable = "inductor"
) -> None:
    """Compile `pipe.unet_vton` (and `pipe.vae.decoder` with `decoder`) in place, channels-last.

    `backend` "eager" traces with dynamo and runs the captured graphs without code generation:
    it checks that the fused attention traces, in seconds, where inductor takes minutes on a CPU.
    """
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, RECOMPILE_LIMIT)
    modules = [pipe.unet_vton, *([pipe.vae.decoder] if decoder else [])]
    for module in modules:
        if getattr(module, "_compiled_call_impl", None) is not None:
            continue  # already compiled (the VAE is shared by both model types)
        module.to(memory_format=torch.channels_last)
        module.compile(dynamic=False, backend=backend)

"""`torch.compile` of the try-on UNet (and optionally the VAE decoder), behind a setting.

The try-on UNet runs once per denoising step (20 per job) and dominates a job; diffusers'
published measurements give 1.2-1.3x per SD-1.5 UNet step from `torch.compile` with
channels-last. The price is compile time when a shape is first seen (the warm-up's 512x384,
then each resolution x batch size on its first job), paid at cold start, which RunPod bills,
and kernels that round differently from eager ones (channels-last convolutions choose other
algorithms), so the images are close to, not bit-identical with, the eager ones. Hence off by
default (`OOTD_COMPILE`) until a GPU measurement says otherwise (bench/README.md).

Shapes are static (`dynamic=False`): one graph per shape, the fastest kernels for each. A shape
is fixed by what a request may ask for (`core.generation.diffusion_shapes`: output size x samples
x guidance on/off) and the model type (HD's prompt is 2 tokens, DC's 4). For one graph per shape
and not more, everything else the graph depends on is the same on every step: the garment's
keys/values are computed before the UNet runs (`ootd.fusion`), and the UNet takes its input
channels-last whatever the step hands it (the first step's noise is contiguous, the repainted
latents after it are channels-last). Only the module's `forward` is replaced, so the pipeline,
the garment fusion's processors, hooks and every attribute (`dtype`, `config`) stay as they are;
the garment UNet runs once per job at t=0 and is left eager.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch

from core.generation import diffusion_shapes
from core.vocabulary import MODEL_TYPES
from ootd.pipeline import OOTDiffusionPipeline


def recompile_limit(extra_resolutions: Iterable[str] = ()) -> int:
    """Graphs dynamo must keep for the try-on UNets: every shape a request allows, for each model
    type. Both types' UNets run one code object (the class's `forward`), whose graphs count
    against one limit (`torch._dynamo.config.recompile_limit`); past it, shapes silently run eager.
    `extra_resolutions`: the operator's additional "HxW" sizes (EXTRA_RESOLUTIONS)."""
    return len(MODEL_TYPES) * len(diffusion_shapes(extra_resolutions))


RECOMPILE_LIMIT = recompile_limit()
"""For the published sizes: 2 model types x (3 resolutions x 4 sample counts x guidance on/off)."""


def compile_pipeline(
    pipe: OOTDiffusionPipeline,
    decoder: bool = False,
    backend: str | Callable = "inductor",
    extra_resolutions: Iterable[str] = (),
) -> None:
    """Compile `pipe.unet_vton` (and `pipe.vae.decoder` with `decoder`) in place, channels-last,
    and raise dynamo's recompile limit to hold a graph for every shape a request allows.

    `backend` "eager" traces with dynamo and runs the captured graphs without code generation:
    it checks that the fused attention traces, in seconds, where inductor takes minutes on a CPU.
    """
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, recompile_limit(extra_resolutions))
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, config.recompile_limit)
    modules = [pipe.unet_vton, *([pipe.vae.decoder] if decoder else [])]
    for module in modules:
        if not getattr(module, "_ootd_compiled", False):  # the VAE is shared by both model types
            _compile_channels_last(module, backend)


def _compile_channels_last(module: torch.nn.Module, backend: str | Callable) -> None:
    """Weights and input channels-last, `forward` compiled (hooks around it stay eager)."""
    module.to(memory_format=torch.channels_last)
    compiled = torch.compile(module.forward, dynamic=False, backend=backend)

    @functools.wraps(module.forward)
    def forward(*args: Any, **kwargs: Any) -> Any:
        if args:
            args = (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
        else:
            kwargs["sample"] = kwargs["sample"].contiguous(memory_format=torch.channels_last)
        return compiled(*args, **kwargs)

    module.forward = forward
    module._ootd_compiled = True

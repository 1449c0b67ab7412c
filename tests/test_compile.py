"""OOTD_COMPILE: the try-on UNet with the garment fusion traces under torch.compile (dynamo, with a
graph-counting backend instead of inductor's minutes of code generation on a CPU) and gives the
eager pipeline's images up to the rounding of channels-last convolutions."""

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from core.generation import DEFAULT_GUIDANCE, diffusion_shapes
from core.vocabulary import Size
from ootd import load_pipelines
from ootd.compile import RECOMPILE_LIMIT, compile_pipeline, recompile_limit
from ootd.garment_cache import GarmentCache
from worker.config import Settings


def graph_counter() -> tuple[Callable, list]:
    """A dynamo backend that runs each graph it is given eagerly, and the list it keeps them in
    (one entry per graph dynamo built: what the tests count)."""
    graphs: list = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    return backend, graphs


def test_the_setting() -> None:
    assert Settings.from_env({}).compile is False
    assert Settings.from_env({"OOTD_COMPILE": "true"}).compile is True
    with pytest.raises(ValueError, match="OOTD_COMPILE"):
        Settings.from_env({"OOTD_COMPILE": "maybe"})


def test_the_compiled_try_on_unet_traces_and_matches_eager(tiny_ootd_root) -> None:
    from test_ootd_pipeline import make_images

    pipe = load_pipelines(tiny_ootd_root, model_types=("hd",))["hd"]
    pipe.set_progress_bar_config(disable=True)
    person, garment, mask = make_images()
    options = {"num_inference_steps": 2, "height": 128, "width": 128, "generator": 3, "output_type": "np"}
    eager = pipe(person, garment, mask, **options).images

    counting_backend, graphs = graph_counter()

    torch._dynamo.reset()
    try:
        compile_pipeline(pipe, backend=counting_backend)
        compiled = pipe(person, garment, mask, **options).images
        again = pipe(person, garment, mask, **options).images
    finally:
        torch._dynamo.reset()
    assert graphs, "dynamo captured no graph of the try-on UNet"
    assert pipe.unet_vton.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(compiled, eager, atol=2e-3)
    assert compiled.tobytes() == again.tobytes()


def test_the_limit_holds_every_published_shape_of_both_model_types() -> None:
    assert RECOMPILE_LIMIT == 2 * 3 * 4 * 2  # model types x resolutions x samples x guidance on/off
    assert recompile_limit(["256x192"]) == 2 * 4 * 4 * 2


def test_one_graph_per_allowed_shape_none_on_a_repeat_and_no_graph_break(tiny_ootd_root, monkeypatch) -> None:
    """Each shape a request allows traces one graph of each model type's try-on UNet on its first
    job and none after, whether the garment is encoded or its features come from the garment
    cache; the recompile limit `compile_pipeline` sets holds them all (past it, dynamo would run
    shapes eager without a word). The allowed shapes are cut down to one small size, 1-2 samples
    and guidance on, so that the test traces 4 graphs, not 48."""
    from test_ootd_pipeline import make_images

    monkeypatch.setattr("core.generation.RESOLUTIONS", {"128x64": Size(64, 128)})
    monkeypatch.setattr("core.generation.SAMPLES_RANGE", (1, 2))
    monkeypatch.setattr("core.generation.GUIDANCE_RANGE", (DEFAULT_GUIDANCE, DEFAULT_GUIDANCE))
    shapes = diffusion_shapes()
    assert len(shapes) == 2
    pipes = load_pipelines(tiny_ootd_root)
    cache = GarmentCache()  # the second round takes the garment's features from it
    garment_passes = []
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
        pipe.garment_cache = cache
        pipe.unet_garm.register_forward_pre_hook(lambda module, args: garment_passes.append(args[0].shape))
    person, garment, mask = make_images()
    counting_backend, graphs = graph_counter()

    torch._dynamo.reset()
    counters.clear()
    try:
        with torch._dynamo.config.patch(recompile_limit=1):
            for pipe in pipes.values():
                compile_pipeline(pipe, backend=counting_backend)
            for first_round in (True, False):
                for (width, height), samples, guided in shapes:
                    for model_type, pipe in pipes.items():
                        before = len(graphs)
                        # 2 steps: the second one's latents come out of the repaint, not the noise.
                        pipe(
                            person, garment, mask, num_inference_steps=2, num_images_per_prompt=samples,
                            image_guidance_scale=DEFAULT_GUIDANCE if guided else 1.0, generator=0,
                            height=height, width=width, output_type="latent",
                        )  # fmt: skip
                        new = len(graphs) - before
                        assert new == (1 if first_round else 0), (first_round, model_type, samples, guided)
        breaks = dict(counters["graph_break"])
    finally:
        torch._dynamo.reset()
    assert breaks == {}
    assert len(graphs) == len(pipes) * len(shapes)
    assert len(garment_passes) == len(pipes)  # one per model type: every later job hit the cache

"""OOTD_COMPILE: the try-on UNet with the garment fusion traces under torch.compile (dynamo, with a
graph-counting backend instead of inductor's minutes of code generation on a CPU) and gives the
eager pipeline's images up to the rounding of channels-last convolutions."""

import numpy as np
import pytest
import torch

from ootd import load_pipelines
from ootd.compile import compile_pipeline
from worker.config import Settings


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

    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

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

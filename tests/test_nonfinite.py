"""No silent black images: NaN or infinite results are caught after the decode.

Injected at real boundaries of the tiny models, in the CUDA configuration (float16 UNets and VAE)
run on the CPU: the VAE decoder's first convolution scaled so that its activations overflow
float16 (65504) but not float32, which is what a real float16 overflow is (the float32 retry mends
it); a NaN weight in the decoder (nothing mends it); a NaN out of the try-on UNet (the latents are
lost before any decode). A job whose result stays non-finite ends with one sentence, and the
worker serves the next one.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from test_ootd_pipeline import make_images
from worker_support import data_uri

from ootd import load_pipelines
from ootd.errors import NonFiniteOutputError
from worker.config import Settings
from worker.job import handle
from worker.runtime import get_runtime

REPO = Path(__file__).resolve().parent.parent
OPTIONS = {"num_inference_steps": 2, "height": 128, "width": 64, "generator": 4}


@pytest.fixture(scope="module")
def half_pipe(tiny_ootd_root):
    pipe = load_pipelines(tiny_ootd_root, model_types=("hd",), device="cpu", dtype=torch.float16)["hd"]
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def half(half_pipe):
    """The HD pipeline in float16, as on a GPU; the VAE weights a test changes are put back."""
    state = vae_state(half_pipe)
    yield half_pipe
    half_pipe.vae.load_state_dict(state)


@pytest.fixture
def decoder_inputs(half):
    """The dtype of every input the VAE decoder is given, in order."""
    seen: list[torch.dtype] = []
    handle = half.vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    yield seen
    handle.remove()


def overflow_float16(decoder: torch.nn.Module) -> None:
    """Scale the first convolution so that its outputs pass float16's range (its weights stay
    well inside it: the overflow is in the activations, as in a real one)."""
    weight = decoder.conv_in.weight
    with torch.no_grad():
        weight.copy_(weight.float() * (30000 / weight.float().abs().max()))
    assert torch.isfinite(weight).all()


def vae_state(pipe) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in pipe.vae.state_dict().items()}


def assert_same_state(pipe, state: dict[str, torch.Tensor]) -> None:
    """Same dtypes and the same bits (a NaN weight included, which `torch.equal` would not match)."""
    for name, tensor in pipe.vae.state_dict().items():
        assert tensor.dtype == state[name].dtype, name
        assert tensor.numpy().tobytes() == state[name].numpy().tobytes(), name


def test_a_float16_overflow_in_the_decoder_is_decoded_again_in_float32(half, decoder_inputs, caplog):
    person, garment, mask = make_images(64, 128, seed=3)
    assert half(person, garment, mask, **OPTIONS, output_type="np").decoded_in_float32 is False
    latents = half(person, garment, mask, **OPTIONS, output_type="latent").images
    overflow_float16(half.vae.decoder)
    before = vae_state(half)
    decoder_inputs.clear()

    with caplog.at_level(logging.WARNING, logger="ootd.pipeline"):
        out = half(person, garment, mask, **OPTIONS, output_type="np")

    assert out.decoded_in_float32 is True
    assert decoder_inputs == [torch.float16, torch.float32]  # the float16 decode did overflow
    assert "stage VAE decode: NaN or infinite pixels in float16; decoding again in float32" in caplog.text
    assert np.isfinite(out.images).all() and out.images.std() > 0.05
    # Exactly what a float32 copy of the same weights makes of the same latents.
    reference = copy.deepcopy(half.vae).float()
    with torch.inference_mode():
        pixels = reference.decode(latents.float() / reference.config.scaling_factor).sample
    np.testing.assert_array_equal(out.images, half.vae_image_processor.postprocess(pixels, output_type="np"))
    assert_same_state(half, before)  # back in float16, bit for bit


def test_pixels_no_retry_mends_fail_naming_the_stage(half, decoder_inputs, caplog):
    person, garment, mask = make_images(64, 128, seed=3)
    with torch.inference_mode():  # the weights may be inference tensors after an earlier retry
        half.vae.decoder.conv_out.weight[0, 0, 0, 0] = float("nan")
    before = vae_state(half)

    caplog.set_level(logging.WARNING, logger="ootd.pipeline")
    with pytest.raises(NonFiniteOutputError) as failed:
        half(person, garment, mask, **OPTIONS, output_type="pil")

    assert failed.value.stage == "VAE decode"
    assert str(failed.value) == "the VAE decoder produced NaN or infinite pixels in float16 and in float32"
    assert decoder_inputs == [torch.float16, torch.float32]
    assert "non-finite output, stage VAE decode (model hd)" in caplog.text
    assert_same_state(half, before)


def test_a_float32_decoder_is_not_retried(pipes):
    """On the CPU the decoder runs in float32 already: a retry would only repeat it."""
    pipe = pipes["hd"]
    seen = []
    hooks = [
        pipe.vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype)),
        pipe.vae.decoder.register_forward_hook(lambda module, args, output: output * float("nan")),
    ]
    try:
        with pytest.raises(NonFiniteOutputError, match=r"pixels in float32$") as failed:
            pipe(*make_images(64, 128, seed=3), **OPTIONS)
    finally:
        for hook in hooks:
            hook.remove()
    assert failed.value.stage == "VAE decode"
    assert seen == [torch.float32]


@pytest.mark.parametrize("output_type", ["np", "latent"])
def test_non_finite_latents_fail_before_any_retry(half, decoder_inputs, output_type):
    """A NaN out of the try-on UNet spreads through the scheduler into the latents: no decoder
    can mend them, so the decode is not retried (and with `output_type="latent"` not run)."""
    hook = half.unet_vton.register_forward_hook(lambda module, args, output: (output[0] * float("nan"),))
    try:
        with pytest.raises(NonFiniteOutputError) as failed:
            half(*make_images(64, 128, seed=3), **OPTIONS, output_type=output_type)
    finally:
        hook.remove()
    assert failed.value.stage == "denoising"
    assert str(failed.value) == "the denoising produced NaN or infinite latents"
    assert decoder_inputs == ([] if output_type == "latent" else [torch.float16])


def test_a_job_whose_result_stays_non_finite_fails_with_a_sentence_and_the_next_is_served(tiny_root, caplog):
    settings = Settings(checkpoints_dir=tiny_root, extra_resolutions=("256x192",), garment_cache_mb=0)
    runtime = get_runtime(settings)
    garment = data_uri((REPO / "assets" / "garments" / "0_tshirt.png").read_bytes())
    job = {"id": "nan", "input": {"person_index": 0, "garment": garment, "resolution": "256x192", "steps": 2}}
    decoder = runtime.pipelines["hd"].vae.decoder
    hook = decoder.register_forward_hook(lambda module, args, output: output * float("nan"))
    try:
        with caplog.at_level(logging.WARNING):
            result = handle(job, runtime, settings, progress=lambda update: None)
    finally:
        hook.remove()
    assert result == {
        "error": "the try-on produced no usable image: the VAE decoder produced NaN or infinite pixels "
        "in float32; send the job again with another seed or a lower guidance_scale"
    }  # and no refresh_worker: the GPU is fine
    assert "non-finite output, stage VAE decode" in caplog.text
    again = handle(job, runtime, settings, progress=lambda update: None)
    assert "error" not in again and len(again["images"]) == 1

"""The try-on pipeline end to end on tiny checkpoints: conditioning, guidance, repaint, seeding,
batching, validation. Most runs are 192x256 with 1-3 steps (2 or more wherever the result must
depend on the UNet); one slow test runs a step at 768x1024."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPImageProcessorPil, CLIPTokenizer

from ootd import CATEGORIES, layout, load_pipelines
from ootd.pipeline import build_scheduler, image_to_tensor, to_rgb

W, H = 192, 256


def make_images(width: int = W, height: int = H, seed: int = 0):
    """A structured person and garment photo and a rectangular 'L' mask (255 = repaint)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    person = np.stack([xx * 255 // width, yy * 255 // height, (xx * yy) % 256], axis=-1)
    person = np.clip(person + rng.integers(-20, 20, person.shape), 0, 255).astype(np.uint8)
    garment = np.stack([(xx + yy) % 256, 255 - yy * 255 // height, xx * 255 // width], axis=-1)
    garment = np.clip(garment + rng.integers(-20, 20, garment.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
    return PIL.Image.fromarray(person), PIL.Image.fromarray(garment), PIL.Image.fromarray(mask, "L")


@pytest.fixture(scope="module")
def images():
    return make_images()


def run(pipe, images, **kwargs):
    person, garment, mask = images
    options = {
        "num_inference_steps": 2,
        "height": H,
        "width": W,
        "generator": 0,
        "output_type": "np",
        **kwargs,
    }
    return pipe(person, garment, mask, **options).images


def latents_of(pipe, image: PIL.Image.Image) -> torch.Tensor:
    """The test's own VAE encoding: pixels in [-1, 1], latent mode, unscaled.

    Same arithmetic and the same NHWC-strided layout as the published pipeline's input: CPU
    convolutions round differently on a contiguous tensor, which the tiny VAE amplifies to 1e-4.
    """
    array = np.asarray(image, np.float32)[None] / 255.0
    pixels = torch.from_numpy(array.transpose(0, 3, 1, 2)) * 2.0 - 1.0
    with torch.inference_mode():
        return pipe.vae.encode(pixels).latent_dist.mode()


def gray_masked(person: PIL.Image.Image, mask: PIL.Image.Image) -> PIL.Image.Image:
    array = np.asarray(person).copy()
    array[np.asarray(mask) >= 128] = 127
    return PIL.Image.fromarray(array)


# ------------------------------------------------------------------------------------ conditioning
def test_hd_conditioning_is_empty_prompt_with_image_embedding_at_position_1(pipes, images, tiny_ootd_root):
    pipe = pipes["hd"]
    garment = images[1]
    tokenizer = CLIPTokenizer.from_pretrained(tiny_ootd_root / layout.TOKENIZER_DIR)
    ids = tokenizer([""], max_length=2, padding="max_length", truncation=True, return_tensors="pt").input_ids
    assert ids.tolist() == [[tokenizer.bos_token_id, tokenizer.eos_token_id]]
    processor = CLIPImageProcessorPil.from_pretrained(tiny_ootd_root / layout.CLIP_DIR)
    with torch.inference_mode():
        embeds = pipe.encode_prompt(garment, "upper_body")
        text = pipe.text_encoder(ids)[0]
        image = pipe.image_encoder(processor(images=garment, return_tensors="pt").pixel_values).image_embeds
    assert embeds.shape == (1, 2, pipe.unet_vton.config.cross_attention_dim)
    assert embeds.dtype == torch.float32
    assert torch.equal(embeds[:, 0], text[:, 0])
    assert torch.allclose(embeds[:, 1], image, atol=1e-6)
    assert not torch.allclose(embeds[:, 1], text[:, 1])


def test_dc_conditioning_is_three_category_tokens_plus_image_embedding(pipes, images, tiny_ootd_root):
    pipe = pipes["dc"]
    garment = images[1]
    tokenizer = CLIPTokenizer.from_pretrained(tiny_ootd_root / layout.TOKENIZER_DIR)
    pieces = {"upper_body": "upper", "lower_body": "lower", "dresses": "dress</w>"}
    seen = []
    with torch.inference_mode():
        image = pipe.encode_prompt(garment, "upper_body")[:, 3]
        for category in CATEGORIES:
            embeds = pipe.encode_prompt(garment, category)
            piece = tokenizer.convert_tokens_to_ids(pieces[category])
            ids = torch.tensor([[tokenizer.bos_token_id, piece, tokenizer.eos_token_id]])
            text = pipe.text_encoder(ids)[0]
            assert embeds.shape == (1, 4, pipe.unet_vton.config.cross_attention_dim)
            assert torch.allclose(embeds[:, :3], text, atol=1e-6), category
            assert torch.equal(embeds[:, 3], image)
            seen.append(embeds)
    assert not torch.allclose(seen[0], seen[1]) and not torch.allclose(seen[1], seen[2])


# -------------------------------------------------------------------------------------- guidance
@pytest.mark.parametrize("scale", [2.0, 3.5])
def test_guided_eps_equals_two_separate_unet_calls(pipes, images, scale):
    pipe = pipes["hd"]
    person, garment, mask = images
    seen = []
    step = pipe.scheduler.step

    def spy(model_output, timestep, sample, *args, **kwargs):
        seen.append((model_output.clone(), timestep, sample.clone()))
        return step(model_output, timestep, sample, *args, **kwargs)

    pipe.scheduler.step = spy
    try:
        run(
            pipe, images, num_inference_steps=1, image_guidance_scale=scale, generator=3, output_type="latent"
        )
    finally:
        del pipe.scheduler.step
    (eps, timestep, sample) = seen[0]

    noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sample, noise)
    person_latents = latents_of(pipe, gray_masked(person, mask))
    garment_latents = latents_of(pipe, garment)
    with torch.inference_mode():
        prompt = pipe.encode_prompt(garment, "upper_body")

        def eps_with(garment_rows: torch.Tensor) -> torch.Tensor:
            pipe.fusion.encode_garment(garment_rows, prompt)
            try:
                return pipe.unet_vton(torch.cat([noise, person_latents], 1), timestep, prompt).sample
            finally:
                pipe.fusion.clear()

        eps_garment = eps_with(garment_latents)
        eps_zero = eps_with(torch.zeros_like(garment_latents))
    assert (eps_garment - eps_zero).abs().max() > 1e-3  # the garment makes a difference
    expected = eps_zero + scale * (eps_garment - eps_zero)
    assert (eps - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    ("scale", "guided"), [(0.0, False), (0.5, False), (1.0, False), (1.01, True), (2.0, True)]
)
def test_scale_at_most_one_runs_a_single_batch(pipes, images, scale, guided):
    pipe = pipes["hd"]
    batches = {"garm": [], "vton": []}
    hooks = [
        pipe.unet_garm.register_forward_pre_hook(lambda m, args: batches["garm"].append(args[0].shape[0])),
        pipe.unet_vton.register_forward_pre_hook(lambda m, args: batches["vton"].append(args[0].shape[0])),
    ]
    try:
        run(pipe, images, num_inference_steps=1, image_guidance_scale=scale, num_images_per_prompt=2)
    finally:
        for hook in hooks:
            hook.remove()
    assert batches == {"garm": [2 if guided else 1], "vton": [4 if guided else 2]}


def test_garment_unet_runs_once_per_request_and_features_are_dropped_after(pipes, images):
    pipe = pipes["dc"]
    calls = {"garm": 0, "vton": 0}
    hooks = [
        pipe.unet_garm.register_forward_hook(lambda *a: calls.__setitem__("garm", calls["garm"] + 1)),
        pipe.unet_vton.register_forward_hook(lambda *a: calls.__setitem__("vton", calls["vton"] + 1)),
    ]
    try:
        run(pipe, images, num_inference_steps=3, category="dresses")
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"garm": 1, "vton": 3}
    assert pipe.fusion.store.features == {} and pipe.fusion.store.kv == {}


# --------------------------------------------------------------------------------------- repaint
@pytest.mark.parametrize(("steps", "width", "height"), [(3, W, H), (46, 64, 128)])
def test_repaint_keeps_unmasked_latents_on_the_noised_original(pipes, steps, width, height):
    """After step i the unmasked latents are the original noised to the sigma of step i+1 with the
    initial noise; after the last step, the clean original. 46 steps: Karras rounding repeats
    timesteps there, which must not shift the repaint noise level."""
    pipe = pipes["hd"]
    images = make_images(width, height, seed=2)
    person, _, mask = images
    seed = 11
    seen: list[torch.Tensor] = []

    def callback(p, index, timestep, kwargs):
        assert p is pipe and index == len(seen)
        seen.append(kwargs["latents"].clone())
        return {}

    final = run(
        pipe,
        images,
        num_inference_steps=steps,
        width=width,
        height=height,
        generator=seed,
        output_type="latent",
        callback_on_step_end=callback,
    )
    assert len(seen) == steps and torch.equal(seen[-1], final)

    original = latents_of(pipe, person) * pipe.vae.config.scaling_factor
    noise = torch.randn(original.shape, generator=torch.Generator().manual_seed(seed))
    repaint = torch.from_numpy((np.asarray(mask) >= 127).astype(np.float32))[None, None]
    keep = 1 - F.interpolate(repaint, size=original.shape[-2:])
    assert 0 < keep.mean() < 1
    scheduler = build_scheduler(dict(pipe.scheduler.config))
    scheduler.set_timesteps(steps)
    if steps == 46:
        assert len(set(scheduler.timesteps.tolist())) < steps
    for index, latents in enumerate(seen[:-1]):
        sigma = scheduler.sigmas[index + 1]
        alpha_t = 1 / torch.sqrt(sigma**2 + 1)
        expected = alpha_t * original + sigma * alpha_t * noise
        assert ((latents - expected) * keep).abs().max().item() <= 1e-5, index
        assert ((latents - original) * keep).abs().max().item() > 1e-3  # really noised
    assert ((final - original) * keep).abs().max().item() <= 1e-6
    assert ((final - original) * (1 - keep)).abs().max().item() > 1e-2  # the masked area was generated


# ---------------------------------------------------------------------------------------- seeding
def test_same_seed_same_output_whatever_ran_before_and_different_seeds_differ(pipes, images):
    pipe = pipes["hd"]
    first = run(pipe, images, generator=5)
    other = run(pipe, images, generator=6)
    torch.manual_seed(1234)
    torch.randn(100)
    again = run(pipe, images, generator=torch.Generator("cpu").manual_seed(5))
    assert np.array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


# ------------------------------------------------------------------------------------- categories
@pytest.mark.parametrize("category", ["lower_body", "dresses"])
def test_hd_refuses_categories_other_than_upper_body(pipes, images, category):
    with pytest.raises(ValueError, match=r"'hd' supports only category 'upper_body'.*'dc'"):
        run(pipes["hd"], images, category=category)


def test_dc_accepts_all_three_categories(pipes, images):
    # 2 steps: with Karras sigmas a 1-step schedule ends on sigma_max (as in the published code),
    # so the sampler returns the initial noise whatever the prompt.
    outputs = [run(pipes["dc"], images, category=category) for category in CATEGORIES]
    for output in outputs:
        assert output.shape == (1, H, W, 3) and np.isfinite(output).all()
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-4 and np.abs(outputs[1] - outputs[2]).max() > 1e-4


# -------------------------------------------------------------------------------------- batching
def test_one_and_four_samples(pipes, images):
    pipe = pipes["dc"]
    one = run(pipe, images, num_images_per_prompt=1, output_type="latent", generator=9)
    four = run(pipe, images, num_images_per_prompt=4, output_type="latent", generator=9)
    assert one.shape[0] == 1 and four.shape[0] == 4
    for i in range(4):
        for j in range(i + 1, 4):
            assert (four[i] - four[j]).abs().max() > 1e-3
    # The first of 4 samples draws the same noise as a single sample; with the published batch
    # layout [garment x 4 ; zero garment x 4] it must come out the same.
    assert (four[0] - one[0]).abs().max().item() <= 1e-4
    pils = run(pipe, images, num_images_per_prompt=4, output_type="pil", num_inference_steps=1)
    assert len(pils) == 4 and all(image.size == (W, H) for image in pils)


# ------------------------------------------------------------------------------------ validation
BAD_ARGUMENTS = [
    ("person", {"person": None}),
    ("garment", {"garment": None}),
    ("mask", {"mask": None}),
    ("person", {"person": np.zeros((H, W, 3), np.uint8)}),
    ("mask", {"mask": PIL.Image.new("RGB", (W, H))}),
    ("mask", {"mask": PIL.Image.new("1", (W, H))}),
    ("category", {"category": "shoes"}),
    ("num_inference_steps", {"num_inference_steps": 0}),
    ("num_inference_steps", {"num_inference_steps": 2.5}),
    ("image_guidance_scale", {"image_guidance_scale": -0.1}),
    ("image_guidance_scale", {"image_guidance_scale": float("nan")}),
    ("num_images_per_prompt", {"num_images_per_prompt": 0}),
    ("num_images_per_prompt", {"num_images_per_prompt": 5}),
    ("height", {"height": 250}),
    ("width", {"width": 0}),
    ("output_type", {"output_type": "tensor"}),
    ("generator", {"generator": "seed"}),
    ("callback_on_step_end", {"callback_on_step_end": 3}),
    ("callback_on_step_end_tensor_inputs", {"callback_on_step_end_tensor_inputs": ["prompt_embeds"]}),
]


@pytest.mark.parametrize(
    ("name", "change"), BAD_ARGUMENTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD_ARGUMENTS)]
)
def test_bad_arguments_raise_value_error_naming_the_argument(pipes, images, name, change):
    person, garment, mask = images
    arguments = {"person": person, "garment": garment, "mask": mask, "height": H, "width": W, **change}
    with pytest.raises(ValueError, match=f"`{name}`"):
        pipes["dc"](**arguments)


# ----------------------------------------------------------------------------------- inputs/outputs
def test_output_types_agree(pipes, images):
    pipe = pipes["hd"]
    arrays = run(pipe, images, output_type="np")
    pils = run(pipe, images, output_type="pil")
    latents = run(pipe, images, output_type="latent")
    assert arrays.shape == (1, H, W, 3) and arrays.dtype == np.float32
    assert arrays.min() >= 0 and arrays.max() <= 1
    assert pils[0].mode == "RGB" and pils[0].size == (W, H)
    assert np.array_equal(np.asarray(pils[0]), (arrays[0] * 255).round().astype(np.uint8))
    assert tuple(latents.shape) == (1, 4, H // 8, W // 8)


def test_inputs_of_any_size_and_mode_are_converted(pipes, images):
    person, garment, mask = images
    odd_person = person.resize((150, 210)).convert("RGBA")
    odd_garment = garment.resize((300, 280)).convert("L")
    small_mask = mask.resize((W // 2, H // 2), PIL.Image.NEAREST)
    out = pipes["hd"](
        odd_person, odd_garment, small_mask, num_inference_steps=1, height=H, width=W, generator=0
    )
    assert out.images[0].size == (W, H)
    transparent = PIL.Image.new("RGBA", (8, 8), (10, 200, 30, 0))
    assert np.asarray(to_rgb(transparent)).min() == 255  # transparency becomes white, not black


def test_callback_sees_every_step_and_may_replace_latents(pipes, images):
    pipe = pipes["hd"]
    calls = []

    def callback(p, index, timestep, kwargs):
        calls.append((index, int(timestep), sorted(kwargs)))
        return {"latents": torch.zeros_like(kwargs["latents"])} if index == 2 else {}

    latents = run(
        pipe,
        images,
        num_inference_steps=3,
        output_type="latent",
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "noise"],
    )
    assert [c[0] for c in calls] == [0, 1, 2]
    assert [c[1] for c in calls] == pipe.scheduler.timesteps.tolist()
    assert all(c[2] == ["latents", "noise"] for c in calls)
    assert torch.count_nonzero(latents) == 0


def check_one_step_keeps_the_person_and_the_starting_noise(pipe, images, seed, latents, size) -> None:
    """What one step gives at `size` (W, H) from `images` of any size: outside the mask, the
    person's own latents (the test's VAE encoding of the person stretched to `size`, bicubic, as
    published, mask stretched nearest); inside it, the starting noise of `seed`, untouched (a
    1-step Karras schedule starts and ends at sigma_max, so the UNet's output is multiplied by
    zero: such a run says nothing about conditioning). AssertionError where this fails."""
    person, _, mask = images
    original = latents_of(pipe, person.resize(size, PIL.Image.BICUBIC)) * pipe.vae.config.scaling_factor
    noise = torch.randn(original.shape, generator=torch.Generator().manual_seed(seed))
    repaint = np.asarray(mask.resize(size, PIL.Image.NEAREST)) >= 127
    inside = F.interpolate(torch.from_numpy(repaint.astype(np.float32))[None, None], size=original.shape[-2:])
    assert 0 < inside.mean() < 1
    assert latents.shape == original.shape
    outside_error = ((latents - original) * (1 - inside)).abs().max().item()
    assert outside_error <= 1e-5, f"the latents outside the mask are not the person's ({outside_error})"
    inside_error = ((latents - noise) * inside).abs().max().item()
    assert inside_error <= 1e-6, f"the latents inside the mask are not the starting noise ({inside_error})"


def one_step(pipe, images, seed, **options) -> tuple[PIL.Image.Image, torch.Tensor, list[tuple]]:
    """One step of `pipe` on `images`: the image, the final latents and the try-on UNet's inputs."""
    seen: list[torch.Tensor] = []
    shapes: list[tuple] = []

    def keep(p, index, timestep, kwargs):
        seen.append(kwargs["latents"].clone())
        return {}

    hook = pipe.unet_vton.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    try:
        image = pipe(*images, num_inference_steps=1, generator=seed, callback_on_step_end=keep, **options)
    finally:
        hook.remove()
    return image.images[0], seen[-1], shapes


@pytest.mark.slow
def test_the_default_768x1024_frame_from_half_size_inputs_keeps_the_person_outside_the_mask(pipes):
    """The published frame with the default guidance, from half-size inputs and mask: the
    shapes the try-on UNet sees, the image, and which latents are whose. One step only (a
    768x1024 step takes most of a minute on a loaded CPU): conditioning is covered at 192x256."""
    pipe, images = pipes["hd"], make_images(384, 512, seed=1)
    image, latents, shapes = one_step(pipe, images, seed=0)
    assert image.size == (768, 1024) and image.mode == "RGB"
    assert shapes == [(2, 8, 128, 96)]  # guided: [garment ; zero garment], noise + masked person
    check_one_step_keeps_the_person_and_the_starting_noise(pipe, images, 0, latents, (768, 1024))


def test_the_one_step_check_fails_on_an_inverted_mask_or_a_final_sigma_of_zero(pipes, monkeypatch):
    """Mutations of the system under the check above, at 128x192: the pipeline repaints the
    outside of the mask instead of the inside; the scheduler ends on sigma 0 (diffusers' newer
    default), so one step moves the noise."""
    from diffusers import UniPCMultistepScheduler

    import ootd.pipeline

    small = (128, 192)
    pipe, images, size = pipes["hd"], make_images(*small, seed=1), {"width": small[0], "height": small[1]}
    _, latents, _ = one_step(pipe, images, seed=0, **size)
    check_one_step_keeps_the_person_and_the_starting_noise(pipe, images, 0, latents, small)

    with monkeypatch.context() as patch:
        real = ootd.pipeline.mask_to_tensor
        patch.setattr(ootd.pipeline, "mask_to_tensor", lambda mask: 1 - real(mask))
        _, inverted, _ = one_step(pipe, images, seed=0, **size)
    with pytest.raises(AssertionError, match="outside the mask are not the person's"):
        check_one_step_keeps_the_person_and_the_starting_noise(pipe, images, 0, inverted, small)

    published = pipe.scheduler
    pipe.scheduler = UniPCMultistepScheduler.from_config(published.config, final_sigmas_type="zero")
    try:
        _, moved, _ = one_step(pipe, images, seed=0, **size)
    finally:
        pipe.scheduler = published
    with pytest.raises(AssertionError, match="inside the mask are not the starting noise"):
        check_one_step_keeps_the_person_and_the_starting_noise(pipe, images, 0, moved, small)


def test_demo_cli_writes_images(tiny_ootd_root, tmp_path, images):
    from ootd.demo import main

    names = ("person.png", "garment.jpg", "mask.png")
    for image, name in zip(images, names, strict=True):
        image.save(tmp_path / name)
    out = tmp_path / "out" / "try-on.png"
    main(
        [
            "--checkpoints", str(tiny_ootd_root), "--person", str(tmp_path / "person.png"),
            "--garment", str(tmp_path / "garment.jpg"), "--mask", str(tmp_path / "mask.png"),
            "--out", str(out), "--model-type", "dc", "--category", "dresses", "--steps", "2",
            "--samples", "2", "--size", f"{H}x{W}",
        ]
    )  # fmt: skip
    for path in (out, out.with_name("try-on_1.png")):
        assert PIL.Image.open(path).size == (W, H)


def test_float16_runs_from_the_same_code_and_stays_close_to_float32(pipes, tiny_ootd_root):
    """The CUDA configuration (float16 UNets and VAE, float32 CLIP), here on the CPU."""
    half = load_pipelines(tiny_ootd_root, model_types=("hd",), device="cpu", dtype=torch.float16)["hd"]
    half.set_progress_bar_config(disable=True)
    small = make_images(64, 128, seed=3)
    options = {"num_inference_steps": 2, "height": 128, "width": 64, "generator": 4, "output_type": "np"}
    result = half(*small, **options).images
    reference = pipes["hd"](*small, **options).images
    assert np.isfinite(result).all()
    assert np.abs(result - reference).max() < 0.05


def test_vae_input_keeps_the_published_memory_layout():
    # The published pipeline hands the VAE diffusers' NHWC-strided tensor; on a contiguous one CPU
    # convolutions round differently (5e-4 in the tiny VAE's latents, measured), so the layout is
    # part of fidelity.
    image = PIL.Image.new("RGB", (64, 128), (10, 20, 30))
    pixels = image_to_tensor(image)
    assert pixels.shape == (1, 3, 128, 64)
    assert pixels.stride() == (128 * 64 * 3, 1, 64 * 3, 3)
    assert torch.allclose(pixels[0, :, 0, 0], torch.tensor([10, 20, 30]) / 255.0 * 2 - 1)

"""The garment conditioning cache on the tiny checkpoints: a hit gives the same bytes as a miss
and skips CLIP, the garment VAE encoding and the garment UNet; the byte bound holds; entries are
never shared across model types, categories, sizes or guidance; a bound of 0 disables it.

Every run takes `STEPS` = 2 steps: after one Karras UniPC step the sampler returns its starting
noise and the UNet's output is multiplied by zero, so a 1-step hit would give the miss's bytes
whatever the entry held. The hit == miss check is a helper so that the mutation tests can show
it fails on a cache that stores corrupted garment features.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import PIL.Image
import pytest
import torch
from test_ootd_pipeline import make_images

from ootd.garment_cache import GarmentCache, GarmentConditioning, garment_key
from ootd.lru import ByteBoundedLru


@pytest.fixture
def cache(pipes) -> Iterator[GarmentCache]:
    """A fresh cache shared by both pipelines (as the worker shares one), removed afterwards."""
    cache = GarmentCache()
    for pipe in pipes.values():
        pipe.garment_cache = cache
    yield cache
    for pipe in pipes.values():
        pipe.garment_cache = None


@contextmanager
def counting(pipe) -> Iterator[dict[str, int]]:
    """Counts the calls of the garment-only networks: CLIP's image tower and the garment UNet."""
    counts = {"clip": 0, "unet_garm": 0}
    handles = []
    for name, module in (("clip", pipe.image_encoder), ("unet_garm", pipe.unet_garm)):

        def hook(module, args, name=name):
            counts[name] += 1

        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


# The cache's bookkeeping needs no large frame: the tests that are not about fidelity run here.
SMALL = {"height": 128, "width": 128}
STEPS = 2
"""The fewest steps whose result depends on the UNet (see the module doc)."""
COUNTING_ONLY = {"num_inference_steps": 1}
"""For the tests that count calls, entries and bytes and compare no output: one step is enough."""
HIT_OPTIONS = {"category": "lower_body", **SMALL}


def run(pipe, images, **kwargs) -> np.ndarray:
    person, garment, mask = images
    options = {"num_inference_steps": STEPS, **SMALL, "generator": 7, "output_type": "np"}
    return pipe(person, garment, mask, **{**options, **kwargs}).images


def check_a_hit_gives_the_same_bytes_as_a_miss(
    pipe, cache: GarmentCache, guidance: float, samples: tuple[int, ...] = (1, 4)
) -> None:
    """The cache's promise, on an empty `cache`: per number of samples, a miss (the first
    request, which fills the cache, or a run without one) and then a hit that runs neither CLIP
    nor the garment UNet and gives exactly the miss's bytes. AssertionError where it fails."""
    images, options = make_images(), {**HIT_OPTIONS, "image_guidance_scale": guidance}
    pipe.garment_cache = cache
    try:
        for number, count in enumerate(samples):
            if number:  # the entry exists: the miss to compare with runs without the cache
                pipe.garment_cache = None
            with counting(pipe) as counts:
                miss = run(pipe, images, num_images_per_prompt=count, **options)
            assert counts == {"clip": 1, "unet_garm": 1} and len(cache) == 1
            pipe.garment_cache = cache
            with counting(pipe) as counts:
                hit = run(pipe, images, num_images_per_prompt=count, **options)
            assert counts == {"clip": 0, "unet_garm": 0}, "a hit must not run the garment networks"
            assert cache.hits == number + 1
            assert hit.shape == miss.shape == (count, *miss.shape[1:])
            assert hit.tobytes() == miss.tobytes(), f"a hit gave other bytes than a miss ({count} samples)"
    finally:
        pipe.garment_cache = None


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_a_hit_gives_the_same_bytes_as_a_miss_for_1_and_4_samples(pipes, guidance) -> None:
    check_a_hit_gives_the_same_bytes_as_a_miss(pipes["dc"], GarmentCache(), guidance)


class CorruptingCache(GarmentCache):
    """A broken cache for the mutation tests: it stores `corrupt(entry)` instead of the entry."""

    def __init__(self, corrupt) -> None:
        super().__init__()
        self.corrupt = corrupt

    def put(self, key, value: GarmentConditioning) -> bool:
        return super().put(key, self.corrupt(value))


def scaled_features(pipe, guidance: float):
    """A corruption: the entry's garment features times 1.5."""
    return lambda entry: replace(entry, features={name: 1.5 * x for name, x in entry.features.items()})


def another_garments_features(pipe, guidance: float):
    """A corruption: the features of another garment of the same shapes (a key collision)."""
    cache, images = GarmentCache(), make_images(seed=5)
    pipe.garment_cache = cache
    try:
        run(pipe, images, **HIT_OPTIONS, image_guidance_scale=guidance)
    finally:
        pipe.garment_cache = None
    frame = images[1].resize((SMALL["width"], SMALL["height"]), PIL.Image.BICUBIC)
    other = cache.get(garment_key(frame, pipe.model_type, HIT_OPTIONS["category"], guidance > 1))
    assert other is not None
    return lambda entry: replace(entry, features=other.features)


@pytest.mark.parametrize("corruption", [scaled_features, another_garments_features])
def test_the_hit_check_fails_on_corrupted_garment_features(pipes, corruption) -> None:
    """Mutation: the cache hands back wrong garment features while the entry's prompt embeddings
    and latents stay right, so only the features can make the hit differ from the miss."""
    pipe, guidance = pipes["dc"], 2.0
    cache = CorruptingCache(corruption(pipe, guidance))
    with pytest.raises(AssertionError, match="a hit gave other bytes than a miss"):
        check_a_hit_gives_the_same_bytes_as_a_miss(pipe, cache, guidance, samples=(1,))


def test_model_types_categories_sizes_and_guidance_never_share_an_entry(pipes, cache) -> None:
    images = make_images()
    requests = [
        ("hd", {"category": "upper_body", **SMALL}),
        ("dc", {"category": "upper_body", **SMALL}),
        ("dc", {"category": "lower_body", **SMALL}),
        ("dc", {"category": "dresses", **SMALL}),
        ("dc", {"category": "dresses", "image_guidance_scale": 1.0, **SMALL}),
        ("dc", {"category": "dresses", "height": 64, "width": 64}),
    ]
    for number, (model_type, options) in enumerate(requests, start=1):
        with counting(pipes[model_type]) as counts:
            run(pipes[model_type], images, **options, **COUNTING_ONLY)
        assert counts["unet_garm"] == 1, f"{model_type} {options} reused another request's entry"
        assert len(cache) == number
    assert cache.hits == 0


def test_the_cache_stays_within_its_byte_bound_under_distinct_garments(pipes) -> None:
    pipe = pipes["hd"]
    garments = [make_images(seed=seed) for seed in range(4)]
    pipe.garment_cache = GarmentCache()
    try:
        run(pipe, garments[0], **SMALL, **COUNTING_ONLY)
        size = pipe.garment_cache.nbytes
        assert size > 0
        bounded = GarmentCache(max_bytes=int(2.5 * size))
        pipe.garment_cache = bounded
        keys = []
        for images in garments:
            run(pipe, images, **SMALL, **COUNTING_ONLY)
            frame = images[1].resize((SMALL["width"], SMALL["height"]), PIL.Image.BICUBIC)
            keys.append(garment_key(frame, "hd", "upper_body", True))
            assert keys[-1] in bounded
            assert bounded.nbytes <= bounded.max_bytes
        # Least recently used first out (the order of `get`s is checked in test_lru_put_get_resize).
        assert [key in bounded for key in keys] == [False, False, True, True]
    finally:
        pipe.garment_cache = None


def test_a_zero_byte_cache_is_disabled(pipes) -> None:
    pipe, images = pipes["hd"], make_images()
    pipe.garment_cache = GarmentCache(max_bytes=0)
    try:
        with counting(pipe) as counts:
            first = run(pipe, images, **SMALL)
            second = run(pipe, images, **SMALL)
        assert counts["unet_garm"] == 2 and len(pipe.garment_cache) == 0
        assert first.tobytes() == second.tobytes()
    finally:
        pipe.garment_cache = None


def test_lru_put_get_resize() -> None:
    lru: ByteBoundedLru[bytes] = ByteBoundedLru(10, size_of=len)
    assert lru.put("a", b"1234") and lru.put("b", b"1234")
    assert lru.get("a") == b"1234"  # now "b" is the least recently used
    assert lru.put("c", b"123")
    assert "b" not in lru and "a" in lru and lru.nbytes == 7
    assert not lru.put("big", b"x" * 11) and "big" not in lru
    lru.resize(3)
    assert list(lru._entries) == ["c"] and lru.nbytes == 3
    lru.resize(0)
    assert len(lru) == 0 and not lru.put("d", b"1") and lru.get("d") is None


def test_features_are_not_emptied_by_the_pipeline_clearing_its_garment(pipes, cache) -> None:
    pipe, images = pipes["hd"], make_images()
    run(pipe, images, **SMALL)
    (entry,) = (value for value, _ in cache._entries.values())
    assert set(entry.features) == set(pipe.fusion.block_names)
    assert all(isinstance(tensor, torch.Tensor) and tensor.numel() for tensor in entry.features.values())

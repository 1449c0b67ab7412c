"""The garment conditioning cache on the tiny checkpoints: a hit gives the same bytes as a miss
and skips CLIP, the garment VAE encoding and the garment UNet; the byte bound holds; entries are
never shared across model types, categories, sizes or guidance; a bound of 0 disables it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import PIL.Image
import pytest
import torch
from test_ootd_pipeline import make_images

from ootd.garment_cache import GarmentCache, garment_key
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


def run(pipe, images, **kwargs) -> np.ndarray:
    person, garment, mask = images
    options = {"num_inference_steps": 1, **SMALL, "generator": 7, "output_type": "np"}
    return pipe(person, garment, mask, **{**options, **kwargs}).images


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_a_hit_gives_the_same_bytes_as_a_miss_for_1_and_4_samples(pipes, cache, guidance) -> None:
    pipe, images = pipes["dc"], make_images()
    options = {"category": "lower_body", "image_guidance_scale": guidance, **SMALL}
    with counting(pipe) as counts:
        miss = run(pipe, images, num_images_per_prompt=1, **options)
    assert counts == {"clip": 1, "unet_garm": 1} and len(cache) == 1
    pipe.garment_cache = None
    miss_4 = run(pipe, images, num_images_per_prompt=4, **options)
    pipe.garment_cache = cache

    with counting(pipe) as counts:
        hit, hit_4 = (run(pipe, images, num_images_per_prompt=samples, **options) for samples in (1, 4))
    assert counts == {"clip": 0, "unet_garm": 0}, "a hit must not run the garment networks"
    assert cache.hits == 2
    assert hit.tobytes() == miss.tobytes()
    assert hit_4.shape == miss_4.shape and hit_4.tobytes() == miss_4.tobytes()


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
            run(pipes[model_type], images, **options)
        assert counts["unet_garm"] == 1, f"{model_type} {options} reused another request's entry"
        assert len(cache) == number
    assert cache.hits == 0


def test_the_cache_stays_within_its_byte_bound_under_distinct_garments(pipes) -> None:
    pipe = pipes["hd"]
    garments = [make_images(seed=seed) for seed in range(4)]
    pipe.garment_cache = GarmentCache()
    try:
        run(pipe, garments[0], **SMALL)
        size = pipe.garment_cache.nbytes
        assert size > 0
        bounded = GarmentCache(max_bytes=int(2.5 * size))
        pipe.garment_cache = bounded
        keys = []
        for images in garments:
            run(pipe, images, **SMALL)
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

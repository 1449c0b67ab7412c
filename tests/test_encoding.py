"""Parallel encoding of a job's pictures: the same bytes, in the same order, as one by one, on a
pool sized from the CPUs the process may use."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worker.encoding import encode_images
from worker.images import encode_image

REPO = Path(__file__).resolve().parent.parent


def picture(seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (96, 72, 3) if mode == "RGB" else (96, 72)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def test_parallel_encoding_gives_the_sequential_bytes_in_order() -> None:
    pictures = [(picture(seed), fmt) for seed, fmt in enumerate(("png", "jpeg", "webp", "png"))]
    pictures.append((picture(9, "L"), "png"))
    encoded = encode_images(pictures)
    assert encoded == [encode_image(image, fmt) for image, fmt in pictures]
    formats = [Image.open(io.BytesIO(data)).format for data in encoded]
    assert formats == ["PNG", "JPEG", "WEBP", "PNG", "PNG"]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encoded[-1]))), np.asarray(pictures[-1][0]))


def test_one_picture_and_none() -> None:
    image = picture(1)
    assert encode_images([(image, "png")]) == [encode_image(image, "png")]
    assert encode_images([]) == []


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to give the process fewer")
def test_the_pool_is_sized_from_the_cpus_the_process_may_use_not_the_hosts_cores() -> None:
    # A fresh interpreter limited to one CPU (the affinity mask, as a container's cpuset does):
    # the host still counts every core, the pool must not.
    code = (
        "import os\n"
        "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
        "from worker.encoding import _executor\n"
        "print(os.cpu_count(), _executor()._max_workers)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    host_cores, threads = map(int, done.stdout.split())
    assert host_cores >= 2 and threads == 1

"""Output encoding at 768x1024: PNG size and time per compression level, and 4 samples encoded
one after the other vs in parallel threads (`worker.encoding`).

The picture: the bundled house photo cropped to 3:4, scaled up to 768x1024 and given mild
Gaussian noise (sigma 3), which a decoded try-on image has and a plain upscale lacks; a smooth
synthetic picture would flatter the higher levels. Times are the median of `--runs` runs of one
process on a shared machine: read the ratios, not the seconds.

    .venv/bin/python -m bench.bench_encoding [--runs 5]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
from PIL import Image

from bench.models import HOUSE_PHOTO
from worker.encoding import encode_image, encode_images

SIZE = (768, 1024)


def realistic_picture(seed: int = 0, size: tuple[int, int] = SIZE) -> Image.Image:
    """The house photo cropped to 3:4, scaled up to `size` (3:4) and given sigma-3 noise."""
    photo = Image.open(HOUSE_PHOTO).convert("RGB")
    width, height = photo.size
    crop_width = min(width, height * 3 // 4)
    left = (width - crop_width) // 2
    photo = photo.crop((left, 0, left + crop_width, crop_width * 4 // 3))
    photo = photo.resize(size, Image.Resampling.BICUBIC)
    noise = np.random.default_rng(seed).normal(0.0, 3.0, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(photo, np.float32) + noise, 0, 255).astype(np.uint8))


def median_seconds(work, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def png(image: Image.Image, level: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def sequential_vs_parallel(runs: int, samples: int = 4) -> dict[str, tuple[float, float]]:
    """Per output format: median seconds to encode `samples` pictures one after the other, and
    in the worker's threads (`worker.encoding.encode_images`)."""
    pictures = [realistic_picture(seed) for seed in range(samples)]
    times = {}
    for output_format in ("png", "jpeg", "webp"):
        sequential = median_seconds(lambda f=output_format: [encode_image(p, f) for p in pictures], runs)
        parallel = median_seconds(lambda f=output_format: encode_images([(p, f) for p in pictures]), runs)
        times[output_format] = (sequential, parallel)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    image = realistic_picture()

    print("PNG at 768x1024: level, MB, seconds, MB/s of raw pixels")
    raw = SIZE[0] * SIZE[1] * 3 / 1e6
    for level in range(10):
        size = len(png(image, level)) / 1e6
        seconds = median_seconds(lambda level=level: png(image, level), args.runs)
        print(f"  {level}  {size:6.2f} MB  {seconds * 1000:7.1f} ms  {raw / seconds:7.1f}")

    print("4 samples at 768x1024: format, sequential s, parallel s, ratio")
    for output_format, (sequential, parallel) in sequential_vs_parallel(args.runs).items():
        print(f"  {output_format:5} {sequential:6.3f} {parallel:6.3f}  {sequential / parallel:4.2f}x")


if __name__ == "__main__":
    main()

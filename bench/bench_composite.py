"""What returning the photo's own size costs (`worker.composite`, issue 19), beside the diffusion.

Per output size (1, 6 and 12 megapixels, 3:4) and sample count (1 and 4), the median of `--runs`:

- `composite`: the default, the 768x1024 frames laid over the photo at its size (output_size
  "input", composite true), a mask over about a third of the picture, as an upper-body
  agnostic mask is;
- `alone`: composite false at the photo's size (each frame resampled whole);
- `frame`: output_size "frame" with composite (the photo scaled down to the frame);
- `png` / `jpeg`: encoding the composited pictures as the worker does (`worker.encoding`,
  in its threads), and the bytes of one picture, which decide what fits inline.

Each is wall and process CPU time on this host's `container_cpus()` threads; CPU time shows what
a host with more cores would spread out. With `--checkpoints DIR` or `--size mid`, the diffusion
of a job at `--resolution` is timed through the pipeline on that tree (`bench.bench_pipeline`'s
`time_call`, `--diffusion-steps` steps) and extrapolated to `--steps` (preparation and first
step + the median step x the remaining steps + decode); the composite times are then printed as
a share of it. The mid tree is slow on a CPU: `--diffusion-samples 1` times one sample only
(4 samples then read as 4x its steps, an upper bound on a GPU, which batches them).

The photo: the house photo scaled up (bicubic) with sigma-3 noise, as in `bench.bench_encoding`.

    .venv/bin/python -m bench.bench_composite [--runs 3] [--megapixels 1,6,12] [--samples 1,4]
        [--size mid | --checkpoints DIR] [--device cuda] [--resolution 1024x768] [--steps 20]
        [--diffusion-steps 2] [--diffusion-samples 1,4]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from PIL import Image, ImageDraw

from bench.bench_encoding import realistic_picture
from bench.models import SIZES, write_tree
from core.framing import fit_to_frame
from core.vocabulary import MODEL_FRAME, parse_size
from worker.composite import composite, region_size
from worker.encoding import encode_images
from worker.threads import container_cpus


def photo_size(megapixels: float) -> tuple[int, int]:
    """A 3:4 portrait of about `megapixels` (12 -> 3000x4000)."""
    width = round(math.sqrt(megapixels * 1e6 * 3 / 4))
    return width, round(width * 4 / 3)


def upper_body_mask(frame: tuple[int, int] = MODEL_FRAME) -> Image.Image:
    """A torso-and-arms mask drawn at the parser's 384x512 and scaled up with NEAREST, blocky like
    an agnostic mask (about a third of the frame)."""
    small = Image.new("L", (384, 512), 0)
    draw = ImageDraw.Draw(small)
    draw.polygon([(110, 120), (274, 120), (300, 380), (84, 380)], fill=255)  # torso
    draw.polygon([(110, 120), (60, 330), (90, 340), (130, 170)], fill=255)  # arms
    draw.polygon([(274, 120), (324, 330), (294, 340), (254, 170)], fill=255)
    return small.resize(frame, Image.Resampling.NEAREST)


def generated_frames(count: int) -> list[Image.Image]:
    """Stand-ins for decoded try-on frames (768x1024): the photo with a different noise each."""
    return [realistic_picture(seed=100 + index) for index in range(count)]


def timed(work: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median wall and process CPU seconds of `runs` calls."""
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def composite_rows(megapixels: list[float], samples: list[int], runs: int) -> list[dict]:
    mask = upper_body_mask()
    rows = []
    for mp in megapixels:
        size = photo_size(mp)
        person = realistic_picture(size=size)
        for count in samples:
            row = {"megapixels": mp, "size": size, "samples": count,
                   **measure(person, generated_frames(count), mask, runs)}  # fmt: skip
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def measure(person: Image.Image, frames: list[Image.Image], mask: Image.Image, runs: int) -> dict:
    """The three ways to finish a job, and encoding the default's pictures, on one photo."""
    _, pad = fit_to_frame(person, MODEL_FRAME, (255, 255, 255))
    size, small = person.size, region_size(mask.size, pad)
    row = {
        "composite": timed(lambda: composite(person, frames, mask, pad, size), runs),
        "alone": timed(lambda: composite(person, frames, mask, pad, size, keep_photo=False), runs),
        "frame": timed(lambda: composite(person, frames, mask, pad, small), runs),
    }
    outputs, _ = composite(person, frames, mask, pad, size)
    for output_format in ("png", "jpeg"):
        pictures = [(image, output_format) for image in outputs]
        row[output_format] = timed(lambda pictures=pictures: encode_images(pictures), runs)
        row[f"{output_format}_mb"] = len(encode_images(pictures[:1])[0]) / 1e6
    return row


def format_row(row: dict, diffusion: dict[int, float] | None = None) -> str:
    width, height = row["size"]
    parts = [f"{row['megapixels']:>4g} MP {width}x{height} x{row['samples']}:"]
    for key in ("composite", "alone", "frame", "png", "jpeg"):
        wall, cpu = row[key]
        share = ""
        if diffusion and key in ("composite", "alone", "frame"):
            share = f" = {wall / diffusion[row['samples']] * 100:.2g} %"
        parts.append(f"{key} {wall:.3f} s (CPU {cpu:.3f}){share}")
    parts.append(f"one PNG {row['png_mb']:.1f} MB, one JPEG {row['jpeg_mb']:.1f} MB")
    return "  ".join(parts)


def diffusion_seconds(root: Path, args: argparse.Namespace) -> dict[int, float]:
    """Seconds of the pipeline call of a `--steps` job per sample count, from `--diffusion-steps`."""
    from bench.bench_pipeline import time_call
    from ootd import load_pipelines

    pipe = load_pipelines(root, model_types=("hd",), device=args.device)["hd"]
    pipe.set_progress_bar_config(disable=True)
    width, height = parse_size(args.resolution)
    seconds = {}
    for count in args.diffusion_samples:
        call = SimpleNamespace(steps=args.diffusion_steps, scale=2.0, samples=count)
        time_call(pipe, width, height, SimpleNamespace(steps=1, scale=2.0, samples=count))  # first call: warm
        measured = time_call(pipe, width, height, call)
        first, step = measured["first_step_with_preparation_s"], measured["step_s"]
        estimate = seconds[count] = first + (args.steps - 1) * step + measured["decode_s"]
        print(f"diffusion {args.resolution} x{count}: {args.diffusion_steps} steps took "
              f"{measured['total_s']:.1f} s (first step with preparation {first:.1f} s, step {step:.1f} s, "
              f"decode {measured['decode_s']:.1f} s) -> {args.steps} steps {estimate:.1f} s")  # fmt: skip
    for count in args.samples:
        if count not in seconds:  # read as `count` times one sample's steps
            one = min(seconds)
            seconds[count] = seconds[one] * count / one
            print(f"diffusion x{count}: not timed, taken as {count // one}x x{one}: {seconds[count]:.1f} s")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--megapixels", default="1,6,12")
    parser.add_argument("--samples", default="1,4")
    parser.add_argument("--size", choices=SIZES, default=None, help="tree to write (bench.models)")
    parser.add_argument("--checkpoints", type=Path, default=None, help="an existing tree")
    parser.add_argument("--device", default=None, help="diffusion device (default: CUDA, fp16)")
    parser.add_argument("--resolution", default="1024x768")
    parser.add_argument("--steps", type=int, default=20, help="a job's steps (extrapolated to)")
    parser.add_argument("--diffusion-steps", type=int, default=2, help="steps actually run (at least 2)")
    parser.add_argument("--diffusion-samples", default="1,4")
    args = parser.parse_args()
    args.samples = [int(n) for n in args.samples.split(",")]
    args.diffusion_samples = [int(n) for n in args.diffusion_samples.split(",")]
    megapixels = [float(mp) for mp in args.megapixels.split(",")]

    print(f"compositing on {container_cpus()} thread(s); median of {args.runs}", flush=True)
    rows = composite_rows(megapixels, args.samples, args.runs)
    if args.checkpoints is None and args.size is None:
        return
    with tempfile.TemporaryDirectory() as folder:
        root = args.checkpoints
        root = root or write_tree(Path(folder), args.size)
        diffusion = diffusion_seconds(root, args)
    print(f"as a share of the diffusion ({args.resolution}, {args.steps} steps, guidance 2):")
    for row in rows:
        print(format_row(row, diffusion))


if __name__ == "__main__":
    main()

"""What the caches save per job, through the worker's own job path on tiny checkpoints (CPU).

Three ratios, each from one process. On a shared machine the wall clock of a whole job swings
with other load, so the process CPU time of each job is printed beside it (summed over torch's
threads): compare those.

- house model: the `mask` stage of the first job on `person_index` 0 vs a repeated one (another
  garment, so only the mask can come from a cache);
- garment: the whole request (`total`) of a garment the worker has not seen vs the same garment
  again (another seed, and the house mask already cached in both, so only the garment differs),
  `--pairs` times with new garments, medians;
- encoding: 4 samples encoded one after the other vs in threads is in `bench.bench_encoding`.

The tiny networks are far cheaper than the real ones, and unevenly so (the tiny pose and parsing
networks are small, the tiny garment UNet costs about one try-on step), so on the tiny tree the
ratios show that the cache removes the work, not how much a real job saves. The mid-size tree
(`bench.models`: real preprocessing, CLIP and text encoder, UNets and VAE at half width) keeps the
real proportions between them: there a garment hit saves CLIP ViT-L/14, one VAE encode and one
garment UNet pass, as on the real weights.

    .venv/bin/python -m bench.bench_caches [--size tiny|mid | --checkpoints DIR]
        [--resolution 512x384] [--steps 20] [--samples 1]
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

from bench.models import SIZES, write_tree
from worker.config import Settings
from worker.job import handle
from worker.runtime import get_runtime

GARMENT = Path(__file__).resolve().parent.parent / "assets" / "garments" / "0_tshirt.png"


def garment_variant(number: int) -> str:
    """The bundled garment photo, changed per `number` so that each is a new garment."""
    image = Image.open(GARMENT).convert("RGB")
    if number % 2:
        image = ImageOps.mirror(image)
    image = image.rotate(number * 3, fillcolor=(255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", default="512x384")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=3, help="garment miss/hit pairs (medians)")
    parser.add_argument("--size", choices=SIZES, default="tiny", help="tree to write (bench.models)")
    parser.add_argument("--checkpoints", type=Path, default=None, help="an existing tree instead")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        root = args.checkpoints or write_tree(Path(folder), args.size)
        settings = Settings(checkpoints_dir=root, allow_cpu=True, warmup=False)
        runtime = get_runtime(settings)

        def job(garment: int, seed: int) -> dict[str, float]:
            request = {"person_index": 0, "garment": garment_variant(garment), "resolution": args.resolution,
                       "steps": args.steps, "samples": args.samples, "seed": seed}  # fmt: skip
            cpu = time.process_time()
            result = handle({"id": "bench", "input": request}, runtime, settings, progress=lambda _: None)
            assert "error" not in result, result
            return {**result["timings"], "cpu": time.process_time() - cpu}

        job(0, 0)  # first call of every network: not what a warm worker pays
        runtime.house_masks.clear()
        runtime.garment_cache.clear()
        first, repeated = job(1, 1), job(2, 1)
        print(f"house model: mask {first['mask']:.3f} s first, {repeated['mask']:.4f} s repeated: "
              f"{repeated['mask'] / first['mask'] * 100:.2f} %")  # fmt: skip
        # Pairs of (new garment, same garment again), interleaved so that a change in the
        # machine's load during the run falls on misses and hits alike; medians of the pairs.
        misses, hits = [], []
        for pair in range(args.pairs):
            misses.append(job(3 + pair, 2))
            hits.append(job(3 + pair, 3))
            print(f"  pair {pair + 1}: total {misses[-1]['total']:.2f} s miss, {hits[-1]['total']:.2f} s hit")
        miss = {key: statistics.median(m[key] for m in misses) for key in misses[0]}
        hit = {key: statistics.median(h[key] for h in hits) for key in hits[0]}
        print(f"garment ({args.resolution}, {args.steps} steps, {args.samples} sample(s), median of "
              f"{args.pairs}): total {miss['total']:.2f} s miss, {hit['total']:.2f} s hit: "
              f"{hit['total'] / miss['total']:.3f}x; CPU {miss['cpu']:.2f} s vs {hit['cpu']:.2f} s: "
              f"{hit['cpu'] / miss['cpu']:.3f}x")  # fmt: skip


if __name__ == "__main__":
    main()

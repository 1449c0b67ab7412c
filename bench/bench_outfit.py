"""What a catalog and an outfit cost against the single jobs they replace (issue 20), through the
worker's own job path on CPU.

- catalog: one job dressing `--people` house models (8) in one garment vs that many single jobs,
  one after the other, on a warm worker. The garment conditioning is counted once on both sides:
  the single jobs share it through the garment cache (the first one pays, the others hit), and the
  house masks are cached for both, so the ratio is what batching the people through the try-on
  UNet (and one job's overhead instead of eight) saves.
- outfit: a two-garment outfit (lower body, then upper body) vs the two single jobs it chains
  (the second dressing the first one's PNG), garment cache cleared before each side.

Whole-job wall clock (`total`) and process CPU time (summed over torch's threads), each side run
`--repeats` times interleaved, medians. On a shared machine compare the CPU times; the wall clock
swings with other load. The mid tree (`bench.models`: real preprocessing and CLIP, UNets and VAE
at half width) keeps the real proportions; the GPU's gain from batching is larger than the CPU's
(a CPU is busy with one image's convolutions already), so absolute times and the GPU ratio belong
to a GPU host.

    .venv/bin/python -m bench.bench_outfit [--size mid | --checkpoints DIR] [--people 8]
        [--resolution 512x384] [--steps 10] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import ImageOps

from bench.bench_caches import garment_variant
from bench.models import HOUSE_PHOTO, SIZES, write_tree
from core.generation import MAX_PEOPLE
from worker.config import Settings
from worker.job import handle
from worker.runtime import get_runtime


def house_models(folder: Path, count: int) -> Path:
    """`count` house model photos: the bundled one, mirrored and shifted per index."""
    from PIL import Image

    photo = Image.open(HOUSE_PHOTO).convert("RGB")
    for index in range(count):
        picture = ImageOps.mirror(photo) if index % 2 else photo
        picture = picture.rotate(index, fillcolor=(255, 255, 255))
        picture.save(folder / f"{index}_model.png")
    return folder


def measure(work: Callable[[], None]) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", default="512x384")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--people", type=int, default=MAX_PEOPLE)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side (medians)")
    parser.add_argument("--size", choices=SIZES, default="mid", help="tree to write (bench.models)")
    parser.add_argument("--checkpoints", type=Path, default=None, help="an existing tree instead")
    parser.add_argument("--skip", choices=("catalog", "outfit"), default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        root = args.checkpoints or write_tree(Path(folder) / "tree", args.size, model_types=("hd", "dc"))
        photos = Path(folder) / "house"
        photos.mkdir()
        settings = Settings(
            checkpoints_dir=root,
            allow_cpu=True,
            warmup=False,
            model_images_dir=house_models(photos, args.people),
        )
        runtime = get_runtime(settings)
        common = {"resolution": args.resolution, "steps": args.steps, "seed": 5}

        def job(fields: dict) -> dict:
            result = handle({"id": "bench", "input": {**common, **fields}}, runtime, settings, lambda _: None)
            assert "error" not in result, result["error"]
            return result

        # First call of every network, and every house mask computed: not what a warm worker pays.
        job({"person_index": list(range(args.people)), "garment": garment_variant(0)})
        job({"person_index": 0, "garments": [{"garment": garment_variant(0), "category": "lower_body"}]})

        def report(name: str, together: list[dict], apart: list[dict], what: str) -> None:
            one = {key: statistics.median(run[key] for run in together) for key in ("wall", "cpu")}
            other = {key: statistics.median(run[key] for run in apart) for key in ("wall", "cpu")}
            print(
                f"{name} ({what}; {args.resolution}, {args.steps} steps, median of {args.repeats}): "
                f"wall {one['wall']:.1f} s vs {other['wall']:.1f} s: {one['wall'] / other['wall']:.3f}x; "
                f"CPU {one['cpu']:.1f} s vs {other['cpu']:.1f} s: {one['cpu'] / other['cpu']:.3f}x"
            )

        def catalog(garment: str) -> None:
            job({"person_index": list(range(args.people)), "garment": garment})

        def singles(garment: str) -> None:
            for index in range(args.people):
                job({"person_index": index, "garment": garment})

        def outfit(top: str, trousers: str) -> None:
            lower = {"garment": trousers, "category": "lower_body"}
            job({"person_index": 0, "garments": [{"garment": top, "category": "upper_body"}, lower]})

        def chained(top: str, trousers: str) -> None:
            lower = job(
                {"person_index": 0, "garment": trousers, "category": "lower_body", "model_type": "dc"}
            )
            job({"person": "data:image/png;base64," + lower["images"][0]["base64"], "garment": top})

        sides = {
            "catalog": (catalog, singles, f"{args.people} people vs {args.people} single jobs", 1),
            "outfit": (outfit, chained, "2 garments vs 2 chained single jobs", 2),
        }
        for name, (together, apart, what, garments) in sides.items():
            if args.skip == name:
                continue
            runs: tuple[list, list] = ([], [])
            for repeat in range(args.repeats):
                pictures = [garment_variant(10 * (repeat + 1) + k) for k in range(garments)]
                for side, work in zip(runs, (together, apart), strict=True):
                    runtime.garment_cache.clear()
                    side.append(measure(lambda work=work, pictures=pictures: work(*pictures)))
                print(
                    f"  {name} run {repeat + 1}: {runs[0][-1]['wall']:.1f} s vs {runs[1][-1]['wall']:.1f} s"
                )
            report(name, *runs, what)


if __name__ == "__main__":
    main()

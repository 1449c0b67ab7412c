"""`python -m ootd.demo`: one try-on from image files, straight through the pipeline.

A debugging aid below the worker: it needs a person photo, a garment photo and a ready mask (the
worker's handler computes masks itself). On a fresh machine, write a tiny random tree first
(`python -m tiny_checkpoints DIR`, from a source checkout: the writers are not in the image); the
output is then noise-like, but every stage runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import PIL.Image

from core.vocabulary import MODEL_FRAME, Size, parse_size
from ootd import layout
from ootd.pipeline import CATEGORIES, OOTDiffusionPipeline


def _size(text: str) -> Size:
    """'1024x768' (HxW, like the worker's resolution) -> Size(768, 1024)."""
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, required=True, help="the published checkpoints root")
    parser.add_argument("--person", type=Path, required=True)
    parser.add_argument("--garment", type=Path, required=True)
    parser.add_argument("--mask", type=Path, required=True, help="'L' image, 255 = area to repaint")
    parser.add_argument("--out", type=Path, required=True, help="output image (sample i>0 gets a suffix)")
    parser.add_argument("--model-type", choices=layout.MODEL_TYPES, default="hd")
    parser.add_argument("--category", choices=CATEGORIES, default="upper_body")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scale", type=float, default=2.0, help="image guidance scale")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=_size, default=MODEL_FRAME, help="HxW, multiples of 64")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    pipe = OOTDiffusionPipeline.from_checkpoints(args.checkpoints, model_type=args.model_type)
    loaded = time.perf_counter()
    width, height = args.size
    images = pipe(
        PIL.Image.open(args.person),
        PIL.Image.open(args.garment),
        PIL.Image.open(args.mask).convert("L"),
        category=args.category,
        num_inference_steps=args.steps,
        image_guidance_scale=args.scale,
        num_images_per_prompt=args.samples,
        generator=args.seed,
        height=height,
        width=width,
    ).images
    done = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        path = args.out if index == 0 else args.out.with_name(f"{args.out.stem}_{index}{args.out.suffix}")
        image.save(path)
        print(f"wrote {path}")
    print(f"load {loaded - start:.1f} s, {args.steps} steps {done - loaded:.1f} s on {pipe.device}")


if __name__ == "__main__":
    main()

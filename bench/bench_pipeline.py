"""Time the try-on pipeline per stage: load, preparation (CLIP, 3 VAE encodes, the garment UNet
pass, first step), each further denoising step, and the VAE decode.

By default it runs on tiny random checkpoints written to a temporary folder, so the numbers show
the pipeline's own overhead and the cost of the [person ; garment] self-attention, which grows
with the square of the token count whatever the model width. Point `--checkpoints` at the
published tree for real numbers (on a GPU). Wall clock and process CPU time are both printed: on a
shared machine the wall clock grows with other load while the CPU time tracks the work done.

    .venv/bin/python -m bench.bench_pipeline [--sizes 192x256,768x1024] [--steps 3] [--samples 1]
        [--scale 2.0] [--model-type hd] [--checkpoints DIR] [--device cpu] [--dtype float16]
        [--compile] [--compile-decoder]

`--compile` then compiles the try-on UNet (`ootd.compile`, what `OOTD_COMPILE` does) and runs
every size twice more: the first compiled call includes the compile time (reported as the
difference to the eager call), the second gives the compiled step time. Turn it on for the GPU
run; on a CPU, inductor takes minutes even for the tiny UNet.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ootd import OOTDiffusionPipeline


def _inputs(width: int, height: int) -> tuple[PIL.Image.Image, PIL.Image.Image, PIL.Image.Image]:
    rng = np.random.default_rng(0)
    person = PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    garment = PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    mask = np.zeros((height, width), np.uint8)
    mask[height // 5 : 4 * height // 5, width // 5 : 4 * width // 5] = 255
    return person, garment, PIL.Image.fromarray(mask, "L")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(pipe: OOTDiffusionPipeline, width: int, height: int, args: argparse.Namespace) -> dict:
    """One pipeline call with a timestamp at every step end."""
    marks: list[tuple[float, float]] = []

    def on_step_end(_pipe, _index, _timestep, kwargs):
        _sync(pipe.device)
        marks.append((time.perf_counter(), time.process_time()))
        return kwargs

    _sync(pipe.device)
    start = (time.perf_counter(), time.process_time())
    pipe(
        *_inputs(width, height),
        num_inference_steps=args.steps,
        image_guidance_scale=args.scale,
        num_images_per_prompt=args.samples,
        generator=0,
        height=height,
        width=width,
        callback_on_step_end=on_step_end,
    )
    _sync(pipe.device)
    end = (time.perf_counter(), time.process_time())
    steps = [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(marks)]
    return {
        "size": f"{width}x{height}",
        "total_s": end[0] - start[0],
        "first_step_with_preparation_s": marks[0][0] - start[0],
        "step_s": statistics.median(s[0] for s in steps) if steps else None,
        "step_cpu_s": statistics.median(s[1] for s in steps) if steps else None,
        "decode_s": end[0] - marks[-1][0],
    }


def compare_compiled(pipe: OOTDiffusionPipeline, eager: list[dict], args: argparse.Namespace) -> list[dict]:
    """Compile, then per size: the compile time (first compiled call minus the eager call) and
    the compiled step time vs the eager one."""
    from ootd.compile import compile_pipeline

    compile_pipeline(pipe, decoder=args.compile_decoder)
    rows = []
    for row in eager:
        width, height = (int(v) for v in row["size"].split("x"))
        first = time_call(pipe, width, height, args)
        steady = time_call(pipe, width, height, args)
        compiled = {
            **steady,
            "size": f"{row['size']} compiled",
            "compile_s": first["total_s"] - row["total_s"],
            "eager_over_compiled_step": row["step_s"] / steady["step_s"] if steady["step_s"] else None,
            "decode_eager_over_compiled": row["decode_s"] / steady["decode_s"],
        }
        print(
            f"{compiled['size']}: compile {compiled['compile_s']:.1f} s, "
            f"{steady['step_s'] or 0:.3f} s/step, eager/compiled step "
            f"{compiled['eager_over_compiled_step'] or 0:.2f}x, "
            f"decode {compiled['decode_eager_over_compiled']:.2f}x",
            flush=True,
        )
        rows.append(compiled)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="192x256,768x1024", help="comma-separated WxH")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--model-type", default="hd")
    parser.add_argument("--checkpoints", type=Path, help="published tree (default: tiny, in a temp dir)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default=None)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--compile", action="store_true", help="also time the compiled try-on UNet")
    parser.add_argument("--compile-decoder", action="store_true", help="with --compile: the VAE decoder too")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = args.checkpoints
        if root is None:
            from tiny_checkpoints.diffusion import write_tiny_ootd_checkpoints

            root = Path(scratch)
            write_tiny_ootd_checkpoints(root)
        dtype = getattr(torch, args.dtype) if args.dtype else None
        start = time.perf_counter()
        pipe = OOTDiffusionPipeline.from_checkpoints(root, args.model_type, device=args.device, dtype=dtype)
        load_s = time.perf_counter() - start
        pipe.set_progress_bar_config(disable=True)
        results = []
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.lower().split("x"))
            results.append(time_call(pipe, width, height, args))
            row = results[-1]
            step = f"{row['step_s']:.3f} s/step (cpu {row['step_cpu_s']:.2f} s)" if row["step_s"] else "-"
            print(
                f"{row['size']}: total {row['total_s']:.2f} s, prep + step 1 "
                f"{row['first_step_with_preparation_s']:.2f} s, {step}, decode {row['decode_s']:.2f} s",
                flush=True,
            )
        if args.compile:
            results += compare_compiled(pipe, results, args)
    report = {
        "device": str(pipe.device),
        "dtype": str(pipe.unet_vton.dtype),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "load_s": load_s,
        "steps": args.steps,
        "samples": args.samples,
        "scale": args.scale,
        "results": results,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

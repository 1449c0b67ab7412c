"""Time the OpenPose body step per 384x512 person image with the real-size network.

Prints wall-clock and process CPU time (summed over torch's threads): on a shared machine the
wall clock grows with other load while the CPU time stays close to the work done.

Random weights at the published widths (52.3 M parameters) cost the same compute as the real
`body_pose_model.pth`, which cannot be downloaded here. Decoding time depends on how many peaks the
maps hold, so it is reported apart: random weights give a random number of them.

    .venv/bin/python -m bench.bench_preprocess_pose [--runs 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from PIL import Image

from preprocess.errors import NoPersonDetectedError
from preprocess.pose import BodyPoseEstimator, BodyPoseNet
from preprocess.pose_decode import decode_body_pose
from tiny_checkpoints.pose import published_weight_shapes, random_body_pose_state_dict

T = TypeVar("T")
PERSON = Path(__file__).resolve().parent.parent / "assets" / "models" / "0_astronaut.png"


def _timed(step: Callable[..., T], *args: object) -> tuple[T, float]:
    """`step(*args)` and its wall-clock seconds."""
    start = time.perf_counter()
    result = step(*args)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs after one warm-up run")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = parser.parse_args()

    net = BodyPoseNet.from_state_dict(random_body_pose_state_dict(published_weight_shapes(), seed=0))
    estimator = BodyPoseEstimator(net, torch.device(args.device))
    image = Image.open(PERSON).convert("RGB").resize((384, 512))

    totals, cpu_totals, maps_times, decode_times = [], [], [], []
    for run in range(args.runs + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        (heatmaps, pafs), maps_time = _timed(estimator.maps, image)
        decoding, decode_time = _timed(decode_body_pose, heatmaps, pafs)
        total, cpu_total = time.perf_counter() - start, time.process_time() - cpu_start
        if run:  # run 0 warms up kernels and allocators
            totals.append(total)
            cpu_totals.append(cpu_total)
            maps_times.append(maps_time)
            decode_times.append(decode_time)
    try:
        outcome = f"{len(estimator(image))} keypoints"
    except NoPersonDetectedError:
        outcome = "no person (random weights)"

    print(f"device: {args.device}, torch threads: {torch.get_num_threads()}, runs: {args.runs}")
    print(f"peaks found: {len(decoding.candidates)}, people: {len(decoding.people)} -> {outcome}")
    print(f"network + map resizing: {statistics.median(maps_times):.3f} s (median)")
    print(f"decoding:               {statistics.median(decode_times):.3f} s (median)")
    print(f"total per image:        {statistics.median(totals):.3f} s (median wall clock)")
    print(f"CPU time per image:     {statistics.median(cpu_totals):.3f} s (median, all threads)")


if __name__ == "__main__":
    main()

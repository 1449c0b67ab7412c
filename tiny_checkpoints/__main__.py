"""`python -m tiny_checkpoints OUT_DIR [--seed N] [--hub-cache DIR]`: write the tiny checkpoint tree."""

import argparse
import time
from pathlib import Path

from tiny_checkpoints import write_tiny_checkpoints
from tiny_checkpoints.hub_cache import write_hub_cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", help="folder to write (the published checkpoints/ layout)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument(
        "--hub-cache",
        type=Path,
        help="also lay the tree out as RunPod's model cache (a Hugging Face hub cache) in this folder",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    root = write_tiny_checkpoints(args.out_dir, seed=args.seed)
    print(f"wrote tiny checkpoints to {root} in {time.perf_counter() - start:.1f} s")
    if args.hub_cache is not None:
        print(f"laid them out as a hub cache in {write_hub_cache(args.hub_cache, root)}")


if __name__ == "__main__":
    main()

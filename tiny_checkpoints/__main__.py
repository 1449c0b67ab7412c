"""`python -m tiny_checkpoints OUT_DIR [--seed N]`: write the tiny checkpoint tree."""

import argparse
import time

from tiny_checkpoints import write_tiny_checkpoints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", help="folder to write (the published checkpoints/ layout)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    start = time.perf_counter()
    root = write_tiny_checkpoints(args.out_dir, seed=args.seed)
    print(f"wrote tiny checkpoints to {root} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

"""How fast the ``shapes`` data set renders (training/shapes.py), in images per second.

    python -m benchmarks.shapes_speed                  # 5,000 images, best of 3, all threads
    OMP_NUM_THREADS=1 python -m benchmarks.shapes_speed --threads 1

``vae-train --data shapes`` renders its 45,000 images once at start-up, so this is the
delay before the first epoch. A figure, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from vae_service.training import shapes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.shapes_speed", description=__doc__)
    p.add_argument("--n", type=int, default=5000, help="images per run")
    p.add_argument("--repeats", type=int, default=3, help="runs; the fastest is reported")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    best = float("inf")
    for seed in range(args.repeats):
        began = time.perf_counter()
        shapes.generate(args.n, seed)
        best = min(best, time.perf_counter() - began)
    # The fastest run is the least disturbed by whatever else shares the machine.
    print(
        f"shapes: {args.n / best:,.0f} images/s ({args.n} images of 3x64x64 in {best:.2f}s, "
        f"best of {args.repeats}, {torch.get_num_threads()} torch threads)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

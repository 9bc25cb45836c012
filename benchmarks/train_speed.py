"""Training steps per second of ``vae-train``'s own step, NCHW against ``--channels-last``.

    OMP_NUM_THREADS=2 python -m benchmarks.train_speed                # the default's shape
    python -m benchmarks.train_speed --widths 48,96 --steps 20

Each round times ``--steps`` optimizer steps (after 5 untimed ones) of the same Trainer
that ``vae-train`` runs, on random images, once per memory layout; the layouts alternate
over ``--rounds`` rounds and the fastest round of each is reported, the one least
disturbed by whatever else shares the machine. A figure, not a test.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from vae_service.model.vae import VAE
from vae_service.training import train as model_train
from vae_service.training.distributed import DistContext

WARMUP_STEPS = 5


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_speed", description=__doc__)
    p.add_argument("--widths", default="32,64")
    p.add_argument("--hidden-dim", type=int, default=512)
    p.add_argument("--head-width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=30, help="timed steps a round")
    p.add_argument("--rounds", type=int, default=3)
    return p


def images_per_s(options: list[str], steps: int) -> float:
    """Training images per second of one Trainer built from ``vae-train`` options."""
    parser = model_train.build_parser()
    args = parser.parse_args(options)
    model_train.positive_args(args, parser)
    torch.manual_seed(0)
    model = VAE(model_train.model_config(args))
    trainer = model_train.Trainer(args, model, torch.device("cpu"), DistContext(), 1)
    images = torch.rand(args.batch_size, 1, 28, 28)
    noise = torch.Generator().manual_seed(0)
    for step in range(WARMUP_STEPS):
        trainer.step(images, step, noise)
    began = time.perf_counter()
    for step in range(steps):
        trainer.step(images, WARMUP_STEPS + step, noise)
    return steps * args.batch_size / (time.perf_counter() - began)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shape = [
        f"--widths={args.widths}",
        f"--hidden-dim={args.hidden_dim}",
        f"--head-width={args.head_width}",
        f"--batch-size={args.batch_size}",
    ]
    best = {"NCHW": 0.0, "NHWC": 0.0}
    for _ in range(args.rounds):
        best["NCHW"] = max(best["NCHW"], images_per_s(shape, args.steps))
        best["NHWC"] = max(best["NHWC"], images_per_s([*shape, "--channels-last"], args.steps))
    print(
        f"training, {' '.join(shape)}, {torch.get_num_threads()} threads: "
        f"NCHW {best['NCHW']:,.0f} images/s, --channels-last {best['NHWC']:,.0f} images/s "
        f"({best['NHWC'] / best['NCHW']:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

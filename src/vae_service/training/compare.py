"""Models side by side:
``python -m vae_service.training.compare A.safetensors B.safetensors --out FIG.png``.

The figure the README shows for the default and the sharp decoder: the same test images,
then each model's reconstruction of them, then each model's samples from the same seed
(from its fitted prior where it has one). Models that share an encoder and a prior, as
``vae-finetune`` output does with its source, therefore decode the very same latents.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor

from vae_service.model.prior import FittedPrior, sample_latents
from vae_service.model.weights import Checkpoint, load_weights
from vae_service.training.cli import one_line_errors
from vae_service.training.data import load_dataset
from vae_service.training.report import save_image_grid


@torch.inference_mode()
def comparison_rows(ckpts: list[Checkpoint], images: Tensor, seed: int) -> Tensor:
    """Originals, one reconstruction row per model, one sample row per model."""
    recons = [c.model.decode(c.model.encode(images)[0]) for c in ckpts]
    samples = []
    for c in ckpts:
        gen = torch.Generator().manual_seed(seed)
        z = sample_latents(c.model, FittedPrior.from_checkpoint(c), len(images), 1.0, gen)
        samples.append(c.model.decode(z))
    return torch.cat([images, *recons, *samples])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vae_service.training.compare", description=__doc__)
    p.add_argument("weights", type=Path, nargs="+", help="two or more weights files")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--data", default="fashion-mnist", help="whose test images to reconstruct")
    p.add_argument("--data-dir", help="directory of the IDX files (default: the Debian package's)")
    p.add_argument("--n", type=int, default=10, help="images per row")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples")
    p.add_argument("--zoom", type=int, default=3, help="pixel repeat, for a readable figure")
    return p


@one_line_errors("vae_service.training.compare")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ckpts = [load_weights(w) for w in args.weights]
    cfg = ckpts[0].config
    if any(c.config.image_shape != cfg.image_shape for c in ckpts):
        raise ValueError("the models must take images of one shape")
    test = load_dataset(
        args.data, args.data_dir, cfg.image_size, cfg.channels, with_train=False
    ).test.images[: args.n]
    rows = comparison_rows(ckpts, test, args.seed)
    rows = torch.nn.functional.interpolate(rows, scale_factor=args.zoom, mode="nearest")
    save_image_grid(args.out, rows, nrow=len(test))
    print(f"wrote {args.out}: test images, reconstructions, then samples, one row per model")
    return 0


if __name__ == "__main__":
    sys.exit(main())

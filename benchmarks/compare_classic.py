"""Train the classic pytorch/examples VAE (MLP 784-400-20, Bernoulli) and our convolutional
VAE on the same data, for the same epochs, with the same training loop (training/train.py),
then print their test figures side by side.

Run from the repository root:  python -m benchmarks.compare_classic [--epochs 8] [...]
Every vae-train option applies; the conv VAE's shape comes from them (vae-train's
defaults), the classic one keeps z = 20 and 400 hidden units. Training checkpoints go
in --out's folder (conv.ckpt.safetensors, classic.ckpt.safetensors), so --resume works.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from vae_service.model.classic import CLASSIC_HIDDEN, CLASSIC_LATENT, ClassicVAE
from vae_service.model.config import VAEConfig
from vae_service.model.device import resolve_device
from vae_service.model.vae import VAE
from vae_service.training import distributed as D
from vae_service.training import train
from vae_service.training.cli import one_line_errors
from vae_service.training.data import Dataset, load_dataset
from vae_service.training.metrics import evaluate_elbo, reconstruction_error


def build_parser() -> argparse.ArgumentParser:
    parser = train.build_parser()
    parser.prog = "compare_classic"
    parser.description = __doc__
    parser.set_defaults(epochs=8, out=Path("runs/compare/vae.safetensors"))
    return parser


def classic_config(args: argparse.Namespace) -> VAEConfig:
    return VAEConfig(
        image_size=args.image_size,
        channels=args.channels,
        latent_dim=CLASSIC_LATENT,
        hidden_dim=CLASSIC_HIDDEN,
        likelihood=args.likelihood,
    )


def train_and_test(
    args: argparse.Namespace, model: VAE, data: Dataset, out: Path, device: torch.device
) -> dict[str, float]:
    """Train ``model`` with vae-train's loop; return its test figures."""
    model.to(device)
    steps = len(
        train.epoch_batches(len(data.train), args.batch_size, args.seed, 0, D.DistContext())
    )
    history = train.fit(train.Trainer(args, model, device, D.DistContext(), steps), data, out)
    test = data.test.images
    return {
        "params": sum(p.numel() for p in model.parameters()),
        **evaluate_elbo(model, test, seed=args.seed, device=device),
        **reconstruction_error(model, test, device=device),
        # Training plus the per-epoch test pass, as vae-train's summary lines time it.
        "s_per_epoch": sum(row["seconds"] for row in history) / len(history),
    }


def table(rows: dict[str, dict[str, float]]) -> str:
    head = (
        f"{'model':<34}{'params':>10}{'-ELBO':>9}{'recon':>9}{'KL':>7}{'PSNR dB':>9}{'s/epoch':>9}"
    )
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        lines.append(
            f"{name:<34}{r['params']:>10,}{r['neg_elbo']:>9.2f}{r['recon']:>9.2f}"
            f"{r['kl']:>7.2f}{r['psnr']:>9.2f}{r['s_per_epoch']:>9.1f}"
        )
    return "\n".join(lines)


def candidates(args: argparse.Namespace) -> list[tuple[str, type[VAE], VAEConfig, str]]:
    """(table name, model class, config, checkpoint stem) of each model compared."""
    conv = f"conv VAE z={args.latent_dim} {args.widths} h={args.hidden_dim}"
    classic = f"classic MLP {CLASSIC_HIDDEN}-{CLASSIC_LATENT}"
    return [
        (classic, ClassicVAE, classic_config(args), "classic"),
        (conv, VAE, train.model_config(args), "conv"),
    ]


def compare(args: argparse.Namespace) -> str:
    device = resolve_device(args.device)
    data = load_dataset(args.data, args.data_dir, args.image_size, args.channels)
    train_split, test_split = data.train.subset(args.limit_train), data.test.subset(args.limit_test)
    data = Dataset(data.name, train_split, test_split)
    rows = {}
    for name, cls, cfg, stem in candidates(args):
        print(f"== {name}", flush=True)
        torch.manual_seed(args.seed)  # both start from seeded initial weights
        out = args.out.with_name(f"{stem}.safetensors")
        rows[name] = train_and_test(args, cls(cfg), data, out, device)
    return (
        f"{data.name}: {len(data.train)} train / {len(data.test)} test images, "
        f"{args.epochs} epochs, nats per image\n{table(rows)}"
    )


@one_line_errors("compare_classic")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    train.positive_args(args, parser)
    print(compare(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

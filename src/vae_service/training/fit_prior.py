"""``vae-fit-prior``: fit a Gaussian-mixture latent prior to a trained VAE's training set and
store it in the weights file (see model/prior.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from vae_service.model.device import resolve_device
from vae_service.model.prior import COVARIANCE_TYPES, FittedPrior, fit_to_images
from vae_service.model.prior_files import attach_prior
from vae_service.model.vae import VAE
from vae_service.model.weights import STORAGE_DTYPES, load_weights
from vae_service.training.cli import note_dropped_calibration, one_line_errors
from vae_service.training.data import load_dataset


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vae-fit-prior",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("weights", type=Path, help="weights file (.safetensors) to add the prior to")
    p.add_argument("--data", default="fashion-mnist", help="the data set the VAE was trained on")
    p.add_argument("--data-dir", help="directory of the IDX files (default: the Debian package's)")
    p.add_argument("--limit-train", type=int, help="fit on the first N training images only")
    p.add_argument("--components", type=int, default=10, help="mixture components")
    p.add_argument("--covariance", default="full", choices=COVARIANCE_TYPES)
    p.add_argument("--seed", type=int, default=0, help="seed of the k-means initialisation")
    p.add_argument("--device", default="auto", help="device that encodes: auto, cpu, cuda[:N]")
    p.add_argument("--out", type=Path, help="write here instead of replacing WEIGHTS in place")
    p.add_argument(
        "--storage", choices=tuple(STORAGE_DTYPES), help="rewrite the model tensors in this dtype"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def fit_file(args: argparse.Namespace) -> FittedPrior:
    device = resolve_device(args.device)
    ckpt = load_weights(args.weights, device)
    cfg = ckpt.config
    train = load_dataset(args.data, args.data_dir, cfg.image_size, cfg.channels).train
    images = train.subset(args.limit_train).images
    prior = fit_to_images(ckpt.model, images, args.components, args.covariance, args.seed, device)
    attach_prior(args.weights, prior, args.out, args.storage)
    note_dropped_calibration("vae-fit-prior", ckpt)
    return prior


def fit_summary(prior: FittedPrior) -> str:
    return (
        f"fitted a {prior.components}-component {prior.covariance_type}-covariance prior "
        f"to {prior.n_fit} posterior means: mean log-likelihood {prior.train_loglik:.3f} nats"
    )


def prior_after_training(
    model: VAE,
    train_images: Tensor,
    components: int,
    covariance: str,
    seed: int,
    device: torch.device,
) -> FittedPrior | None:
    """What ``vae-train --prior-components N`` stores with fresh weights: the fit this command
    makes, or None for N = 0."""
    if components == 0:
        return None
    prior = fit_to_images(model, train_images, components, covariance, seed, device)
    print(fit_summary(prior), flush=True)
    return prior


@one_line_errors("vae-fit-prior")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.components < 1 or (args.limit_train is not None and args.limit_train < 1):
        parser.error("--components and --limit-train must be at least 1")
    began = time.perf_counter()
    prior = fit_file(args)
    summary = prior.describe() | {
        "out": str(args.out or args.weights),
        "seconds": round(time.perf_counter() - began, 1),
    }
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(f"{fit_summary(prior)}; wrote {summary['out']} in {summary['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

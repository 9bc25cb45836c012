"""Evaluation CLI: ``vae-eval WEIGHTS`` or ``python -m vae_service.training.evaluate WEIGHTS``.

Figures on the test split, in nats per image: −ELBO with its reconstruction and KL parts
(one posterior draw per image), the IWAE bound on −log p(x) with k importance samples
(Burda et al. 2016), MSE and PSNR of the posterior-mean reconstruction (per image, then
averaged), and the number of active latent units (Cov_x(E_q[z_u]) > 0.01). Both bounds are
under the model's prior: a learned one when the file carries it (``vae-tune-prior``),
N(0, I) otherwise.

With ``--quality``, also the sample quality of the standard and the fitted prior side by
side (training/quality.py): Fréchet distance of the Fashion-MNIST classifier's penultimate
features of ``--quality-samples`` samples vs the test split, class coverage in bits, and
sampling speed; ``--grids DIR`` saves an 8 x 8 grid from each prior there.

On data whose generating factors are known (``--data shapes``), also the mutual
information gap (MIG, Chen et al. 2018) of the posterior means, discretised into
``--mig-bins`` equal-width bins per dimension as in Locatello et al. 2019, the factor
each active latent dimension tells most about, and with ``--traversals DIR`` a
traversals.png there: one labelled row per active dimension (training/disentangle.py).

With ``--ood``, also the anomaly score against out-of-distribution sets
(training/ood_eval.py): AUROC, AUPR and FPR at 95% TPR of the score and of the raw −ELBO
per set, and the share of in-distribution test images (the half ``vae-calibrate`` left
out) flagged at a nominal 1%; ``--ood-limit N`` caps every set at N images.

Output: readable text on stdout (``--format text``, the default) or the same figures as
one JSON object (``--format json``); ``--json PATH`` also writes the JSON to PATH.
Exit status: 0 on success, 2 on bad arguments, an unusable weights file or bad data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vae_service.model.anomaly import DEFAULT_IWAE_SAMPLES
from vae_service.model.device import resolve_device
from vae_service.model.prior import FittedPrior
from vae_service.model.weights import Checkpoint, load_weights
from vae_service.training.classifier import DEFAULT_CLASSIFIER, load_classifier
from vae_service.training.cli import one_line_errors
from vae_service.training.data import Split, load_dataset
from vae_service.training.disentangle import (
    DEFAULT_BINS,
    evaluate_disentanglement,
    factor_names,
    format_disentanglement,
)
from vae_service.training.metrics import active_units, evaluate_elbo, iwae_nll, reconstruction_error
from vae_service.training.ood_eval import evaluate_ood, format_ood
from vae_service.training.quality import (
    compare_priors,
    format_quality,
    save_prior_grids,
    sharpness_ratios,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vae-eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("weights", type=Path, help="a .safetensors weights file")
    p.add_argument(
        "--data",
        default="fashion-mnist",
        help="fashion-mnist, mnist, shapes, or a folder of images",
    )
    p.add_argument("--data-dir", help="directory of the IDX files (default: the Debian package's)")
    p.add_argument("--limit-test", type=int, help="use only the first N test images")
    p.add_argument("--iwae-k", type=int, default=100, help="importance samples per image")
    p.add_argument("--batch-size", type=int, default=500, help="images per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed of every posterior draw")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--format", choices=("text", "json"), default="text", help="stdout format")
    p.add_argument("--json", type=Path, dest="json_path", help="also write the JSON here")
    p.add_argument("--quality", action="store_true", help="also score samples of each prior")
    p.add_argument("--quality-samples", type=int, default=10_000, help="samples per prior")
    p.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER, help="its features")
    p.add_argument("--grids", type=Path, metavar="DIR", help="save samples_PRIOR.png grids here")
    p.add_argument("--mig-bins", type=int, default=DEFAULT_BINS, help="bins per latent for MIG")
    p.add_argument(
        "--traversals", type=Path, metavar="DIR", help="save traversals.png here (shapes only)"
    )
    p.add_argument("--ood", action="store_true", help="also score out-of-distribution sets")
    p.add_argument("--ood-limit", type=int, help="at most N images per OOD set and in-dist")
    return p


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    for name in ("limit_test", "iwae_k", "batch_size", "quality_samples", "ood_limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.mig_bins < 2:
        parser.error(f"--mig-bins must be at least 2, got {args.mig_bins}")


def evaluate_checkpoint(
    ckpt: Checkpoint,
    images: Tensor,
    iwae_k: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """Every figure for ``ckpt`` on ``images``, as one flat dict."""
    model = ckpt.model.to(device)
    began = time.perf_counter()
    prior = FittedPrior.from_checkpoint(ckpt)
    # A learned prior is the model's prior; one fitted to posterior means only samples.
    log_prior = prior.to(device).log_prob if prior and prior.learned else None
    elbo = evaluate_elbo(model, images, batch_size, seed, device, log_prior)
    return {
        "weights": ckpt.path,
        "sha256": ckpt.sha256,
        "n_images": len(images),
        **elbo,
        "iwae_nll": iwae_nll(model, images, iwae_k, batch_size, seed, device, log_prior),
        "iwae_k": iwae_k,
        "bound_prior": "learned" if log_prior else "standard",
        **(recon := reconstruction_error(model, images, batch_size, device)),
        "sharpness": sharpness_ratios(
            ckpt, images, recon["recon_sharpness"], seed=seed, device=device
        ),
        "active_units": active_units(model, images, batch_size, device),
        "latent_dim": ckpt.config.latent_dim,
        "seed": seed,
        "device": str(device),
        "seconds": round(time.perf_counter() - began, 2),
    }


def format_text(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"weights       {r['weights']}",
            f"sha256        {r['sha256']}",
            f"data          {r['data']} test split, {r['n_images']} images ({r['device']})",
            f"-ELBO         {r['neg_elbo']:.2f} nats/image "
            f"(reconstruction {r['recon']:.2f}, KL {r['kl']:.2f}; {r['bound_prior']} prior)",
            f"-log p(x)     <= {r['iwae_nll']:.2f} nats/image (IWAE bound, k={r['iwae_k']})",
            f"MSE           {r['mse']:.5f} (per image, averaged)",
            f"PSNR          {r['psnr']:.2f} dB (per image, averaged)",
            f"sharpness     reconstructions {r['sharpness']['reconstructions']:.3f}, samples "
            f"{r['sharpness']['samples']:.3f} ({r['sharpness']['samples_prior']} prior) of the "
            "test images' mean gradient",
            f"active units  {r['active_units']} of {r['latent_dim']} (Cov_x(E_q[z_u]) > 0.01)",
            f"took          {r['seconds']:.1f}s",
            *([format_quality(r["quality"])] if "quality" in r else []),
            *([format_disentanglement(r["disentanglement"])] if "disentanglement" in r else []),
            *([format_ood(r["ood"])] if "ood" in r else []),
        ]
    )


def score_disentanglement(
    args: argparse.Namespace, ckpt: Checkpoint, data_name: str, split: Split, factors: Tensor,
    device: torch.device,
) -> dict[str, Any]:  # fmt: skip
    names = factor_names(data_name, factors.shape[1])
    return evaluate_disentanglement(
        ckpt.model, split.images, factors, names, args.mig_bins, args.batch_size, device,
        args.traversals,
    )  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    ckpt = load_weights(args.weights, device)
    cfg = ckpt.config
    data = load_dataset(args.data, args.data_dir, cfg.image_size, cfg.channels, with_train=False)
    split = data.test.subset(args.limit_test)
    if args.traversals and split.factors is None:
        # Checked before the long evaluation, not after it.
        raise ValueError(f"--traversals needs data with known factors (shapes), not {data.name}")
    images = split.images
    result = {
        "data": data.name,
        **evaluate_checkpoint(ckpt, images, args.iwae_k, args.batch_size, args.seed, device),
    }
    if args.quality:
        classifier = load_classifier(args.classifier, device)[0]
        result["quality"] = compare_priors(
            ckpt, classifier, images, args.quality_samples, args.seed, device
        )
    if args.grids:
        save_prior_grids(ckpt, args.grids, device=device)
    if split.factors is not None:
        result["disentanglement"] = score_disentanglement(
            args, ckpt, data.name, split, split.factors, device
        )
    if args.ood:
        result["ood"] = evaluate_ood(
            ckpt, data.test.images, args.ood_limit, DEFAULT_IWAE_SAMPLES, args.batch_size,
            args.seed, device,
        )  # fmt: skip
    if args.json_path:
        args.json_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


@one_line_errors("vae-eval")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(args, parser)
    result = run(args)
    print(json.dumps(result, indent=2) if args.format == "json" else format_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

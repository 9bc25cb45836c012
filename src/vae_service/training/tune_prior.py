"""``vae-tune-prior``: fine-tune a trained VAE jointly with a learned Gaussian-mixture prior.

Under N(0, I) the ELBO pays for the prior not matching the aggregate posterior
q(z) = E_x[q(z|x)]: the average KL(q(z|x) ‖ p(z)) is the mutual information of x and z plus
KL(q(z) ‖ p(z)) (Hoffman & Johnson 2016, "ELBO surgery"). A prior learned with the model
removes part of the second term, as the VampPrior does (Tomczak & Welling 2018). Here it is a
K-component full-covariance mixture, started by EM on one posterior draw per training image
(the best mixture for the encoder as it is), then trained with the encoder and decoder on
the ELBO for a few epochs at a small, cosine-decayed learning rate. Its KL term has no
closed form and is estimated at the posterior draw (model/loss.py::kl_to_prior).

The written file's prior has ``fit: learned``: it is the model's prior, so ``vae-eval``
bounds with it, and the service samples from it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Categorical

from vae_service.model.device import resolve_device
from vae_service.model.loss import kl_to_prior, reconstruction_nll
from vae_service.model.prior import FittedPrior, fit_prior, mixture
from vae_service.model.prior_files import rewrite_with_prior
from vae_service.model.vae import VAE
from vae_service.model.weights import STORAGE_DTYPES, load_weights
from vae_service.training.cli import note_dropped_calibration, one_line_errors
from vae_service.training.data import load_dataset
from vae_service.training.metrics import evaluate_elbo


class LearnedPrior(nn.Module):
    """A mixture's parameters, unconstrained for gradient descent: logits for the weights,
    and each Cholesky factor as a strictly lower part plus a log-diagonal, so that every
    step leaves a valid mixture."""

    def __init__(self, start: FittedPrior) -> None:
        super().__init__()
        self.logits = nn.Parameter(start.weights.log())
        self.means = nn.Parameter(start.means.clone())
        self.lower = nn.Parameter(torch.tril(start.scale_tril, diagonal=-1))
        self.log_diag = nn.Parameter(torch.diagonal(start.scale_tril, dim1=-2, dim2=-1).log())

    def scale_tril(self) -> Tensor:
        return torch.tril(self.lower, diagonal=-1) + torch.diag_embed(self.log_diag.exp())

    def log_prob(self, z: Tensor) -> Tensor:
        return mixture(Categorical(logits=self.logits), self.means, self.scale_tril()).log_prob(z)

    @torch.no_grad()
    def fitted(self, train_loglik: float, n_fit: int) -> FittedPrior:
        weights, means, tril = (
            t.detach().float().cpu()
            for t in (torch.softmax(self.logits, dim=0), self.means, self.scale_tril())
        )
        return FittedPrior(weights, means, tril, "full", train_loglik, n_fit, fit="learned")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vae-tune-prior",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("weights", type=Path, help="a trained VAE's weights (.safetensors)")
    p.add_argument("--out", type=Path, required=True, help="where to write the tuned model")
    p.add_argument("--data", default="fashion-mnist", help="the data set the VAE was trained on")
    p.add_argument("--data-dir", help="directory of the IDX files (default: the Debian package's)")
    p.add_argument("--limit-train", type=int, help="use only the first N training images")
    p.add_argument("--components", type=int, default=30, help="mixture components")
    p.add_argument("--epochs", type=int, default=5, help="epochs of joint training")
    p.add_argument("--lr", type=float, default=3e-4, help="Adam's learning rate, cosine-decayed")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="seed of the draws, EM and batch order")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--storage", choices=tuple(STORAGE_DTYPES), help="dtype of the model tensors")
    return p


@torch.no_grad()
def posterior_draws(model: VAE, images: Tensor, seed: int, device: torch.device) -> Tensor:
    """One z ~ q(z|x) per image, on the CPU."""
    model.eval()
    gen = torch.Generator(device).manual_seed(seed)
    return torch.cat(
        [model.reparameterize(*model.encode(x.to(device)), gen).cpu() for x in images.split(1000)]
    )


def tune_epoch(
    model: VAE, prior: LearnedPrior, batches: Tensor, images: Tensor, step: Callable[[Tensor], None]
) -> float:
    """One pass over ``batches`` (rows of image indices); the mean −ELBO it trained on."""
    model.train()
    device = next(model.parameters()).device
    total = 0.0
    for index in batches:
        x = images[index].to(device)
        mean, logvar = model.encode(x)
        z = model.reparameterize(mean, logvar)
        recon = reconstruction_nll(model.decode_logits(z), x, model.cfg)
        loss = (recon + kl_to_prior(z, mean, logvar, prior.log_prob)).mean()
        step(loss)
        total += float(loss.detach())
    return total / len(batches)


def tune(model: VAE, prior: LearnedPrior, images: Tensor, args: argparse.Namespace) -> list[float]:
    """Joint training; the mean train −ELBO of each epoch."""
    per_epoch = len(images) // args.batch_size
    if per_epoch == 0:
        raise ValueError(
            f"{len(images)} training images do not fill one batch of {args.batch_size}"
        )
    optimizer = torch.optim.Adam([*model.parameters(), *prior.parameters()], lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs * per_epoch)

    def step(loss: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()

    order = torch.Generator().manual_seed(args.seed)
    history = []
    for epoch in range(args.epochs):
        batches = torch.randperm(len(images), generator=order)[: per_epoch * args.batch_size]
        history.append(tune_epoch(model, prior, batches.view(per_epoch, -1), images, step))
        print(f"epoch {epoch + 1}/{args.epochs}: train -ELBO {history[-1]:.2f}", flush=True)
    return history


def run(args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    ckpt = load_weights(args.weights, device)
    model, cfg = ckpt.model, ckpt.config
    data = load_dataset(args.data, args.data_dir, cfg.image_size, cfg.channels)
    train = data.train.subset(args.limit_train).images
    start = fit_prior(
        posterior_draws(model, train, args.seed, device), args.components, "full", args.seed
    )
    learned = LearnedPrior(start).to(device)
    history = tune(model, learned, train, args)
    with torch.no_grad():
        draws = posterior_draws(model, train, args.seed, device).to(device)
        prior = learned.fitted(float(learned.log_prob(draws).mean()), len(train))
    test = evaluate_elbo(
        model, data.test.images, device=device, log_prior=prior.to(device).log_prob
    )
    summary = {
        "source_sha256": ckpt.sha256,
        "components": args.components,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "train_neg_elbo": history,
        "final_test": test,
        "seconds": round(time.perf_counter() - began, 1),
    }
    rewrite_with_prior(
        ckpt, model.cpu().eval(), prior, args.out, args.storage, {"prior_tuning": summary}
    )
    note_dropped_calibration("vae-tune-prior", ckpt)
    return summary


@one_line_errors("vae-tune-prior")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("components", "epochs", "batch_size", "limit_train"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if not args.lr > 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    summary = run(args)
    test = summary["final_test"]
    print(
        f"test -ELBO {test['neg_elbo']:.2f} nats (reconstruction {test['recon']:.2f}, KL "
        f"{test['kl']:.2f}) under the learned prior; wrote {args.out} in {summary['seconds']}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

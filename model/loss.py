"""The negative ELBO and its parts, in nats per image."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from model.config import VAEConfig


@dataclass(frozen=True)
class ELBOTerms:
    """Per-image means over a batch: loss is what is minimized (β and warm-up applied)."""

    loss: Tensor
    neg_elbo: Tensor
    recon: Tensor
    kl: Tensor


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per row, in closed form:
    -1/2 * sum(1 + logvar - mean^2 - exp(logvar)) (Kingma & Welling 2014, Appendix B)."""
    return -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp(), dim=1)


def reconstruction_nll(logits: Tensor, x: Tensor, cfg: VAEConfig) -> Tensor:
    """-log p(x|z) per image, summed over pixels."""
    if cfg.likelihood == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    else:
        # Fixed-variance Gaussian on the sigmoid output: 1/2((x-mu)/s)^2 + log(s) + 1/2 log(2π).
        std = cfg.gaussian_std
        sq = (x - torch.sigmoid(logits)).pow(2) / (2 * std**2)
        nll = sq + math.log(std) + 0.5 * math.log(2 * math.pi)
    return nll.flatten(1).sum(dim=1)


def kl_weight(step: int, beta: float, warmup_steps: int) -> float:
    """β scaled by a linear warm-up from 0 over ``warmup_steps`` optimizer steps
    (Bowman et al. 2016; Sønderby et al. 2016), which keeps the KL term from
    collapsing the posterior to the prior early in training."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)


def elbo_terms(
    logits: Tensor, x: Tensor, mean: Tensor, logvar: Tensor, cfg: VAEConfig, kl_scale: float = 1.0
) -> ELBOTerms:
    recon = reconstruction_nll(logits, x, cfg)
    kl = gaussian_kl(mean, logvar)
    return ELBOTerms(
        loss=(recon + kl_scale * kl).mean(),
        neg_elbo=(recon + kl).mean(),
        recon=recon.mean(),
        kl=kl.mean(),
    )

"""The negative ELBO and its parts, in nats per image."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vae_service.model.config import VAEConfig


@dataclass(frozen=True)
class ELBOTerms:
    """Per-image means over a batch: loss is what is minimized (β and warm-up applied)."""

    loss: Tensor
    neg_elbo: Tensor
    recon: Tensor
    kl: Tensor


def gaussian_kl_per_unit(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) of each latent unit of each row, in closed form:
    -1/2 * (1 + logvar - mean^2 - exp(logvar)) (Kingma & Welling 2014, Appendix B)."""
    return -0.5 * (1 + logvar - mean.pow(2) - logvar.exp())


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(q(z|x) || N(0, I)) per row: the sum over latent units."""
    return gaussian_kl_per_unit(mean, logvar).sum(dim=1)


# log p(z) of a prior with no closed-form KL to q(z|x), one value per row (FittedPrior.log_prob).
LogPrior = Callable[[Tensor], Tensor]


def log_normal_diag(z: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mean, diag(exp(logvar))), summed over the last dimension."""
    sq = (z - mean).pow(2) * torch.exp(-logvar)
    return -0.5 * (sq + logvar + math.log(2 * math.pi)).sum(dim=-1)


def standard_log_prior(z: Tensor) -> Tensor:
    """log N(z; 0, I), summed over the last dimension."""
    return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(dim=-1)


def kl_to_prior(z: Tensor, mean: Tensor, logvar: Tensor, log_prior: LogPrior | None) -> Tensor:
    """KL(q(z|x) || p(z)) per row. Against N(0, I) in closed form; against a learned mixture,
    which has none, its one-draw Monte Carlo estimate log q(z|x) − log p(z) at the draw z,
    unbiased as the ELBO needs (Kingma & Welling 2014, Section 2.3, eq. 6 against eq. 7)."""
    if log_prior is None:
        return gaussian_kl(mean, logvar)
    return log_normal_diag(z, mean, logvar) - log_prior(z)


def free_bits_penalty(mean: Tensor, logvar: Tensor, free_bits: float) -> Tensor:
    """The batch's mean KL per latent unit, each clamped below at ``free_bits`` nats, summed:
    a unit below the floor gets no pull towards the prior, so fewer units collapse
    (free bits, Kingma et al. 2016, "Improved Variational Inference with IAF", App. C.8)."""
    per_unit = gaussian_kl_per_unit(mean, logvar).mean(dim=0)
    return per_unit.clamp(min=free_bits).sum()


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
    logits: Tensor,
    x: Tensor,
    mean: Tensor,
    logvar: Tensor,
    cfg: VAEConfig,
    kl_scale: float = 1.0,
    free_bits: float = 0.0,
) -> ELBOTerms:
    """``neg_elbo`` is always the true bound; only ``loss`` sees β, warm-up and free bits."""
    recon = reconstruction_nll(logits, x, cfg)
    kl = gaussian_kl(mean, logvar)
    if free_bits > 0:
        loss = recon.mean() + kl_scale * free_bits_penalty(mean, logvar, free_bits)
    else:
        loss = (recon + kl_scale * kl).mean()
    return ELBOTerms(
        loss=loss,
        neg_elbo=(recon + kl).mean(),
        recon=recon.mean(),
        kl=kl.mean(),
    )

"""Per-image likelihood bounds from k posterior draws: the −ELBO and its parts, and the
importance-weighted bound on −log p(x) (IWAE, Burda et al. 2016), all in nats.

One encode and k decodes give both: the −ELBO is the mean of −log w_i over the draws, the
IWAE bound −log (1/k) Σ_i w_i, with w_i = p(x|z_i) p(z_i) / q(z_i|x) and z_i ~ q(z|x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vae_service.model.loss import (
    LogPrior,
    kl_to_prior,
    log_normal_diag,
    reconstruction_nll,
    standard_log_prior,
)
from vae_service.model.vae import VAE

# Rows decoded at once (images x draws), which bounds the memory of k draws.
DECODE_ROWS = 2048


@dataclass(frozen=True)
class Draws:
    """k x B terms of the importance weights, and the posterior (B x D) they came from."""

    log_px: Tensor
    log_pz: Tensor
    log_qz: Tensor
    kl: Tensor  # KL(q(z|x) || p(z)): B in closed form under N(0, I), k x B Monte Carlo else
    mean: Tensor
    logvar: Tensor

    @property
    def log_weights(self) -> Tensor:
        return self.log_px + self.log_pz - self.log_qz


def importance_draws(
    model: VAE,
    x: Tensor,
    k: int,
    gen: torch.Generator | None,
    log_prior: LogPrior | None,
    eps: Tensor | None = None,
) -> Draws:
    """k draws z ~ q(z|x) per image of ``x`` and their log-densities, decoded in chunks.
    ``eps`` (k x D): the standard-normal noise of every image's draws, instead of fresh
    noise from ``gen``, so that an image's draws do not depend on its batch."""
    mean, logvar = model.encode(x)
    chunk = max(1, DECODE_ROWS // len(x))
    px, pz, qz, kl = [], [], [], []
    for start in range(0, k, chunk):
        n = min(chunk, k - start)
        z = _draw(model, mean, logvar, n, gen, None if eps is None else eps[start : start + n])
        logits = model.decode_logits(z.flatten(0, 1))
        x_rep = x.expand(n, *x.shape).flatten(0, 1)
        px.append(-reconstruction_nll(logits, x_rep, model.cfg).view(n, len(x)))
        pz.append((log_prior or standard_log_prior)(z))
        qz.append(log_normal_diag(z, mean, logvar))
        kl.append(kl_to_prior(z, mean, logvar, log_prior).expand(n, len(x)))
    cat = torch.cat
    return Draws(cat(px), cat(pz), cat(qz), cat(kl), mean, logvar)


def _draw(
    model: VAE, mean: Tensor, logvar: Tensor, n: int, gen: torch.Generator | None,
    eps: Tensor | None,
) -> Tensor:  # fmt: skip
    """n x B x D draws from q(z|x): from ``gen``, or ``mean + std * eps`` with eps n x D."""
    if eps is None:
        return model.reparameterize(mean.expand(n, *mean.shape), logvar.expand(n, *mean.shape), gen)
    return mean + torch.exp(0.5 * logvar) * eps.unsqueeze(1)


def iwae_log_px(log_weights: Tensor) -> Tensor:
    """log (1/k) Σ_i w_i per image, in float64: a lower bound on log p(x) that is the
    ELBO's in expectation at k = 1 and tightens as k grows (Burda et al. 2016, Thm. 1)."""
    k = log_weights.shape[0]
    return torch.logsumexp(log_weights.double(), dim=0) - math.log(k)


def posterior_entropy(logvar: Tensor) -> Tensor:
    """H[q(z|x)] of a diagonal Gaussian per image: 1/2 Σ_d (1 + log 2π + logvar_d)."""
    return 0.5 * (1 + math.log(2 * math.pi) + logvar).sum(dim=1)


def image_bounds(
    model: VAE, x: Tensor, eps: Tensor, log_prior: LogPrior | None
) -> dict[str, Tensor]:
    """Per-image figures (each B, float64) from the k draws mean + std * eps (eps k x D,
    shared by the images): ``neg_elbo_nats``, ``reconstruction_nats``, ``kl_nats`` (means
    over the draws), ``iwae_nats`` and ``posterior_entropy_nats``."""
    draws = importance_draws(model, x, len(eps), None, log_prior, eps)
    recon = -draws.log_px.double().mean(dim=0)
    kl = draws.kl.double().mean(dim=0)
    return {
        "neg_elbo_nats": recon + kl,
        "reconstruction_nats": recon,
        "kl_nats": kl,
        "iwae_nats": -iwae_log_px(draws.log_weights),
        "posterior_entropy_nats": posterior_entropy(draws.logvar.double()),
    }


def bits_per_dim(nats: Tensor, dims: int) -> Tensor:
    """Nats per image as bits per pixel and channel: nats / (dims · ln 2)."""
    return nats / (dims * math.log(2))

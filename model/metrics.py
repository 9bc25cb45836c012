"""Test-set figures for a trained VAE: −ELBO and its parts, in nats per image."""

from __future__ import annotations

import torch
from torch import Tensor

from model.loss import elbo_terms
from model.vae import VAE


@torch.inference_mode()
def evaluate_elbo(model: VAE, images: Tensor, batch_size: int = 500, seed: int = 0,
                  device: str | torch.device = "cpu") -> dict[str, float]:
    """Mean −ELBO, reconstruction NLL and KL over ``images`` with one posterior draw each;
    the seed makes the figure repeatable."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    totals = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        logits, mean, logvar = model(x, gen)
        terms = elbo_terms(logits, x, mean, logvar, model.cfg)
        part = torch.stack([terms.neg_elbo, terms.recon, terms.kl]).double().cpu()
        totals += part * len(x)
    neg_elbo, recon, kl = (totals / len(images)).tolist()
    return {"neg_elbo": neg_elbo, "recon": recon, "kl": kl}

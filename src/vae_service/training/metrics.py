"""Test-set figures for a trained VAE, in nats per image unless stated otherwise.

- −ELBO and its parts (one posterior draw per image),
- the importance-weighted bound on −log p(x) (IWAE, Burda et al. 2016),
- reconstruction MSE and PSNR of the posterior-mean reconstruction,
- the number of active latent units (Burda et al. 2016, Section 5.2).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from vae_service.model.likelihood import importance_draws, iwae_log_px
from vae_service.model.loss import LogPrior, kl_to_prior, reconstruction_nll
from vae_service.model.vae import VAE

# Burda et al. 2016 call a latent unit active when Cov_x(E_q[z_u]) exceeds 0.01.
ACTIVE_UNIT_THRESHOLD = 0.01
# Identical images have MSE 0 and infinite PSNR; this floor caps PSNR at 100 dB and keeps
# the figure finite (and valid JSON).
MSE_FLOOR = 1e-10


def _batches(images: Tensor, batch_size: int, device: str | torch.device) -> Iterator[Tensor]:
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size].to(device)


def _generator(seed: int, device: str | torch.device) -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


@torch.inference_mode()
def evaluate_elbo(
    model: VAE,
    images: Tensor,
    batch_size: int = 500,
    seed: int = 0,
    device: str | torch.device = "cpu",
    log_prior: LogPrior | None = None,
) -> dict[str, float]:
    """Mean −ELBO, reconstruction NLL and KL over ``images`` with one posterior draw each,
    under N(0, I) or the learned prior ``log_prior``; the seed makes the figure repeatable."""
    model.eval()
    gen = _generator(seed, device)
    totals = torch.zeros(2, dtype=torch.float64)
    for x in _batches(images, batch_size, device):
        mean, logvar = model.encode(x)
        z = model.reparameterize(mean, logvar, gen)
        recon = reconstruction_nll(model.decode_logits(z), x, model.cfg)
        kl = kl_to_prior(z, mean, logvar, log_prior)
        totals += torch.stack([recon.sum(), kl.sum()]).double().cpu()
    recon, kl = (totals / len(images)).tolist()
    return {"neg_elbo": recon + kl, "recon": recon, "kl": kl}


@torch.inference_mode()
def iwae_nll(
    model: VAE,
    images: Tensor,
    k: int = 100,
    batch_size: int = 100,
    seed: int = 0,
    device: str | torch.device = "cpu",
    log_prior: LogPrior | None = None,
) -> float:
    """Mean −log p̂(x) with p̂(x) = (1/k) Σ_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x).

    This is the IWAE bound (Burda et al. 2016): an upper bound on −log p(x) that equals
    −ELBO in expectation for k = 1 and tightens as k grows."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    model.eval()
    gen = _generator(seed, device)
    total = 0.0
    for x in _batches(images, batch_size, device):
        log_w = importance_draws(model, x, k, gen, log_prior).log_weights
        total -= float(iwae_log_px(log_w).sum())
    return total / len(images)


def psnr(mse: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB for images in [0, 1]: 10 log10(1 / MSE)."""
    return -10 * torch.log10(mse.clamp_min(MSE_FLOOR))


def per_image_mse(reconstructions: Tensor, images: Tensor) -> Tensor:
    return (reconstructions - images).pow(2).flatten(1).mean(dim=1)


@torch.inference_mode()
def reconstruction_error(
    model: VAE, images: Tensor, batch_size: int = 500, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """MSE and PSNR of decode(posterior mean), each computed per image then averaged
    (so ``psnr`` is the mean of per-image PSNRs, not the PSNR of the mean MSE)."""
    model.eval()
    mse, edges = [], []
    for x in _batches(images, batch_size, device):
        recon = model.decode(model.encode(x)[0])
        mse.append(per_image_mse(recon, x).double().cpu())
        edges.append(mean_gradient(recon).cpu())
    per_image = torch.cat(mse)
    return {
        "mse": float(per_image.mean()),
        "psnr": float(psnr(per_image).mean()),
        "recon_sharpness": float(torch.cat(edges).mean()),
    }


def mean_gradient(images: Tensor) -> Tensor:
    """Per-image mean absolute difference between horizontally and vertically neighbouring
    pixels: a blur measure. A VAE's decoder outputs the mean of p(x|z), an average over
    plausible images, so its edges are softer than the data's and this figure lower."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1)
    return torch.cat([dx, dy], dim=1).double().mean(dim=1)


def data_sharpness(images: Tensor, batch_size: int = 500) -> float:
    """``mean_gradient`` of the test images, the reference of every sharpness ratio."""
    return float(torch.cat([mean_gradient(x) for x in images.split(batch_size)]).mean())


@torch.inference_mode()
def active_units(
    model: VAE,
    images: Tensor,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    threshold: float = ACTIVE_UNIT_THRESHOLD,
) -> int:
    """Latent units whose posterior mean varies across the data: Cov_x(E_q[z_u]) > threshold."""
    model.eval()
    means = torch.cat(
        [model.encode(x)[0].double().cpu() for x in _batches(images, batch_size, device)]
    )
    return int((means.var(dim=0, unbiased=False) > threshold).sum())

"""Anomaly scores: how unlike the training data an image is, higher is more anomalous.

A likelihood alone is the wrong score: a VAE trained on Fashion-MNIST gives MNIST digits a
*higher* likelihood than its own test images (Nalisnick et al. 2019). With a calibration in
the weights file (``vae-calibrate``; model/calibration.py) the score is DoSE's
(Morningstar et al. 2021): the negative log-density of the image's model statistics under a
mixture fitted to training images, with a conformal p-value against held-out
in-distribution images. Without one it is the IWAE bound on −log p(x) in bits per
dimension, which needs no fitting and has no p-value: it misses images simpler than the
data (MNIST under Fashion-MNIST), but on our sets it beats the other score that needs no
fitting, Serrà et al.'s 2020 complexity-corrected likelihood, which misses noise and most
synthetic structure.

docs/anomaly.md has the evidence for this choice and where the score fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vae_service.model.calibration import DEFAULT_FPR, SCORE_KIND, Calibration
from vae_service.model.complexity import complexity_bits, complexity_corrected
from vae_service.model.likelihood import bits_per_dim, image_bounds
from vae_service.model.prior import FittedPrior
from vae_service.model.vae import VAE

__all__ = [
    "DEFAULT_FPR",
    "DEFAULT_IWAE_SAMPLES",
    "MAX_IWAE_SAMPLES",
    "UNCALIBRATED_KIND",
    "UNCALIBRATED_PART",
    "AnomalyScores",
    "Calibration",
    "anomalous",
    "image_statistics",
    "score_images",
    "score_kind",
    "score_of",
]

# Importance samples of the IWAE bound: each costs one decode per image.
DEFAULT_IWAE_SAMPLES = 16
MAX_IWAE_SAMPLES = 256
# An image scores the same on every call unless the caller picks another seed: a score
# that moved from call to call would cross the threshold at random.
DEFAULT_SEED = 0
UNCALIBRATED_KIND = "likelihood"
# The part that is the score of an uncalibrated model.
UNCALIBRATED_PART = "iwae_bits_per_dim"


@dataclass(frozen=True)
class AnomalyScores:
    """Per image (each tensor N, float64): the score, its p-value (None uncalibrated) and
    the parts: ``neg_elbo_nats``, ``bits_per_dim`` (of the −ELBO), ``iwae_nats``,
    ``iwae_bits_per_dim``, ``reconstruction_nats``, ``kl_nats``, ``posterior_entropy_nats``,
    ``complexity_bits`` and ``complexity_corrected_bits_per_dim``."""

    score: Tensor
    p_value: Tensor | None
    parts: dict[str, Tensor]


def check_k(k: int) -> None:
    if not 1 <= k <= MAX_IWAE_SAMPLES:
        raise ValueError(f"k must be between 1 and {MAX_IWAE_SAMPLES}, got {k}")


def shared_noise(model: VAE, k: int, seed: int | None, device: torch.device) -> Tensor:
    """k x D standard-normal noise from ``seed`` alone, shared by every image (common random
    numbers): an image's figures depend on the seed and k, not on the batch it came in."""
    gen = torch.Generator().manual_seed(DEFAULT_SEED if seed is None else seed)
    return torch.randn((k, model.cfg.latent_dim), generator=gen).to(device)


def image_statistics(
    model: VAE, x: Tensor, k: int, seed: int | None = None, prior: FittedPrior | None = None
) -> dict[str, Tensor]:
    """The parts of ``AnomalyScores`` for a batch ``x`` (N x C x H x W in [0, 1]) with k
    posterior draws each, under the model's prior: a learned ``prior`` when given, N(0, I)
    otherwise (a mixture fitted to posterior means only samples, and is not used)."""
    check_k(k)
    log_prior = prior.to(x.device).log_prob if prior is not None and prior.learned else None
    stats = image_bounds(model, x, shared_noise(model, k, seed, x.device), log_prior)
    dims = x[0].numel()
    stats["bits_per_dim"] = bits_per_dim(stats["neg_elbo_nats"], dims)
    stats[UNCALIBRATED_PART] = bits_per_dim(stats["iwae_nats"], dims)
    stats["complexity_bits"] = complexity_bits(x)
    stats["complexity_corrected_bits_per_dim"] = complexity_corrected(
        stats["iwae_nats"], stats["complexity_bits"], dims
    )
    return stats


@torch.inference_mode()
def score_images(
    model: VAE,
    x: Tensor,
    calibration: Calibration | None,
    *,
    k: int = DEFAULT_IWAE_SAMPLES,
    seed: int | None = None,
    prior: FittedPrior | None = None,
) -> AnomalyScores:
    """Scores, p-values and parts of the images ``x`` (N x C x H x W floats in [0, 1], on the
    model's device). An image's figures depend on it, ``k`` and ``seed`` only (None: seed
    0), not on the other images of its batch. The p-values are exact at
    ``k = calibration.k``; keep the calibration on the model's device (``Calibration.to``)
    to spare a copy per call."""
    model.eval()
    parts = image_statistics(model, x, k, seed, prior)
    if calibration is not None:
        calibration = calibration.to(x.device)  # a no-op when it is there already
    score = score_of(parts, calibration)
    return AnomalyScores(score, calibration.p_values(score) if calibration else None, parts)


def score_of(parts: dict[str, Tensor], calibration: Calibration | None) -> Tensor:
    """The score of images from their parts: DoSE when calibrated, the IWAE bound in bits
    per dimension when not."""
    return parts[UNCALIBRATED_PART] if calibration is None else calibration.score(parts)


def anomalous(p_value: Tensor, fpr: float) -> Tensor:
    """The flag at false-positive rate ``fpr``: p-value ≤ fpr."""
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be between 0 and 1, got {fpr}")
    return p_value <= fpr


def score_kind(calibration: Calibration | None) -> str:
    """``dose`` when calibrated, ``likelihood`` when not."""
    return UNCALIBRATED_KIND if calibration is None else SCORE_KIND


def batched_statistics(
    model: VAE,
    images: Tensor,
    k: int,
    batch_size: int,
    seed: int,
    prior: FittedPrior | None,
    device: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """``image_statistics`` of many images, computed on ``device`` in batches, returned on
    the CPU."""
    with torch.inference_mode():
        model.eval()
        out = [
            image_statistics(model, x.to(device), k, seed, prior) for x in images.split(batch_size)
        ]
    return {name: torch.cat([o[name].cpu() for o in out]) for name in out[0]}

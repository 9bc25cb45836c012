"""Sample quality of a VAE, for the standard N(0, I) prior and the fitted prior side by side.

- Fréchet distance between the Fashion-MNIST classifier's penultimate features of generated
  samples and of the test set (FID's formula, Heusel et al. 2017, in a domain feature space);
- class coverage: entropy, in bits, of the classifier's predicted classes over the samples
  (log2(10) ≈ 3.32 when every class is equally common; lower means some are missing);
- sampling speed: images/s of latent sampling plus decoding, in process;
- sharpness: the mean gradient (training/metrics.py) of reconstructions and of samples as a
  fraction of the test images' own; 1.0 is as sharp as the data, a blurry VAE is near 0.65.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vae_service.model.prior import FittedPrior, sample_latents
from vae_service.model.vae import VAE
from vae_service.model.weights import Checkpoint
from vae_service.training.classifier import Classifier
from vae_service.training.metrics import data_sharpness, mean_gradient


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of a set of feature vectors, in float64."""

    mean: np.ndarray
    cov: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureStats:
        return cls(features.mean(axis=0), np.cov(features, rowvar=False))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2), the squared 2-Wasserstein
    distance between Gaussians with those moments.

    tr (S_a S_b)^1/2 = tr (S_a^1/2 S_b S_a^1/2)^1/2, and the right-hand matrix is symmetric
    positive semi-definite: its eigenvalues come from eigh, real and clipped at zero, with
    none of the complex round-off that sqrtm of the non-symmetric product can produce."""
    root_a = _psd_sqrt(a.cov)
    eigen = np.linalg.eigvalsh(root_a @ b.cov @ root_a)
    trace_sqrt = float(np.sqrt(np.clip(eigen, 0, None)).sum())
    mean_term = float(((a.mean - b.mean) ** 2).sum())
    return mean_term + float(np.trace(a.cov) + np.trace(b.cov)) - 2 * trace_sqrt


def class_coverage(predictions: Tensor, classes: int) -> float:
    """Entropy in bits of the predicted-class histogram."""
    p = torch.bincount(predictions, minlength=classes).double() / len(predictions)
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


@torch.inference_mode()
def classify(
    classifier: Classifier,
    images: Tensor,
    batch_size: int = 1000,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, Tensor]:
    """Penultimate features (float64, N x F) and predicted classes of ``images``."""
    expected = (1, classifier.cfg.image_size, classifier.cfg.image_size)
    if tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"the quality score needs {expected} images, got {tuple(images.shape[1:])}"
        )
    feats, preds = [], []
    for start in range(0, len(images), batch_size):
        f = classifier.features(images[start : start + batch_size].to(device))
        feats.append(f.double().cpu())
        preds.append(classifier.head(f).argmax(dim=1).cpu())
    return torch.cat(feats).numpy(), torch.cat(preds)


@torch.inference_mode()
def sample_images(
    model: VAE,
    prior: FittedPrior | None,
    n: int,
    seed: int = 0,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, float]:
    """n decoded samples (on the CPU) and the seconds that sampling and decoding took."""
    model.eval()
    gen = torch.Generator(device=torch.device(device)).manual_seed(seed)
    parts, seconds = [], 0.0
    for start in range(0, n, batch_size):
        began = time.perf_counter()
        images = model.decode(sample_latents(model, prior, min(batch_size, n - start), 1.0, gen))
        if images.is_cuda:
            torch.cuda.synchronize(images.device)
        seconds += time.perf_counter() - began
        parts.append(images.cpu())
    return torch.cat(parts), seconds


def prior_quality(
    model: VAE,
    prior: FittedPrior | None,
    classifier: Classifier,
    reference: FeatureStats,
    n: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    images, seconds = sample_images(model, prior, n, seed, device=device)
    features, predictions = classify(classifier, images, device=device)
    return {
        "frechet_distance": frechet_distance(FeatureStats.of(features), reference),
        "coverage_bits": class_coverage(predictions, classifier.cfg.classes),
        "images_per_s": n / max(seconds, 1e-9),
    }


def compare_priors(
    ckpt: Checkpoint,
    classifier: Classifier,
    test_images: Tensor,
    n: int = 10_000,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Scores for the standard prior and, when the weights carry one, the fitted prior; the
    test set's own coverage is the reference a perfect sampler would reach."""
    if n < 2:
        raise ValueError(f"the quality score needs at least 2 samples, got {n}")
    ref_features, ref_predictions = classify(classifier, test_images, device=device)
    reference = FeatureStats.of(ref_features)
    return {
        "samples": n,
        "seed": seed,
        "reference": {
            "images": len(test_images),
            "coverage_bits": class_coverage(ref_predictions, classifier.cfg.classes),
        },
        "priors": {
            name: prior_quality(ckpt.model, p, classifier, reference, n, seed, device)
            for name, p in priors_of(ckpt, device).items()
        },
    }


def priors_of(ckpt: Checkpoint, device: str | torch.device) -> dict[str, FittedPrior | None]:
    """The standard prior (None) and, when the weights carry one, the fitted prior."""
    fitted = FittedPrior.from_checkpoint(ckpt)
    return {"standard": None} | ({"fitted": fitted.to(device)} if fitted else {})


def save_prior_grids(
    ckpt: Checkpoint, directory: Path, seed: int = 0, device: str | torch.device = "cpu"
) -> list[Path]:
    """An 8 x 8 grid of samples from each prior, DIRECTORY/samples_{standard,fitted}.png."""
    from vae_service.training.report import (
        save_image_grid,  # matplotlib loads only when grids are asked for
    )

    return [
        save_image_grid(
            directory / f"samples_{name}.png",
            sample_images(ckpt.model, prior, 64, seed, device=device)[0],
            nrow=8,
        )
        for name, prior in priors_of(ckpt, device).items()
    ]


def sharpness_ratios(
    ckpt: Checkpoint,
    test_images: Tensor,
    recon_sharpness: float,
    n: int = 2000,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, float | str]:
    """Sharpness of reconstructions and of ``n`` samples (the fitted prior where the weights
    carry one, else N(0, I)), each divided by the test images' sharpness."""
    reference = data_sharpness(test_images)
    prior = FittedPrior.from_checkpoint(ckpt)
    samples = sample_images(ckpt.model, prior.to(device) if prior else None, n, seed, device=device)
    return {
        "data": reference,
        "reconstructions": recon_sharpness / reference,
        "samples": float(mean_gradient(samples[0]).mean()) / reference,
        "samples_prior": "fitted" if prior else "standard",
    }


def format_quality(result: dict[str, Any]) -> str:
    """A side-by-side text table of ``compare_priors``'s result."""
    rows = [
        f"sample quality: {result['samples']} samples (seed {result['seed']}) vs "
        f"{result['reference']['images']} test images "
        f"(test-set coverage {result['reference']['coverage_bits']:.3f} bits)",
        f"{'prior':<10}{'Fréchet distance':>18}{'coverage (bits)':>17}{'images/s':>11}",
    ]
    for name, q in result["priors"].items():
        rows.append(
            f"{name:<10}{q['frechet_distance']:>18.3f}{q['coverage_bits']:>17.3f}"
            f"{q['images_per_s']:>11.0f}"
        )
    return "\n".join(rows)

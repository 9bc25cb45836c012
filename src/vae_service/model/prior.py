"""A fitted latent prior: ex-post density estimation (Ghosh et al., "From Variational to
Deterministic Autoencoders", ICLR 2020).

A VAE's aggregate posterior q(z) = E_x[q(z|x)] does not fill N(0, I); prior draws that land
in its holes decode to blurry or meaningless images. A Gaussian mixture fitted to the
posterior means of the training set follows q(z) closely and costs one matrix-vector
product per sample.

Stored in the weights file as tensors ``prior.weights`` (K), ``prior.means`` (K x D) and
``prior.scale_tril`` (K x D x D, Cholesky factors of the covariances), plus metadata key
``prior``: {components, covariance_type, train_loglik, n_fit, fit} (files written before
``fit`` existed lack it, and mean ``means``). Every covariance type is expanded to full
lower-triangular factors so that sampling has one code path.

``fit`` says what the mixture is to the model. ``means`` (the default, and what older
files mean): fitted to posterior means after training, for sampling only; the model's
ELBO is the one under N(0, I). ``learned``: trained jointly with the VAE on the ELBO
(training/tune_prior.py), so it is the model's prior, and the ELBO and IWAE bound use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from vae_service.model.vae import VAE
from vae_service.model.weights import Checkpoint, WeightsError

if TYPE_CHECKING:  # scikit-learn is the train extra's: only fitting needs it
    from sklearn.mixture import GaussianMixture

PRIOR_PREFIX = "prior."
PRIOR_TENSORS = ("weights", "means", "scale_tril")
COVARIANCE_TYPES = ("full", "diag", "tied", "spherical")
PRIOR_METADATA = ("components", "covariance_type", "train_loglik", "n_fit")
# What a mixture is to its model (see the module docstring).
PriorFit = Literal["means", "learned"]
FITS: tuple[PriorFit, ...] = get_args(PriorFit)
# Mixture weights are stored in float32; their sum may drift from 1 by rounding only.
WEIGHT_SUM_TOLERANCE = 1e-4


def mixture(pick: Categorical, means: Tensor, scale_tril: Tensor) -> MixtureSameFamily:
    """torch.distributions' Gaussian mixture: its log_prob is a tested log-sum-exp over
    components of triangular-solve densities."""
    return MixtureSameFamily(pick, MultivariateNormal(means, scale_tril=scale_tril))


@dataclass(frozen=True)
class FittedPrior:
    """A K-component Gaussian mixture over the D-dimensional latent space."""

    weights: Tensor
    means: Tensor
    scale_tril: Tensor
    covariance_type: str
    train_loglik: float
    n_fit: int
    fit: PriorFit = "means"

    @property
    def learned(self) -> bool:
        """Part of the model (its ELBO uses it), not only a sampler."""
        return self.fit == "learned"

    @property
    def components(self) -> int:
        return int(self.weights.shape[0])

    @property
    def latent_dim(self) -> int:
        return int(self.means.shape[1])

    def to(self, device: str | torch.device) -> FittedPrior:
        return FittedPrior(
            self.weights.to(device),
            self.means.to(device),
            self.scale_tril.to(device),
            self.covariance_type,
            self.train_loglik,
            self.n_fit,
            self.fit,
        )

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) under the mixture, one value per row of ``z`` (any leading shape)."""
        return mixture(Categorical(probs=self.weights), self.means, self.scale_tril).log_prob(z)

    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """n latents: pick a component by weight, then mean + temperature * L @ eps.

        Temperature scales the deviation from the component mean, as it scales the
        deviation from 0 under the standard prior."""
        device = self.means.device
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn((n, self.latent_dim, 1), generator=generator, device=device)
        return self.means[comp] + temperature * (self.scale_tril[comp] @ eps).squeeze(-1)

    def describe(self) -> dict[str, Any]:
        """The metadata stored under ``prior`` and reported by the service."""
        return {
            "components": self.components,
            "covariance_type": self.covariance_type,
            "train_loglik": self.train_loglik,
            "n_fit": self.n_fit,
            "fit": self.fit,
        }

    def tensors(self) -> dict[str, Tensor]:
        return {
            PRIOR_PREFIX + "weights": self.weights,
            PRIOR_PREFIX + "means": self.means,
            PRIOR_PREFIX + "scale_tril": self.scale_tril,
        }

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> FittedPrior | None:
        """The prior a loaded weights file carries, or None; a corrupt one is a WeightsError."""
        names = {k for k in ckpt.extra_tensors if k.startswith(PRIOR_PREFIX)}
        meta = ckpt.metadata.get("prior")
        if not names and meta is None:
            return None
        try:
            return _validated(ckpt.extra_tensors, meta, names, ckpt.config.latent_dim)
        except ValueError as exc:
            raise WeightsError(ckpt.path, f"corrupt fitted prior: {exc}") from None


def _validated(
    tensors: dict[str, Tensor], meta: Any, names: set[str], latent_dim: int
) -> FittedPrior:
    expected = {PRIOR_PREFIX + n for n in PRIOR_TENSORS}
    if names != expected:
        raise ValueError(f"tensors {sorted(names)} are not {sorted(expected)}")
    _check_metadata(meta)
    weights, means, tril = (tensors[PRIOR_PREFIX + n].float() for n in PRIOR_TENSORS)
    _check_shapes(weights, means, tril, meta["components"], latent_dim)
    _check_values(weights, means, tril)
    return FittedPrior(
        weights,
        means,
        tril,
        meta["covariance_type"],
        float(meta["train_loglik"]),
        meta["n_fit"],
        meta.get("fit", "means"),
    )


def _check_metadata(meta: Any) -> None:
    if not isinstance(meta, dict) or not set(PRIOR_METADATA) <= set(meta) <= {
        *PRIOR_METADATA,
        "fit",
    }:
        raise ValueError(
            f"metadata 'prior' must hold exactly {', '.join(PRIOR_METADATA)}, and may hold fit"
        )
    if meta.get("fit", "means") not in FITS:
        raise ValueError(f"fit {meta['fit']!r} is not one of {FITS}")
    k, cov, loglik, n_fit = (meta[key] for key in PRIOR_METADATA)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"components {k!r} is not a positive integer")
    if cov not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type {cov!r} is not one of {COVARIANCE_TYPES}")
    if not isinstance(loglik, int | float) or not math.isfinite(loglik):
        raise ValueError(f"train_loglik {loglik!r} is not a finite number")
    if not isinstance(n_fit, int) or n_fit < k:
        raise ValueError(f"n_fit {n_fit!r} is not an integer of at least {k}")


def _check_shapes(weights: Tensor, means: Tensor, tril: Tensor, k: int, d: int) -> None:
    for name, tensor, shape in (
        ("weights", weights, (k,)),
        ("means", means, (k, d)),
        ("scale_tril", tril, (k, d, d)),
    ):
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")


def _check_values(weights: Tensor, means: Tensor, tril: Tensor) -> None:
    for name, tensor in (("weights", weights), ("means", means), ("scale_tril", tril)):
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{name} holds non-finite values")
    total = float(weights.double().sum())
    if (weights < 0).any() or abs(total - 1) > WEIGHT_SUM_TOLERANCE:
        raise ValueError(f"weights must be non-negative and sum to 1 (sum {total:.6f})")
    if (torch.diagonal(tril, dim1=-2, dim2=-1) <= 0).any():
        raise ValueError("scale_tril has a non-positive diagonal entry")
    if torch.triu(tril, diagonal=1).any():
        raise ValueError("scale_tril is not lower-triangular")


@torch.inference_mode()
def posterior_means(
    model: VAE, images: Tensor, batch_size: int = 1000, device: str | torch.device = "cpu"
) -> Tensor:
    """E[q(z|x)] for every image, on the CPU; the mixture is fitted to these."""
    model.eval()
    parts = [
        model.encode(images[i : i + batch_size].to(device))[0].float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts)


def fit_prior(
    latents: Tensor, components: int = 10, covariance_type: str = "full", seed: int = 0
) -> FittedPrior:
    """Fit a K-component mixture by EM. scikit-learn's GaussianMixture is a kept, tested EM
    (k-means initialisation, covariance regularisation, convergence checks) that would
    otherwise have to be written and tested here; it runs once, offline, in float64."""
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance type must be one of {COVARIANCE_TYPES}")
    x = latents.double().numpy()
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError("latents must be a finite N x D matrix")
    if not 1 <= components <= len(x):
        raise ValueError(f"components must be between 1 and the {len(x)} latents, got {components}")
    from sklearn.mixture import (
        GaussianMixture,  # train extra: serving a fitted prior needs torch alone
    )

    gm = GaussianMixture(components, covariance_type=covariance_type, random_state=seed)
    gm.fit(x)
    tril = np.linalg.cholesky(_full_covariances(gm, components, x.shape[1]))
    return FittedPrior(
        torch.from_numpy(gm.weights_ / gm.weights_.sum()).float(),
        torch.from_numpy(gm.means_).float(),
        torch.from_numpy(np.tril(tril)).float(),
        covariance_type,
        float(gm.score(x)),
        len(x),
    )


def fit_to_images(
    model: VAE,
    images: Tensor,
    components: int = 10,
    covariance_type: str = "full",
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> FittedPrior:
    """Encode ``images`` (the training set) and fit the mixture to their posterior means."""
    latents = posterior_means(model, images, device=device)
    return fit_prior(latents, components, covariance_type, seed)


def _full_covariances(gm: GaussianMixture, k: int, d: int) -> np.ndarray:
    """K x D x D covariances from any of scikit-learn's four parameterisations."""
    cov = np.asarray(gm.covariances_)
    if gm.covariance_type == "full":
        return cov
    if gm.covariance_type == "tied":
        return np.broadcast_to(cov, (k, d, d)).copy()
    if gm.covariance_type == "diag":
        return cov[:, :, None] * np.eye(d)
    return cov[:, None, None] * np.eye(d)


def sample_latents(
    model: VAE,
    prior: FittedPrior | None,
    n: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """n latents from the fitted ``prior``, or from the standard N(0, I) when it is None."""
    if prior is None:
        return model.sample_prior(n, temperature, generator)
    return prior.sample(n, temperature, generator)

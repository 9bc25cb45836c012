"""The calibrated anomaly score's fitted parts, stored in the weights file.

DoSE (Morningstar et al. 2021, "Density of States Estimation for Out-of-Distribution
Detection", AISTATS): a few per-image statistics of the model (IWAE bound, reconstruction,
KL, posterior entropy) plus the input's compressed length (Serrà et al. 2020) are
standardized, and a small full-covariance Gaussian mixture is fitted to them over
*training* images. The score is the negative log-density of an image's statistics under
that mixture, so an image is anomalous when its statistics are atypical in *any*
direction: likelier than the data (MNIST under a Fashion-MNIST model, Nalisnick et al.
2019) as well as less likely (noise).

The p-value is conformal (Vovk et al. 2005): with n held-out in-distribution calibration
scores, p(s) = (1 + #{cal ≥ s}) / (n + 1), which for a new in-distribution image is at most
α with probability at most α, whatever the score's distribution.

Tensors under ``anomaly.``: ``center`` and ``scale`` (S), the mixture's ``weights`` (K),
``means`` (K x S) and ``scale_tril`` (K x S x S), and the sorted calibration ``scores``
(n, float64); metadata key ``anomaly`` (``describe()``). ``fingerprint`` is the SHA-256 of
the model's and prior's tensors the statistics came from: a file whose model or prior
changed since is refused rather than scored against a stale calibration.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Categorical

from vae_service.model.prior import PRIOR_PREFIX, fit_prior, mixture
from vae_service.model.vae import VAE
from vae_service.model.weights import Checkpoint, WeightsError

ANOMALY_PREFIX = "anomaly."
ANOMALY_TENSORS = ("center", "scale", "weights", "means", "scale_tril", "scores")
SCORE_KIND = "dose"
DEFAULT_FPR = 0.01
# DoSE's statistics (Morningstar et al. 2021, Table 1, for a VAE) and Serrà et al.'s
# complexity: the mixture is fitted over these, in this order.
STATISTICS = (
    "iwae_nats",
    "reconstruction_nats",
    "kl_nats",
    "posterior_entropy_nats",
    "complexity_bits",
)
DESCRIBED = {"kind", "statistics", "components", "k", "seed", "fingerprint", "fit", "calibration"}


@dataclass(frozen=True)
class Calibration:
    """The fitted density over the statistics and the held-out calibration scores."""

    center: Tensor
    scale: Tensor
    weights: Tensor
    means: Tensor
    scale_tril: Tensor
    scores: Tensor  # sorted ascending
    info: dict[str, Any]  # describe()'s keys but the threshold, which is derived

    @property
    def statistics(self) -> tuple[str, ...]:
        return tuple(self.info["statistics"])

    @property
    def k(self) -> int:
        """IWAE samples the statistics were computed with: score with the same for exact
        p-values."""
        return int(self.info["k"])

    def score(self, stats: dict[str, Tensor]) -> Tensor:
        """−log density (nats, up to a constant) of each image's standardized statistics."""
        x = torch.stack([stats[name].double() for name in self.statistics], dim=1)
        z = ((x - self.center.double()) / self.scale.double()).float()
        pick = Categorical(probs=self.weights)
        return -mixture(pick, self.means, self.scale_tril).log_prob(z).double()

    def p_values(self, scores: Tensor) -> Tensor:
        """(1 + #{cal ≥ s}) / (n + 1) per score: in (0, 1], falling as the score rises."""
        cal = self.scores.to(scores.device, torch.float64)
        at_least = len(cal) - torch.searchsorted(cal, scores.double().contiguous(), side="left")
        return (1 + at_least).double() / (len(cal) + 1)

    def threshold(self, fpr: float) -> float:
        """The score above which p-value ≤ ``fpr``: +inf when fpr < 1/(n+1) (nothing can be
        flagged), -inf when every score is."""
        n = len(self.scores)
        most = math.floor(fpr * (n + 1) + 1e-9) - 1  # calibration scores allowed at or above
        if most < 0:
            return math.inf
        if most >= n:
            return -math.inf
        return float(self.scores[n - most - 1])

    def describe(self) -> dict[str, Any]:
        """The metadata stored under ``anomaly`` and reported by the service."""
        threshold = self.threshold(DEFAULT_FPR)
        # None, not ±inf, where no score or every score is flagged: JSON has no infinity.
        return self.info | {
            "default_fpr": DEFAULT_FPR,
            "threshold": threshold if math.isfinite(threshold) else None,
        }

    def tensors(self) -> dict[str, Tensor]:
        return {ANOMALY_PREFIX + name: getattr(self, name) for name in ANOMALY_TENSORS}

    def to(self, device: str | torch.device) -> Calibration:
        moved = {name: getattr(self, name).to(device) for name in ANOMALY_TENSORS}
        return replace(self, **moved)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> Calibration | None:
        """The calibration a loaded weights file carries, or None; a corrupt or stale one is
        a WeightsError."""
        names = {k for k in ckpt.extra_tensors if k.startswith(ANOMALY_PREFIX)}
        meta = ckpt.metadata.get("anomaly")
        if not names and meta is None:
            return None
        try:
            calibration = _validated(ckpt.extra_tensors, meta, names)
        except (ValueError, KeyError, TypeError) as exc:
            raise WeightsError(ckpt.path, f"corrupt anomaly calibration: {exc}") from None
        if calibration.info["fingerprint"] != fingerprint(ckpt.model, ckpt.extra_tensors):
            raise WeightsError(
                ckpt.path,
                "the anomaly calibration was made for other model or prior tensors: "
                "rerun vae-calibrate",
            )
        return calibration


def _validated(tensors: dict[str, Tensor], meta: Any, names: set[str]) -> Calibration:
    expected = {ANOMALY_PREFIX + n for n in ANOMALY_TENSORS}
    if names != expected:
        raise ValueError(f"tensors {sorted(names)} are not {sorted(expected)}")
    if not isinstance(meta, dict) or not set(meta) >= DESCRIBED:
        raise ValueError(f"metadata 'anomaly' must hold {', '.join(sorted(DESCRIBED))}")
    if meta["kind"] != SCORE_KIND or tuple(meta["statistics"]) != STATISTICS:
        raise ValueError(f"unknown score kind {meta['kind']!r} over {meta['statistics']!r}")
    loaded = {n: tensors[ANOMALY_PREFIX + n] for n in ANOMALY_TENSORS}
    info = {key: meta[key] for key in DESCRIBED}
    calibration = Calibration(
        **{n: t.double() if n == "scores" else t.float() for n, t in loaded.items()}, info=info
    )
    _check(calibration, int(meta["components"]))
    return calibration


def _check(c: Calibration, k: int) -> None:
    s = len(STATISTICS)
    shapes = {"center": (s,), "scale": (s,), "weights": (k,), "means": (k, s)}
    shapes["scale_tril"] = (k, s, s)
    for name, shape in shapes.items():
        if tuple(getattr(c, name).shape) != shape:
            raise ValueError(f"{name} has shape {tuple(getattr(c, name).shape)}, expected {shape}")
    if c.scores.ndim != 1 or len(c.scores) < 1:
        raise ValueError("scores must be a non-empty vector")
    for name in ANOMALY_TENSORS:
        if not torch.isfinite(getattr(c, name)).all():
            raise ValueError(f"{name} holds non-finite values")
    if (c.scale <= 0).any() or (torch.diagonal(c.scale_tril, dim1=-2, dim2=-1) <= 0).any():
        raise ValueError("scale and scale_tril's diagonal must be positive")
    if (c.weights < 0).any() or abs(float(c.weights.double().sum()) - 1) > 1e-4:
        raise ValueError("weights must be non-negative and sum to 1")
    if (c.scores[1:] < c.scores[:-1]).any():
        raise ValueError("scores are not sorted")


def fingerprint(model: VAE, extra_tensors: dict[str, Tensor]) -> str:
    """SHA-256 over the model's and the prior's tensors (as float32, by name): what the
    statistics depend on. Metadata and the calibration itself are left out."""
    state = {"model." + k: v for k, v in model.state_dict().items()}
    state |= {k: v for k, v in extra_tensors.items() if k.startswith(PRIOR_PREFIX)}
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode() + b"\0")
        digest.update(state[name].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def fit_calibration(
    fit_stats: dict[str, Tensor],
    calibration_stats: dict[str, Tensor],
    components: int,
    info: dict[str, Any],
    seed: int = 0,
) -> Calibration:
    """Fit the mixture on ``fit_stats`` (training images), then score the held-out
    ``calibration_stats``. ``info``: describe()'s provenance keys (k, seed, fingerprint,
    fit, calibration). Uses scikit-learn's EM (model/prior.fit_prior): offline only."""
    x = torch.stack([fit_stats[name].double() for name in STATISTICS], dim=1)
    center, scale = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    density = fit_prior(((x - center) / scale).float(), components, "full", seed)
    meta = info | {"kind": SCORE_KIND, "statistics": list(STATISTICS), "components": components}
    unscored = Calibration(
        center.float(), scale.float(), density.weights, density.means, density.scale_tril,
        torch.zeros(1, dtype=torch.float64), meta,
    )  # fmt: skip
    scores = unscored.score(calibration_stats).sort().values
    return replace(unscored, scores=scores)


def without_calibration(
    metadata: dict[str, Any], extra_tensors: dict[str, Tensor]
) -> tuple[dict[str, Any], dict[str, Tensor], bool]:
    """Metadata and extra tensors less any calibration, and whether there was one: what a
    tool that changes the model or its prior writes, since the calibration no longer holds."""
    meta = {k: v for k, v in metadata.items() if k != "anomaly"}
    extra = {k: v for k, v in extra_tensors.items() if not k.startswith(ANOMALY_PREFIX)}
    return meta, extra, len(meta) != len(metadata) or len(extra) != len(extra_tensors)

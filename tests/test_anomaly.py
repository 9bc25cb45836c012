"""model/anomaly.py and model/calibration.py: the bounds, determinism, the uncalibrated
fallback, conformal p-values and their flag rate."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from vae_service.model import VAE
from vae_service.model.anomaly import (
    MAX_IWAE_SAMPLES,
    UNCALIBRATED_KIND,
    anomalous,
    score_images,
    score_kind,
)
from vae_service.model.calibration import STATISTICS, Calibration, fit_calibration
from vae_service.model.complexity import complexity_bits

PARTS = {"neg_elbo_nats", "bits_per_dim", "iwae_nats", "reconstruction_nats", "kl_nats"}


def test_the_iwae_bound_is_at_least_the_elbo(spread_model: VAE, binary_images: Tensor) -> None:
    """log (1/k) Σ w_i ≥ (1/k) Σ log w_i over the same draws (Jensen; Burda et al. 2016)."""
    parts = score_images(spread_model, binary_images, None, k=32, seed=1).parts
    assert (parts["iwae_nats"] <= parts["neg_elbo_nats"] + 1e-9).all()
    assert (parts["iwae_nats"] < parts["neg_elbo_nats"] - 0.1).any()  # the gap is real
    two = score_images(spread_model, binary_images, None, k=2, seed=1).parts
    assert parts["iwae_nats"].mean() < two["iwae_nats"].mean()  # tighter with more samples


def test_parts_add_up(spread_model: VAE, binary_images: Tensor) -> None:
    parts = score_images(spread_model, binary_images, None, k=4).parts
    assert set(parts) >= PARTS and all(v.shape == (16,) for v in parts.values())
    torch.testing.assert_close(
        parts["neg_elbo_nats"], parts["reconstruction_nats"] + parts["kl_nats"]
    )
    torch.testing.assert_close(parts["bits_per_dim"], parts["neg_elbo_nats"] / (784 * math.log(2)))


def test_a_seed_repeats_the_figures_and_the_batch_does_not_matter(
    spread_model: VAE, binary_images: Tensor
) -> None:
    first = score_images(spread_model, binary_images, None, k=8, seed=3)
    again = score_images(spread_model, binary_images, None, k=8, seed=3)
    other = score_images(spread_model, binary_images, None, k=8, seed=4)
    alone = score_images(spread_model, binary_images[5:6], None, k=8, seed=3)
    assert torch.equal(first.score, again.score)
    assert not torch.equal(first.parts["iwae_nats"], other.parts["iwae_nats"])
    torch.testing.assert_close(alone.parts["iwae_nats"], first.parts["iwae_nats"][5:6])


@pytest.mark.parametrize("k", [0, MAX_IWAE_SAMPLES + 1])
def test_k_is_bounded(spread_model: VAE, binary_images: Tensor, k: int) -> None:
    with pytest.raises(ValueError, match="k must be between"):
        score_images(spread_model, binary_images, None, k=k)


def test_uncalibrated_scores_are_the_iwae_bound_in_bits_per_dim(
    spread_model: VAE, binary_images: Tensor
) -> None:
    scores = score_images(spread_model, binary_images, None, k=2)
    assert scores.p_value is None and score_kind(None) == UNCALIBRATED_KIND
    torch.testing.assert_close(scores.score, scores.parts["iwae_nats"] / (784 * math.log(2)))
    corrected = scores.score - complexity_bits(binary_images) / 784  # Serrà et al.'s S(x)
    torch.testing.assert_close(scores.parts["complexity_corrected_bits_per_dim"], corrected)


def test_plain_images_are_shorter_than_noise() -> None:
    images = torch.cat([torch.zeros(1, 1, 28, 28), torch.rand(1, 1, 28, 28)])
    plain, noise = complexity_bits(images).tolist()
    assert plain < 200 < 784 * 8 * 0.9 < noise


def gaussian_statistics(n: int, seed: int) -> dict[str, Tensor]:
    """Correlated Gaussian stand-ins for the five statistics: in-distribution data."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.tensor([[1.0, 0, 0, 0, 0], [0.8, 0.6, 0, 0, 0], [0.1, 0.2, 1, 0, 0]])
    mix = torch.cat([mix, torch.eye(5)[3:]])
    x = torch.randn((n, 5), generator=gen, dtype=torch.float64) @ mix.double().T * 10 + 100
    return {name: x[:, i] for i, name in enumerate(STATISTICS)}


@pytest.fixture(scope="module")
def calibration() -> Calibration:
    info = {"k": 4, "seed": 0, "fingerprint": "x", "fit": {}, "calibration": {}}
    return fit_calibration(gaussian_statistics(3000, 0), gaussian_statistics(4000, 1), 2, info)


def test_p_values_fall_as_scores_rise_and_lie_in_0_1(calibration: Calibration) -> None:
    scores = torch.linspace(-20, 60, 200, dtype=torch.float64)
    p = calibration.p_values(scores)
    assert ((p > 0) & (p <= 1)).all() and (p[1:] <= p[:-1]).all()
    assert p[0] == 1 and p[-1] == pytest.approx(1 / (len(calibration.scores) + 1))


@pytest.mark.parametrize("fpr", [0.001, 0.01, 0.05, 0.3])
def test_the_threshold_is_where_the_flag_turns_on(calibration: Calibration, fpr: float) -> None:
    t = calibration.threshold(fpr)
    at, above = torch.tensor([t, math.nextafter(t, math.inf)], dtype=torch.float64)
    assert not anomalous(calibration.p_values(at.view(1)), fpr)
    assert anomalous(calibration.p_values(above.view(1)), fpr)


def test_the_flag_rate_on_new_in_distribution_data_is_near_nominal(
    calibration: Calibration,
) -> None:
    """Conformal p-values of exchangeable data are flagged at about the nominal rate."""
    fresh = calibration.score(gaussian_statistics(20_000, 2))
    rate = float(anomalous(calibration.p_values(fresh), 0.01).double().mean())
    assert 0.005 <= rate <= 0.015
    far = calibration.score(gaussian_statistics(100, 3) | {"kl_nats": torch.full((100,), 60.0)})
    assert anomalous(calibration.p_values(far), 0.01).all()  # 4 sd low: anomalous too


def test_an_impossible_rate_flags_nothing_and_a_bad_one_is_refused(
    calibration: Calibration,
) -> None:
    assert calibration.threshold(1e-6) == math.inf
    assert calibration.describe()["threshold"] == calibration.threshold(0.01)
    with pytest.raises(ValueError, match="fpr"):
        anomalous(torch.ones(1), 0.0)

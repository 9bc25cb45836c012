"""A learned mixture prior: its density, the bounds under it, and vae-tune-prior."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from sklearn.mixture import GaussianMixture

from tests.test_prior import image_folder
from vae_service.model import VAE, load_weights
from vae_service.model.loss import gaussian_kl, kl_to_prior
from vae_service.model.prior import FittedPrior, fit_prior
from vae_service.training.evaluate import main as eval_main
from vae_service.training.metrics import evaluate_elbo, iwae_nll
from vae_service.training.tune_prior import LearnedPrior
from vae_service.training.tune_prior import main as tune_main


def standard_mixture(latent_dim: int = 4) -> FittedPrior:
    """N(0, I) written as a one-component mixture."""
    eye = torch.eye(latent_dim).unsqueeze(0)
    return FittedPrior(torch.ones(1), torch.zeros(1, latent_dim), eye, "full", 0.0, 1, "learned")


def test_mixture_density_matches_scikit_learn() -> None:
    latents = torch.randn((300, 3), generator=torch.Generator().manual_seed(0)) * 2
    prior = fit_prior(latents, components=3)
    gm = GaussianMixture(3, covariance_type="full", random_state=0).fit(latents.double().numpy())
    z = torch.randn((50, 3), generator=torch.Generator().manual_seed(1))
    expected = torch.from_numpy(gm.score_samples(z.double().numpy())).float()
    assert torch.allclose(prior.log_prob(z), expected, atol=1e-3)


def test_monte_carlo_kl_averages_to_the_closed_form() -> None:
    gen = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn((1, 4), generator=gen), torch.randn((1, 4), generator=gen) * 0.3
    z = mean + torch.exp(0.5 * logvar) * torch.randn((200_000, 4), generator=gen)
    estimate = kl_to_prior(z, mean, logvar, standard_mixture().log_prob).mean()
    assert float(estimate) == pytest.approx(float(gaussian_kl(mean, logvar)[0]), abs=0.02)
    assert torch.equal(kl_to_prior(z, mean, logvar, None), gaussian_kl(mean, logvar))


def test_bounds_under_a_learned_standard_normal_equal_the_standard_ones(
    spread_model: VAE, binary_images: torch.Tensor
) -> None:
    """Same draws, same log p(z): the IWAE bound agrees to rounding; the ELBO's KL is a
    one-draw estimate instead of the closed form, so it agrees on average."""
    log_prior = standard_mixture().log_prob
    plain = iwae_nll(spread_model, binary_images, k=20, seed=3)
    assert iwae_nll(spread_model, binary_images, k=20, seed=3, log_prior=log_prior) == (
        pytest.approx(plain, abs=1e-3)
    )
    closed = evaluate_elbo(spread_model, binary_images, seed=4)
    sampled = evaluate_elbo(spread_model, binary_images, seed=4, log_prior=log_prior)
    assert sampled["recon"] == closed["recon"]
    assert sampled["kl"] == pytest.approx(closed["kl"], rel=0.1)


def test_learned_prior_round_trips_its_start() -> None:
    start = fit_prior(torch.randn((200, 3), generator=torch.Generator().manual_seed(2)), 2)
    learned = LearnedPrior(start).fitted(-1.5, 200)
    assert learned.learned and learned.describe()["fit"] == "learned"
    for name in ("weights", "means", "scale_tril"):
        assert torch.allclose(getattr(learned, name), getattr(start, name), atol=1e-5)
    z = torch.randn((10, 3))
    assert torch.allclose(LearnedPrior(start).log_prob(z), start.log_prob(z), atol=1e-4)


def tune(tiny_weights: Path, tmp_path: Path, *extra: str) -> int:
    folder = image_folder(tmp_path / "images", n=40)
    argv = [str(tiny_weights), "--data", str(folder), "--out", str(tmp_path / "tuned.safetensors")]
    return tune_main([*argv, "--components", "2", "--epochs", "2", "--batch-size", "8", *extra])


def test_cli_tunes_the_model_and_stores_a_learned_prior(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tune(tiny_weights, tmp_path) == 0
    assert "under the learned prior; wrote" in capsys.readouterr().out
    tuned, source = load_weights(tmp_path / "tuned.safetensors"), load_weights(tiny_weights)
    prior = FittedPrior.from_checkpoint(tuned)
    assert prior is not None and prior.learned and prior.components == 2
    summary = tuned.metadata["prior_tuning"]
    assert summary["source_sha256"] == source.sha256 and len(summary["train_neg_elbo"]) == 2
    assert tuned.metadata["training"] == source.metadata["training"]
    changed = tuned.model.encoder.state_dict()
    assert any(not torch.equal(v, changed[k]) for k, v in source.model.encoder.state_dict().items())
    # vae-eval bounds with the learned prior, and gives the figure tuning measured.
    assert eval_main([str(tmp_path / "tuned.safetensors"), "--data", str(tmp_path / "images"),
                      "--iwae-k", "2", "--format", "json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["bound_prior"] == "learned" and math.isfinite(result["iwae_nll"])
    assert result["neg_elbo"] == pytest.approx(summary["final_test"]["neg_elbo"], abs=1e-3)


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--lr", "0"], "--lr must be positive"),
        (["--components", "0"], "--components must be at least 1"),
    ],
)
def test_cli_refuses_bad_arguments(
    extra: list[str], why: str, tiny_weights: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    with pytest.raises(SystemExit) as info:
        tune(tiny_weights, tmp_path, *extra)
    assert info.value.code == 2 and why in capsys.readouterr().err


def test_cli_errors_are_one_line(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tune(tiny_weights, tmp_path, "--batch-size", "1000") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vae-tune-prior: error:") and "do not fill one batch" in err
    assert "\n" not in err
    assert tune_main([str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "o")]) == 2
    assert "file not found" in capsys.readouterr().err

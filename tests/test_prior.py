"""The fitted latent prior: fitting, sampling, storage in weights files, vae-fit-prior."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vae_service.model import VAE, WeightsError, load_weights, save_weights
from vae_service.model.prior import (
    COVARIANCE_TYPES,
    PRIOR_PREFIX,
    FittedPrior,
    fit_prior,
    posterior_means,
    sample_latents,
)
from vae_service.model.prior_files import attach_prior
from vae_service.training.data import load_dataset
from vae_service.training.fit_prior import main as fit_prior_main
from vae_service.training.train import main as train_main

TRUE_MEANS = torch.tensor([[-6.0, 0.0], [0.0, 6.0], [6.0, -3.0]])


def mixture_latents(n_per: int = 200, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(TRUE_MEANS), n_per, 2), generator=gen) * 0.5
    return (TRUE_MEANS[:, None, :] + noise).reshape(-1, 2)


def sorted_rows(t: torch.Tensor) -> torch.Tensor:
    return t[torch.argsort(t[:, 0])]


@pytest.mark.parametrize("covariance", COVARIANCE_TYPES)
def test_fit_recovers_known_mixture_means(covariance: str) -> None:
    prior = fit_prior(mixture_latents(), components=3, covariance_type=covariance)
    assert torch.allclose(sorted_rows(prior.means), TRUE_MEANS, atol=0.15)
    assert torch.allclose(prior.weights, torch.full((3,), 1 / 3), atol=0.01)
    # Isotropic noise of std 0.5: every expanded Cholesky factor is close to 0.5 I.
    assert torch.allclose(prior.scale_tril, 0.5 * torch.eye(2).expand(3, 2, 2), atol=0.1)
    assert prior.n_fit == 600 and prior.covariance_type == covariance


def test_sampling_is_seeded_and_deterministic() -> None:
    prior = fit_prior(mixture_latents(), components=3)
    first = prior.sample(64, generator=torch.Generator().manual_seed(7))
    again = prior.sample(64, generator=torch.Generator().manual_seed(7))
    other = prior.sample(64, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_samples_follow_the_mixture() -> None:
    prior = fit_prior(mixture_latents(), components=3)
    z = prior.sample(6000, generator=torch.Generator().manual_seed(0))
    nearest = torch.cdist(z, prior.means).argmin(dim=1)
    shares = torch.bincount(nearest, minlength=3).float() / len(z)
    assert torch.allclose(shares, prior.weights, atol=0.03)
    cov = torch.cov((z[nearest == 0] - prior.means[0]).T)
    expected = prior.scale_tril[0] @ prior.scale_tril[0].T
    assert torch.allclose(cov, expected, atol=0.05)


def test_temperature_scales_the_deviation_from_the_component_mean() -> None:
    prior = fit_prior(mixture_latents(), components=3)
    z = prior.sample(50, temperature=0.0, generator=torch.Generator().manual_seed(0))
    assert (torch.cdist(z, prior.means).min(dim=1).values < 1e-6).all()


def test_sample_latents_falls_back_to_the_standard_prior(tiny_model: VAE) -> None:
    z = sample_latents(tiny_model, None, 5, 1.0, torch.Generator().manual_seed(3))
    expected = tiny_model.sample_prior(5, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(z, expected)


def tiny_prior(latent_dim: int = 4, components: int = 2, covariance: str = "full") -> FittedPrior:
    latents = torch.randn((80, latent_dim), generator=torch.Generator().manual_seed(1))
    return fit_prior(latents, components, covariance)


def test_round_trip_through_a_weights_file(tiny_weights: Path, tmp_path: Path) -> None:
    prior = tiny_prior(covariance="diag")
    out = tmp_path / "with-prior.safetensors"
    attach_prior(tiny_weights, prior, out)
    loaded = FittedPrior.from_checkpoint(load_weights(out))
    assert loaded is not None
    assert loaded.describe() == prior.describe()
    for key, tensor in prior.tensors().items():
        assert torch.equal(loaded.tensors()[key], tensor)
    assert FittedPrior.from_checkpoint(load_weights(tiny_weights)) is None


def test_attach_replaces_the_prior_in_place(tiny_weights: Path) -> None:
    attach_prior(tiny_weights, tiny_prior(components=2))
    ckpt = attach_prior(tiny_weights, tiny_prior(components=3, covariance="tied"))
    prior = FittedPrior.from_checkpoint(ckpt)
    assert prior is not None and prior.components == 3 and prior.covariance_type == "tied"
    assert ckpt.metadata["training"]["note"] == "random init for tests"


def test_attach_refuses_a_prior_of_the_wrong_dimension(tiny_weights: Path) -> None:
    with pytest.raises(ValueError, match="latent dims"):
        attach_prior(tiny_weights, tiny_prior(latent_dim=3))


def corrupt(tensors: dict[str, torch.Tensor], meta: dict[str, Any], how: str) -> None:
    if how == "weights sum":
        tensors["prior.weights"] = tensors["prior.weights"] * 2
    elif how == "nan mean":
        tensors["prior.means"][0, 0] = float("nan")
    elif how == "zero diagonal":
        tensors["prior.scale_tril"][1, 2, 2] = 0.0
    elif how == "wrong shape":
        tensors["prior.means"] = tensors["prior.means"][:, :3]
    elif how == "missing tensor":
        del tensors["prior.scale_tril"]
    elif how == "bad covariance type":
        meta["covariance_type"] = "banded"
    elif how == "components mismatch":
        meta["components"] = 5
    elif how == "unknown fit":
        meta["fit"] = "guessed"
    elif how == "unknown key":
        meta["origin"] = "elsewhere"


CORRUPTIONS = {
    "weights sum": "sum to 1",
    "nan mean": "non-finite",
    "zero diagonal": "non-positive diagonal",
    "wrong shape": "means has shape",
    "missing tensor": "are not",
    "bad covariance type": "covariance_type",
    "components mismatch": "weights has shape",
    "unknown fit": "fit 'guessed' is not one of",
    "unknown key": "may hold fit",
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_a_corrupt_prior_is_refused_at_load(
    how: str, tiny_model: VAE, tiny_weights: Path, tmp_path: Path
) -> None:
    prior = tiny_prior()
    tensors = {k: v.clone() for k, v in prior.tensors().items()}
    meta = prior.describe()
    corrupt(tensors, meta, how)
    path = save_weights(tmp_path / "bad.safetensors", tiny_model, {"prior": meta}, tensors)
    with pytest.raises(WeightsError, match="corrupt fitted prior") as info:
        FittedPrior.from_checkpoint(load_weights(path))
    assert CORRUPTIONS[how] in str(info.value)
    assert "\n" not in str(info.value)


def test_posterior_means_are_batched_encoder_means(tiny_model: VAE) -> None:
    images = torch.rand((7, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    means = posterior_means(tiny_model, images, batch_size=3)
    with torch.inference_mode():
        expected = tiny_model.encode(images)[0]
    assert means.shape == (7, 4)
    assert torch.allclose(means, expected, atol=1e-6)


def test_fit_refuses_more_components_than_latents() -> None:
    with pytest.raises(ValueError, match="components must be between"):
        fit_prior(torch.zeros((3, 2)), components=5)


def image_folder(root: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def test_cli_adds_a_prior_and_prints_a_summary(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = image_folder(tmp_path / "images")
    out = tmp_path / "out.safetensors"
    argv = [str(tiny_weights), "--data", str(folder), "--limit-train", "9", "--out", str(out)]
    assert fit_prior_main([*argv, "--components", "2", "--covariance", "spherical", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["components"] == 2 and summary["covariance_type"] == "spherical"
    prior = FittedPrior.from_checkpoint(load_weights(out))
    assert prior is not None and prior.n_fit == summary["n_fit"] == 9
    assert not any(k.startswith(PRIOR_PREFIX) for k in load_weights(tiny_weights).extra_tensors)


def test_cli_help_and_bad_arguments(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        fit_prior_main(["--help"])
    assert info.value.code == 0 and "--covariance" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        fit_prior_main([str(tiny_weights), "--covariance", "banded"])
    assert info.value.code == 2
    capsys.readouterr()
    assert fit_prior_main([str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vae-fit-prior: error:") and "file not found" in err
    assert "\n" not in err
    assert fit_prior_main([str(tiny_weights), "--data", str(tmp_path / "nowhere")]) == 2
    assert "not a known data set" in capsys.readouterr().err


TINY_TRAIN = ["--latent-dim", "4", "--widths", "4,8", "--hidden-dim", "16", "--epochs", "1"]


def test_vae_train_stores_a_fitted_prior(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = image_folder(tmp_path / "images", n=16)
    out = tmp_path / "trained.safetensors"
    argv = [*TINY_TRAIN, "--data", str(folder), "--batch-size", "8", "--no-progress"]
    options = ["--prior-components", "3", "--prior-covariance", "diag"]
    assert train_main([*argv, *options, "--out", str(out)]) == 0
    prior = FittedPrior.from_checkpoint(load_weights(out))
    assert prior is not None and prior.components == 3 and prior.covariance_type == "diag"
    train_size = len(load_dataset(str(folder)).train)  # the folder's training split
    assert prior.n_fit == train_size and "3-component diag-covariance" in capsys.readouterr().out
    bare = tmp_path / "bare.safetensors"
    assert train_main([*argv, "--prior-components", "0", "--out", str(bare)]) == 0
    assert FittedPrior.from_checkpoint(load_weights(bare)) is None


def test_vae_train_refuses_more_components_than_images_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = image_folder(tmp_path / "images", n=5)
    out = tmp_path / "never.safetensors"
    assert train_main([*TINY_TRAIN, "--data", str(folder), "--out", str(out)]) == 2
    train_size = len(load_dataset(str(folder)).train)
    assert f"--prior-components exceeds the {train_size} training images" in capsys.readouterr().err
    assert not out.exists()

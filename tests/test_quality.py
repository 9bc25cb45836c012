"""Sample-quality score: Fréchet distance, class coverage, the classifier and its CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from vae_service.model import WeightsError, load_weights
from vae_service.model.prior import fit_prior
from vae_service.model.prior_files import attach_prior
from vae_service.training.classifier import Classifier, load_classifier
from vae_service.training.classifier import main as classifier_main
from vae_service.training.evaluate import main as evaluate_main
from vae_service.training.quality import (
    FeatureStats,
    class_coverage,
    classify,
    compare_priors,
    format_quality,
    frechet_distance,
)


def random_spd(dim: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(dim, dim))
    return a @ a.T + 0.1 * np.eye(dim)


def test_frechet_distance_of_identical_statistics_is_zero() -> None:
    stats = FeatureStats(np.arange(5.0), random_spd(5, 0))
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_diagonal_gaussians_has_closed_form() -> None:
    a = FeatureStats(np.array([0.0, 1.0]), np.diag([4.0, 1.0]))
    b = FeatureStats(np.array([3.0, 1.0]), np.diag([1.0, 9.0]))
    # |mu_a - mu_b|^2 + sum (sigma_a - sigma_b)^2 = 9 + (2 - 1)^2 + (1 - 3)^2
    assert frechet_distance(a, b) == pytest.approx(14.0)


def test_frechet_distance_matches_scipy_sqrtm_on_non_commuting_covariances() -> None:
    a = FeatureStats(np.zeros(6), random_spd(6, 1))
    b = FeatureStats(np.ones(6), random_spd(6, 2))
    root = scipy.linalg.sqrtm(a.cov @ b.cov).real
    expected = 6 + np.trace(a.cov) + np.trace(b.cov) - 2 * np.trace(root)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)


def test_class_coverage_is_the_entropy_in_bits() -> None:
    assert class_coverage(torch.arange(10).repeat(3), 10) == pytest.approx(math.log2(10))
    assert class_coverage(torch.full((20,), 4), 10) == 0.0
    assert class_coverage(torch.tensor([0, 1, 0, 1]), 10) == pytest.approx(1.0)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(root: Path, n: int = 96) -> Path:
    """IDX files whose class shows as image brightness, so a few steps learn something."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for split in ("train", "t10k"):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 40, (n, 28, 28)) + labels[:, None, None] * 20
        write_idx(root / f"{split}-images-idx3-ubyte", images)
        write_idx(root / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture
def trained_classifier(tmp_path: Path) -> tuple[Path, Classifier]:
    out = tmp_path / "clf.safetensors"
    data = fake_fashion_mnist(tmp_path / "classifier-idx")
    argv = ["train", "--data-dir", str(data), "--epochs", "2", "--batch-size", "32"]
    assert classifier_main([*argv, "--out", str(out), "--device", "cpu"]) == 0
    return out, load_classifier(out)[0]


def test_the_classifier_command_trains_and_saves_with_metadata(
    trained_classifier: tuple[Path, Classifier],
) -> None:
    path, model = trained_classifier
    again, meta = load_classifier(path)
    x = torch.rand((3, 1, 28, 28))
    assert torch.equal(model(x), again(x))
    assert model.features(x).shape == (3, model.cfg.feature_dim)
    assert 0.0 <= meta["test_accuracy"] <= 1.0 and meta["training"]["epochs"] == 2
    assert path.stat().st_size < 400_000


def test_a_broken_classifier_file_is_refused(tmp_path: Path, tiny_weights: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_classifier(tmp_path / "missing.safetensors")
    with pytest.raises(WeightsError, match="not a fmnist-classifier file"):
        load_classifier(tiny_weights)


def test_the_score_refuses_images_of_another_shape(
    trained_classifier: tuple[Path, Classifier],
) -> None:
    with pytest.raises(ValueError, match=r"needs \(1, 28, 28\) images"):
        classify(trained_classifier[1], torch.rand((2, 3, 28, 28)))


def test_both_priors_are_scored_side_by_side(
    trained_classifier: tuple[Path, Classifier], tiny_weights: Path
) -> None:
    latents = torch.randn((60, 4), generator=torch.Generator().manual_seed(0))
    ckpt = attach_prior(tiny_weights, fit_prior(latents, components=2))
    test_images = torch.rand((50, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    result = compare_priors(ckpt, trained_classifier[1], test_images, n=40, seed=3)
    assert set(result["priors"]) == {"standard", "fitted"}
    for scores in result["priors"].values():
        assert scores["frechet_distance"] >= 0 and math.isfinite(scores["frechet_distance"])
        assert 0.0 <= scores["coverage_bits"] <= math.log2(10) + 1e-9
        assert scores["images_per_s"] > 0
    again = compare_priors(ckpt, trained_classifier[1], test_images, n=40, seed=3)
    for name in ("standard", "fitted"):
        assert (
            again["priors"][name]["frechet_distance"] == result["priors"][name]["frechet_distance"]
        )
    table = format_quality(result)
    assert "standard" in table and "fitted" in table and "40 samples" in table


def test_weights_without_a_prior_score_the_standard_prior_only(
    trained_classifier: tuple[Path, Classifier], tiny_weights: Path
) -> None:
    test_images = torch.rand((20, 1, 28, 28))
    result = compare_priors(load_weights(tiny_weights), trained_classifier[1], test_images, n=10)
    assert set(result["priors"]) == {"standard"}


def test_vae_eval_quality_scores_both_priors_and_saves_grids(
    trained_classifier: tuple[Path, Classifier],
    tiny_weights: Path,
    idx_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    latents = torch.randn((60, 4), generator=torch.Generator().manual_seed(0))
    attach_prior(tiny_weights, fit_prior(latents, components=2))
    grids = tmp_path / "grids"
    argv = [str(tiny_weights), "--data-dir", str(idx_dir), "--iwae-k", "1", "--quality"]
    argv += ["--quality-samples", "30", "--classifier", str(trained_classifier[0])]
    assert evaluate_main([*argv, "--format", "json", "--grids", str(grids)]) == 0
    quality = json.loads(capsys.readouterr().out)["quality"]
    assert quality["samples"] == 30 and quality["reference"]["images"] == 32
    assert set(quality["priors"]) == {"standard", "fitted"}
    for name in ("standard", "fitted"):
        with Image.open(grids / f"samples_{name}.png") as grid:
            assert grid.size == (8 * 30 + 2, 8 * 30 + 2)  # 8 x 8 tiles of 28 px, 2 px apart
    assert evaluate_main(argv) == 0
    text = capsys.readouterr().out
    assert "Fréchet distance" in text and "\nfitted " in text and "30 samples" in text


def test_vae_eval_quality_refuses_a_missing_classifier(
    tiny_weights: Path, idx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none.safetensors"
    argv = [str(tiny_weights), "--data-dir", str(idx_dir), "--iwae-k", "1", "--quality"]
    assert evaluate_main([*argv, "--classifier", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vae-eval: error:") and "classifier file not found" in err
    assert "\n" not in err

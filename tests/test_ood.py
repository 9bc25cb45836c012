"""vae-eval --ood: the OOD sets, the detection figures, the report on a tiny model, and the
bundled models' calibration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vae_service.model import load_weights
from vae_service.model.anomaly import Calibration, score_images
from vae_service.model.pretrained import BUNDLED_MODELS, DEFAULT_WEIGHTS
from vae_service.model.prior import FittedPrior
from vae_service.training import calibrate, evaluate
from vae_service.training.ood_metrics import detection
from vae_service.training.ood_sets import OOD_SETS, TARGETLESS, ood_sets

DATA = Path("/usr/share/datasets/fashion-mnist")


def test_every_set_has_the_data_shape_and_repeats_with_its_seed() -> None:
    data = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sets = ood_sets(data, 10, seed=1)
    assert tuple(sets) == OOD_SETS and set(sets) >= TARGETLESS
    for name, images in sets.items():
        assert images.shape == (10, 3, 32, 32), name
        assert images.min() >= 0 and images.max() <= 1, name
        assert not torch.equal(images, data[:10]), name
    again = ood_sets(data, 10, seed=1)
    assert all(torch.equal(again[name], images) for name, images in sets.items())
    assert not torch.equal(ood_sets(data, 10, seed=2)["uniform-noise"], sets["uniform-noise"])


def test_shuffled_images_keep_their_pixels() -> None:
    data = torch.rand(4, 1, 28, 28)
    shuffled = ood_sets(data, 4)["pixel-shuffled"]
    assert torch.equal(shuffled.flatten(1).sort().values, data.flatten(1).sort().values)


def test_detection_figures_of_separated_swapped_and_mixed_scores() -> None:
    low, high = torch.arange(100.0), torch.arange(100.0) + 1000
    assert detection(low, high) == {"auroc": 1.0, "aupr": 1.0, "fpr_at_95_tpr": 0.0}
    swapped = detection(high, low)
    assert swapped["auroc"] == 0.0 and swapped["fpr_at_95_tpr"] == 1.0
    assert detection(low, low + 0.5)["auroc"] == pytest.approx(0.5, abs=0.02)


@pytest.fixture
def calibrated(tiny_weights: Path, idx_dir: Path) -> Path:
    flags = ["--fit-limit", "48", "--components", "2", "--k", "2", "--data", "fashion-mnist"]
    assert calibrate.main([str(tiny_weights), "--data-dir", str(idx_dir), *flags]) == 0
    return tiny_weights


def run_ood(weights: Path, idx_dir: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    flags = ["--limit-test", "8", "--iwae-k", "2", "--ood", "--ood-limit", "8", "--format", "json"]
    capsys.readouterr()
    assert evaluate.main([str(weights), "--data-dir", str(idx_dir), *flags]) == 0
    return json.loads(capsys.readouterr().out)["ood"]


def test_vae_eval_ood_reports_every_set_side_by_side(
    calibrated: Path, idx_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = run_ood(calibrated, idx_dir, capsys)
    assert report["score"] == "dose" and report["k"] == 2 and report["n_in_distribution"] == 8
    assert report["flag_rate"] is not None and 0 <= report["flag_rate"] <= 1
    assert tuple(report["sets"]) == OOD_SETS
    for name, row in report["sets"].items():
        assert row["n"] == 8 and (row["target"] is None) == (name in TARGETLESS)
        assert 0 <= row["flagged"] <= 1
        for figures in (row["score"], row["neg_elbo"], row["complexity_corrected"]):
            assert set(figures) == {"auroc", "aupr", "fpr_at_95_tpr"}
            assert all(0 <= v <= 1 for v in figures.values())


def test_the_ood_table_in_text(
    calibrated: Path, idx_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--limit-test", "4", "--iwae-k", "2", "--ood", "--ood-limit", "4"]
    assert evaluate.main([str(calibrated), "--data-dir", str(idx_dir), *flags]) == 0
    out = capsys.readouterr().out
    assert (
        "dose AUROC" in out
        and "-ELBO AUROC" in out
        and "S(x) AUROC" in out
        and "none (reported only)" in out
    )
    assert "flagged at nominal 1%" in out


def test_an_uncalibrated_model_is_scored_without_a_flag_rate(
    tiny_weights: Path, idx_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = run_ood(tiny_weights, idx_dir, capsys)
    assert report["score"] == "likelihood" and report["flag_rate"] is None
    assert all(row["flagged"] is None for row in report["sets"].values())


def test_a_bad_ood_limit_exits_2(tiny_weights: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([str(tiny_weights), "--ood", "--ood-limit", "0"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("name", ["fashion-mnist", "fashion-mnist-sharp"])
def test_the_bundled_fashion_mnist_models_ship_calibrated(name: str) -> None:
    ckpt = load_weights(BUNDLED_MODELS / f"{name}.safetensors")
    calibration = Calibration.from_checkpoint(ckpt)
    assert calibration is not None
    described = calibration.describe()
    assert described["calibration"] == {"n": 5000, "source": "fashion-mnist test split, first half"}
    assert described["fit"]["source"] == "fashion-mnist train split"
    assert described["threshold"] == calibration.threshold(0.01)


@pytest.mark.skipif(not DATA.is_dir(), reason=f"Fashion-MNIST not installed at {DATA}")
def test_the_default_model_flags_noise_and_passes_most_test_images() -> None:
    from vae_service.training.data import load_idx_split

    ckpt = load_weights(DEFAULT_WEIGHTS)
    calibration, prior = Calibration.from_checkpoint(ckpt), FittedPrior.from_checkpoint(ckpt)
    garments = load_idx_split(DATA, "test").images[-200:]  # from the half not calibrated on
    noise = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    scored = score_images(ckpt.model, torch.cat([garments, noise]), calibration, prior=prior)
    assert scored.p_value is not None
    flagged = scored.p_value <= 0.01
    assert flagged[200:].all() and flagged[:200].float().mean() <= 0.05

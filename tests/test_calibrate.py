"""vae-calibrate: the calibration round-trips through the weights file, a corrupt or stale
one is refused, tools that change the model drop it, and bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vae_service.model import load_weights, save_weights
from vae_service.model.anomaly import Calibration, score_images
from vae_service.model.calibration import ANOMALY_PREFIX
from vae_service.model.weights import Checkpoint, WeightsError
from vae_service.training import calibrate, fit_prior

FAST = ["--fit-limit", "48", "--components", "2", "--k", "2", "--batch-size", "16"]


def run_calibrate(weights: Path, idx_dir: Path, *more: str) -> int:
    return calibrate.main(
        [str(weights), "--data-dir", str(idx_dir), "--data", "fashion-mnist", *FAST, *more]
    )


@pytest.fixture
def calibrated(tiny_weights: Path, idx_dir: Path) -> Path:
    assert run_calibrate(tiny_weights, idx_dir) == 0
    return tiny_weights


def test_the_calibration_round_trips_through_the_weights_file(
    tiny_weights: Path, idx_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_calibrate(tiny_weights, idx_dir) == 0
    out = capsys.readouterr().out
    assert "fitted a 2-component DoSE density to 48 images" in out
    assert "no threshold at 1%: 16 calibration images are too few" in out
    ckpt = load_weights(tiny_weights)
    cal = Calibration.from_checkpoint(ckpt)
    assert cal is not None
    described = ckpt.metadata["anomaly"]
    assert described == json.loads(json.dumps(cal.describe()))
    assert described["calibration"] == {"n": 16, "source": "fashion-mnist test split, first half"}
    assert described["fit"] == {"n": 48, "source": "fashion-mnist train split"}
    assert cal.k == 2 and len(cal.scores) == 16
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    scores = score_images(ckpt.model, images, cal, k=2)
    assert scores.p_value is not None and ((scores.p_value > 0) & (scores.p_value <= 1)).all()


def test_calibrating_twice_replaces_the_first(calibrated: Path, idx_dir: Path) -> None:
    assert run_calibrate(calibrated, idx_dir, "--calibration-limit", "5") == 0
    ckpt = load_weights(calibrated)
    cal = Calibration.from_checkpoint(ckpt)
    assert cal is not None and len(cal.scores) == 5
    assert sum(k.startswith(ANOMALY_PREFIX) for k in ckpt.extra_tensors) == 6


def test_a_folder_of_images_calibrates(calibrated: Path, idx_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "held-out"
    folder.mkdir()
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (28, 28), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    assert run_calibrate(calibrated, idx_dir, "--images", str(folder)) == 0
    meta = load_weights(calibrated).metadata["anomaly"]
    assert meta["calibration"] == {"n": 3, "source": f"folder {folder}"}


def rewrite(ckpt: Checkpoint, tensors: dict[str, torch.Tensor], **meta: object) -> Checkpoint:
    metadata = {k: v for k, v in ckpt.metadata.items() if k not in ("config", "format_version")}
    metadata["anomaly"] = {**ckpt.metadata["anomaly"], **meta}
    save_weights(ckpt.path, ckpt.model, metadata, tensors)
    return load_weights(ckpt.path)


def corrupt(ckpt: Checkpoint, name: str, value: torch.Tensor | None) -> dict[str, torch.Tensor]:
    tensors = dict(ckpt.extra_tensors)
    if value is None:
        del tensors[ANOMALY_PREFIX + name]
    else:
        tensors[ANOMALY_PREFIX + name] = value
    return tensors


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("scores", None, "are not"),
        ("scores", torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64), "not sorted"),
        ("scale", torch.tensor([1.0, 1, float("nan"), 1, 1]), "non-finite"),
        ("scale", torch.tensor([1.0, 1, 0, 1, 1]), "positive"),
        ("means", torch.zeros(2, 4), "shape"),
        ("weights", torch.tensor([0.9, 0.9]), "sum to 1"),
    ],
)
def test_a_corrupt_calibration_is_a_weights_error(
    calibrated: Path, name: str, value: torch.Tensor | None, problem: str
) -> None:
    ckpt = load_weights(calibrated)
    broken = rewrite(ckpt, corrupt(ckpt, name, value))
    with pytest.raises(WeightsError, match=f"corrupt anomaly calibration: .*{problem}"):
        Calibration.from_checkpoint(broken)


def test_corrupt_calibration_metadata_is_a_weights_error(calibrated: Path) -> None:
    ckpt = load_weights(calibrated)
    broken = rewrite(ckpt, ckpt.extra_tensors, kind="likelihood-ratio")
    with pytest.raises(WeightsError, match="unknown score kind"):
        Calibration.from_checkpoint(broken)


def test_a_calibration_of_other_weights_is_refused(calibrated: Path) -> None:
    ckpt = load_weights(calibrated)
    with torch.no_grad():
        ckpt.model.decoder.to_image.bias.add_(0.01)
    with pytest.raises(WeightsError, match="rerun vae-calibrate"):
        Calibration.from_checkpoint(ckpt)


def test_fitting_a_new_prior_drops_the_calibration_and_says_so(
    calibrated: Path, idx_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(calibrated), "--data-dir", str(idx_dir), "--components", "2"]
    assert fit_prior.main(args) == 0
    assert "dropped the anomaly calibration" in capsys.readouterr().out
    ckpt = load_weights(calibrated)
    assert "anomaly" not in ckpt.metadata and Calibration.from_checkpoint(ckpt) is None
    assert not any(k.startswith(ANOMALY_PREFIX) for k in ckpt.extra_tensors)


def test_weights_naming_no_data_set_need_data(
    tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = load_weights(tiny_weights)
    save_weights(tiny_weights, tiny.model, {"training": {}})
    assert calibrate.main([str(tiny_weights), *FAST]) == 2
    assert "names no data set: give --data" in capsys.readouterr().err


def test_a_missing_weights_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert calibrate.main([str(tmp_path / "none.safetensors")]) == 2
    assert "file not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags", [["--k", "0"], ["--k", "100000"], ["--fit-limit", "0"], ["--components", "0"]]
)
def test_bad_numbers_exit_2(tiny_weights: Path, flags: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        calibrate.main([str(tiny_weights), *flags])
    assert exit_info.value.code == 2


def test_images_that_are_not_a_folder_exit_2(tiny_weights: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        calibrate.main([str(tiny_weights), "--images", str(tmp_path / "missing")])
    assert exit_info.value.code == 2


def test_an_empty_image_folder_exits_2(
    tiny_weights: Path, idx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert run_calibrate(tiny_weights, idx_dir, "--images", str(tmp_path / "empty")) == 2
    assert "no image files" in capsys.readouterr().err

"""The procedural ``shapes`` data set (training/shapes.py) and its loader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae_service.training import shapes
from vae_service.training.data import DataError, load_dataset


def test_generation_is_deterministic_in_the_seed():
    images, factors = shapes.generate(32, seed=7)
    again, factors_again = shapes.generate(32, seed=7, chunk=5)  # chunking changes nothing
    assert torch.equal(factors, factors_again) and torch.equal(images, again)
    other_images, other_factors = shapes.generate(32, seed=8)
    assert not torch.equal(factors, other_factors) and not torch.equal(images, other_images)


def test_images_and_factors_are_in_range():
    images, factors = shapes.generate(500, seed=0)
    assert images.shape == (500, 3, 64, 64) and images.dtype == torch.float32
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert factors.shape == (500, len(shapes.FACTORS)) and factors.dtype == torch.int64
    sizes = torch.tensor(list(shapes.FACTORS.values()))
    assert (factors >= 0).all() and (factors < sizes).all()
    # 500 uniform draws reach every value of every factor (at most 10 values each).
    assert [len(factors[:, k].unique()) for k in range(7)] == sizes.tolist()


def test_each_factor_changes_the_image():
    base = torch.tensor([[1, 3, 2, 4, 3, 3, 1]])
    reference = shapes.render(base)
    for k, levels in enumerate(shapes.FACTORS.values()):
        changed = base.clone()
        changed[0, k] = (changed[0, k] + 1) % levels
        assert not torch.allclose(shapes.render(changed), reference), shapes.FACTOR_NAMES[k]


def test_background_pixels_are_the_background_grey():
    images = shapes.render(torch.tensor([[0, 0, 0, 0, 0, 0, 3]]))
    assert images[0, :, 0, 0].tolist() == pytest.approx([0.75] * 3)  # a corner, far from it


def test_train_and_test_splits_use_different_seeds(monkeypatch: pytest.MonkeyPatch):
    assert shapes.TRAIN_SEED != shapes.TEST_SEED
    monkeypatch.setattr(shapes, "TRAIN_SIZE", 40)
    monkeypatch.setattr(shapes, "TEST_SIZE", 40)
    data = load_dataset("shapes", image_size=64, channels=3)
    assert data.name == "shapes" and data.image_shape == (3, 64, 64)
    assert data.train.factors is not None and data.test.factors is not None
    assert not torch.equal(data.train.factors, data.test.factors)
    assert torch.equal(data.test.factors, shapes.generate(40, shapes.TEST_SEED)[1])
    limited = data.test.subset(5)
    assert limited.factors is not None and torch.equal(limited.factors, data.test.factors[:5])


@pytest.mark.parametrize(("size", "channels"), [(28, 1), (28, 3), (64, 1)])
def test_shapes_at_another_size_is_a_data_error(size: int, channels: int):
    with pytest.raises(DataError, match="shapes are 64x64 RGB: use --image-size 64 --channels 3"):
        load_dataset("shapes", image_size=size, channels=channels)


def test_speed_benchmark_prints_images_per_second():
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.shapes_speed", "--n", "64", "--repeats", "1"],
        cwd=root, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("shapes: ") and "images/s (64 images" in done.stdout

"""The training report: metrics JSON, loss curve, sample and reconstruction grids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vae_service.model import VAE, VAEConfig
from vae_service.training.report import (
    make_grid,
    plot_loss_curve,
    save_history,
    save_image_grid,
    save_reconstruction_grid,
    save_sample_grid,
    write_report,
)

HISTORY = [
    {"epoch": e, "train": {"neg_elbo": 300.0 - 20 * e, "recon": 0.0, "kl": 0.0},
     "test": {"neg_elbo": 290.0 - 15 * e, "recon": 0.0, "kl": 0.0}, "seconds": 1.5}
    for e in (1, 2, 3)
]  # fmt: skip


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def test_make_grid_places_tiles_row_by_row_on_white():
    images = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 1, 4, 4) / 10
    grid = make_grid(images, nrow=3, padding=2)
    assert grid.shape == (1, 2 * 6 + 2, 3 * 6 + 2)
    assert grid[0, 2, 2] == 0.0 and grid[0, 2, 8] == pytest.approx(0.1)
    assert grid[0, 8, 8] == pytest.approx(0.4)  # fifth image: second row, second column
    assert grid[0, 0, 0] == 1 and grid[0, 8, 14] == 1  # padding and the empty sixth slot


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (3, "RGB")])
def test_save_image_grid_writes_a_png(tmp_path: Path, channels: int, mode: str):
    images = torch.rand(6, channels, 8, 8, generator=torch.Generator().manual_seed(0))
    path = save_image_grid(tmp_path / "sub" / "grid.png", images, nrow=3)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == mode and img.size == (3 * 10 + 2, 2 * 10 + 2)
    pixels = _pixels(path)
    first = pixels[2:10, 2:10]
    expected = (images[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert (first == expected.squeeze(2) if channels == 1 else first == expected).all()


def test_sample_grid_is_seeded(tmp_path: Path, tiny_model: VAE):
    a = _pixels(save_sample_grid(tmp_path / "a.png", tiny_model, n=9, seed=1))
    b = _pixels(save_sample_grid(tmp_path / "b.png", tiny_model, n=9, seed=1))
    c = _pixels(save_sample_grid(tmp_path / "c.png", tiny_model, n=9, seed=2))
    assert a.shape == (3 * 30 + 2, 3 * 30 + 2)
    assert (a == b).all() and not (a == c).all()


def test_reconstruction_grid_puts_each_original_beside_its_reconstruction(tmp_path: Path):
    cfg = VAEConfig(image_size=8, channels=3, latent_dim=2, widths=(4,), hidden_dim=8)
    model = VAE(cfg).eval()
    images = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    pixels = _pixels(save_reconstruction_grid(tmp_path / "r.png", model, images, n=10))
    assert pixels.shape == (2 * 10 + 2, 16 * 10 + 2, 3)  # 8 pairs a row, two rows
    original = (images[1] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert (pixels[2:10, 22:30] == original).all()  # second pair's left tile
    with torch.no_grad():
        recon = model.decode(model.encode(images[1:2])[0])[0]
    expected = (recon * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.abs(pixels[2:10, 32:40].astype(int) - expected).max() <= 1


def test_history_json_and_loss_curve(tmp_path: Path):
    path = save_history(tmp_path / "metrics.json", HISTORY)
    assert json.loads(path.read_text()) == HISTORY
    curve = plot_loss_curve(tmp_path / "loss.png", HISTORY)
    with Image.open(curve) as img:
        assert img.format == "PNG" and img.size == (600, 400)


def test_write_report_writes_the_four_files(tmp_path: Path, tiny_model: VAE):
    images = torch.rand(40, 1, 28, 28)
    paths = write_report(tmp_path / "report", tiny_model, HISTORY, images, "cpu")
    names = {p.name for p in (tmp_path / "report").iterdir()}
    assert names == {"metrics.json", "loss_curve.png", "samples.png", "reconstructions.png"}
    assert set(paths) == {"metrics", "loss_curve", "samples", "reconstructions"}
    assert _pixels(paths["samples"]).shape == (8 * 30 + 2, 8 * 30 + 2)
    assert _pixels(paths["reconstructions"]).shape == (4 * 30 + 2, 16 * 30 + 2)

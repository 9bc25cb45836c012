"""MIG (training/disentangle.py) on codes whose answer is known, and labelled traversals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import mutual_info_score

from vae_service.model import VAE, VAEConfig
from vae_service.training import shapes
from vae_service.training.disentangle import (
    active_dims,
    discretise,
    entropy,
    evaluate_disentanglement,
    format_disentanglement,
    mutual_information_gap,
    save_traversals,
    traversal_grid,
)
from vae_service.training.report import GRID_PADDING

N = 5000


@pytest.fixture(scope="module")
def factors() -> torch.Tensor:
    return shapes.sample_factors(N, seed=3)


def test_codes_that_copy_the_factors_score_near_one(factors: torch.Tensor):
    result = mutual_information_gap(factors.float(), factors, names=shapes.FACTOR_NAMES)
    # 20 bins keep every factor value (at most 10) in a bin of its own: I(z_k; v_k) = H(v_k).
    assert torch.allclose(result.mi.diagonal(), result.entropies)
    assert result.mig > 0.99 and (result.gaps > 0.98).all()
    assert result.top_factor(1) == ("hue", pytest.approx(1.0))


def test_random_codes_score_near_zero(factors: torch.Tensor):
    codes = torch.randn(N, 10, generator=torch.Generator().manual_seed(0))
    result = mutual_information_gap(codes, factors)
    assert 0 <= result.mig < 0.01
    # The plug-in estimate's upward bias, (bins − 1)(|v| − 1) / 2N nats (Miller 1955).
    assert float(result.mi.max()) < 3 * 19 * 9 / (2 * N)


def test_a_factor_in_two_dimensions_has_no_gap(factors: torch.Tensor):
    codes = torch.cat([factors[:, :1], factors], dim=1).float()  # shape in z0 and z1
    result = mutual_information_gap(codes, factors, names=shapes.FACTOR_NAMES)
    assert float(result.gaps[0]) == pytest.approx(0, abs=1e-9)
    assert (result.gaps[1:] > 0.98).all()
    assert result.mig == pytest.approx(float(result.gaps[1:].sum()) / 7)


def test_mi_matches_sklearn_on_histogram_bins(factors: torch.Tensor):
    """An independent route: numpy's equal-width histogram edges (as disentanglement_lib
    discretises) and scikit-learn's mutual information, also in nats."""
    gen = torch.Generator().manual_seed(1)
    codes = factors[:, :3].double() + torch.randn(N, 3, generator=gen, dtype=torch.float64)
    result = mutual_information_gap(codes, factors, bins=7)
    for j in range(3):
        edges = np.histogram(codes[:, j].numpy(), bins=7)[1]
        binned = np.digitize(codes[:, j].numpy(), edges[:-1])
        assert (binned - 1 == discretise(codes, 7)[:, j].numpy()).all()
        for k in range(7):
            expected = mutual_info_score(binned, factors[:, k].numpy())
            assert float(result.mi[j, k]) == pytest.approx(expected, abs=1e-9)


def test_entropy_and_discretise_edges():
    assert entropy(torch.tensor([0, 1, 2, 3])) == pytest.approx(np.log(4))
    codes = torch.tensor([[0.0, 5.0], [0.5, 5.0], [1.0, 5.0]])
    assert discretise(codes, 4).tolist() == [[0, 0], [2, 0], [3, 0]]  # max in the last bin


@pytest.mark.parametrize("bins", [0, 1, -3, 2.5, True])
def test_bins_must_be_an_integer_of_at_least_two(factors: torch.Tensor, bins):
    with pytest.raises(ValueError, match="bins must be an integer of at least 2"):
        mutual_information_gap(factors.float(), factors, bins=bins)


@pytest.mark.parametrize(
    ("codes", "facts", "problem"),
    [
        (torch.zeros(10, 3), torch.zeros(9, 2, dtype=torch.long), "must pair up"),
        (torch.zeros(10), torch.zeros(10, 2, dtype=torch.long), "must pair up"),
        (torch.rand(10, 1), torch.arange(10)[:, None], "at least 2 latent dimensions"),
        (torch.full((4, 2), float("nan")), torch.arange(4)[:, None], "finite"),
        (torch.rand(4, 2), torch.zeros(4, 1, dtype=torch.long), "'v0' takes one value"),
    ],
)  # fmt: skip
def test_bad_inputs_are_named(codes, facts, problem):
    with pytest.raises(ValueError, match=problem):
        mutual_information_gap(codes, facts)


@pytest.fixture(scope="module")
def tiny_rgb() -> VAE:
    torch.manual_seed(0)
    cfg = VAEConfig(image_size=64, channels=3, latent_dim=4, widths=(8, 8, 8, 8), hidden_dim=16)
    return VAE(cfg).eval()


def test_traversal_grid_sweeps_one_dimension_per_row(tiny_rgb: VAE):
    image = shapes.generate(1, seed=0)[0][0]
    grid = traversal_grid(tiny_rgb, image, dims=[0, 3], span=2.0, steps=5)
    assert grid.shape == (2, 5, 3, 64, 64)
    assert float(grid.min()) >= 0 and float(grid.max()) <= 1
    with torch.no_grad():
        z = tiny_rgb.encode(image[None])[0].clone()
        z[0, 3] = -1.0  # the second column of row 1: −2 + 1 · (4 / 4)
        assert torch.allclose(grid[1, 1], tiny_rgb.decode(z)[0], atol=1e-6)
    for bad in ([], [4], [-1]):
        with pytest.raises(ValueError, match="dims must be"):
            traversal_grid(tiny_rgb, image, dims=bad)


def test_saved_traversals_have_a_label_margin(tiny_rgb: VAE, tmp_path: Path):
    grid = traversal_grid(tiny_rgb, torch.rand(3, 64, 64), dims=[1, 2], steps=3)
    path = save_traversals(tmp_path / "t" / "traversals.png", grid, ["z1: hue", "z2: x"])
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("L"))
    width = 3 * (64 + GRID_PADDING) + GRID_PADDING
    assert pixels.shape[0] == 2 * (64 + GRID_PADDING) + GRID_PADDING
    margin = pixels.shape[1] - width
    assert margin > 20
    assert (pixels[:, :margin] < 128).any()  # the labels, in black on white
    with pytest.raises(ValueError, match="1 labels for 2 rows"):
        save_traversals(tmp_path / "x.png", grid, ["z1"])


def test_evaluate_disentanglement_traverses_every_dimension_when_none_is_active(
    tiny_rgb: VAE, tmp_path: Path
):
    images, facts = shapes.generate(64, seed=2)
    summary = evaluate_disentanglement(
        tiny_rgb, images, facts, shapes.FACTOR_NAMES, traversals=tmp_path
    )
    assert summary["active_dims"] == []  # a random-init encoder barely reacts to its input
    assert [row["dim"] for row in summary["latents"]] == [0, 1, 2, 3]
    assert set(summary["factors"]) == set(shapes.FACTOR_NAMES)
    with Image.open(summary["traversals"]) as img:
        assert img.height == 4 * (64 + GRID_PADDING) + GRID_PADDING
    text = format_disentanglement(summary)
    assert "20 equal-width bins" in text and "active (Cov_x(E_q[z_u]) > 0.01): none" in text


def test_active_dims_use_the_active_unit_threshold():
    codes = torch.stack([torch.arange(100.0), torch.full((100,), 3.0), 0.05 * torch.randn(100)])
    assert active_dims(codes.T) == [0]

"""vae-eval on data with known factors: MIG, top factors and --traversals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from vae_service.model import VAE, VAEConfig, save_weights
from vae_service.model.loss import elbo_terms
from vae_service.training import shapes
from vae_service.training.evaluate import main

TINY_RGB = VAEConfig(image_size=64, channels=3, latent_dim=4, widths=(8, 8, 8, 8), hidden_dim=16)


@pytest.fixture(scope="module")
def shapes_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny RGB VAE after 40 Adam steps on 256 shapes: a random-init encoder's means
    hardly vary, and a few steps make some dimensions active (a few seconds)."""
    torch.manual_seed(0)
    model = VAE(TINY_RGB)
    images = shapes.generate(256, seed=0)[0]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(40):
        x = images[(step % 8) * 32 : (step % 8 + 1) * 32]
        logits, mean, logvar = model(x)
        opt.zero_grad()
        elbo_terms(logits, x, mean, logvar, TINY_RGB).loss.backward()
        opt.step()
    meta = {"data": {"name": "shapes", "shape": [3, 64, 64]}, "training": {"steps": 40}}
    folder = tmp_path_factory.mktemp("shapes")
    return save_weights(folder / "tiny-shapes.safetensors", model.eval(), meta)


@pytest.fixture(autouse=True)
def few_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Render 16 train and 300 test images, not 45,000: vae-eval reads only the test split."""
    monkeypatch.setattr(shapes, "TRAIN_SIZE", 16)
    monkeypatch.setattr(shapes, "TEST_SIZE", 300)


def _eval(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


FAST = ("--data", "shapes", "--limit-test", "200", "--iwae-k", "2", "--device", "cpu")


def test_text_reports_mig_and_top_factors(shapes_weights: Path, tmp_path: Path, capsys):
    code, out, err = _eval(capsys, str(shapes_weights), *FAST, "--traversals", str(tmp_path))
    assert code == 0, err
    assert "shapes test split, 200 images" in out
    assert "MIG" in out and "Chen et al. 2018" in out and "20 equal-width bins" in out
    assert all(name in out for name in shapes.FACTOR_NAMES)
    assert "active (Cov_x(E_q[z_u]) > 0.01): z" in out
    png = tmp_path / "traversals.png"
    assert f"traversals    {png}" in out
    with Image.open(png) as img:
        assert img.mode == "RGB" and img.height % (64 + 2) == 2


def test_json_has_the_disentanglement_figures(shapes_weights: Path, tmp_path: Path, capsys):
    path = tmp_path / "eval.json"
    code, out, _ = _eval(
        capsys, str(shapes_weights), *FAST, "--mig-bins", "10", "--format", "json",
        "--json", str(path),
    )  # fmt: skip
    assert code == 0
    d = json.loads(out)["disentanglement"]
    assert json.loads(path.read_text())["disentanglement"] == d
    assert 0 <= d["mig"] <= 1 and d["bins"] == 10 and "10 equal-width bins" in d["discretisation"]
    assert list(d["factors"]) == list(shapes.FACTOR_NAMES)
    assert len(d["mi"]) == 4 and len(d["mi"][0]) == 7 and "traversals" not in d
    assert d["active_dims"] == [row["dim"] for row in d["latents"] if row["active"]]
    assert d["active_dims"], "40 training steps leave no active dimension"
    assert all(row["factor"] in shapes.FACTOR_NAMES for row in d["latents"])


def test_traversals_on_data_without_factors_exit_2(
    tiny_weights: Path, idx_dir: Path, tmp_path: Path, capsys
):
    args = ["--data-dir", str(idx_dir), "--traversals", str(tmp_path / "out"), "--iwae-k", "2"]
    code, out, err = _eval(capsys, str(tiny_weights), *args)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err == (
        "vae-eval: error: --traversals needs data with known factors (shapes), not fashion-mnist\n"
    )
    assert not (tmp_path / "out").exists()


def test_no_mig_without_factors(tiny_weights: Path, idx_dir: Path, capsys):
    code, out, _ = _eval(capsys, str(tiny_weights), "--data-dir", str(idx_dir), "--iwae-k", "2")
    assert code == 0 and "MIG" not in out


def test_mig_bins_below_two_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["w.safetensors", "--mig-bins", "1"])
    assert info.value.code == 2
    assert "--mig-bins must be at least 2, got 1" in capsys.readouterr().err


def test_help_names_shapes_and_the_new_options(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "shapes" in out and "--traversals" in out and "--mig-bins" in out

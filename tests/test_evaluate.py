"""Evaluation figures (IWAE bound, MSE/PSNR, active units) and the vae-eval CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from vae_service.model import VAE, likelihood
from vae_service.training.evaluate import main
from vae_service.training.metrics import (
    active_units,
    evaluate_elbo,
    iwae_nll,
    psnr,
    reconstruction_error,
)

RESULT_KEYS = {
    "data", "weights", "sha256", "n_images", "neg_elbo", "recon", "kl", "iwae_nll", "iwae_k",
    "bound_prior",
    "mse", "psnr", "recon_sharpness", "sharpness", "active_units", "latent_dim", "seed",
    "device", "seconds",
}  # fmt: skip


def test_iwae_with_one_sample_is_the_elbo_in_expectation(spread_model: VAE, binary_images: Tensor):
    images = binary_images.repeat(50, 1, 1, 1)
    for seed in range(2):
        # Same seed and batch size: the same z draws, so only the KL differs (closed form
        # in the ELBO, one-sample Monte Carlo in the IWAE estimate).
        elbo = evaluate_elbo(spread_model, images, batch_size=100, seed=seed)
        assert elbo["kl"] > 4
        one = iwae_nll(spread_model, images, k=1, batch_size=100, seed=seed)
        assert one == pytest.approx(elbo["neg_elbo"], abs=0.25)


def test_iwae_bound_tightens_as_k_grows(spread_model: VAE, binary_images: Tensor):
    nll = {k: iwae_nll(spread_model, binary_images, k=k, seed=0) for k in (1, 10, 100)}
    assert nll[1] > nll[10] + 1 > nll[100] + 1


def test_iwae_is_seeded(spread_model: VAE, binary_images: Tensor):
    a = iwae_nll(spread_model, binary_images, k=20, seed=5)
    assert a == iwae_nll(spread_model, binary_images, k=20, seed=5)
    assert a != iwae_nll(spread_model, binary_images, k=20, seed=6)
    with pytest.raises(ValueError, match="k must be at least 1"):
        iwae_nll(spread_model, binary_images, k=0)


def test_iwae_decodes_in_bounded_chunks_with_the_same_result(
    spread_model: VAE, binary_images: Tensor, monkeypatch: pytest.MonkeyPatch
):
    rows: list[int] = []
    decode = spread_model.decode_logits
    monkeypatch.setattr(spread_model, "decode_logits", lambda z: rows.append(len(z)) or decode(z))
    whole = iwae_nll(spread_model, binary_images, k=50, batch_size=8, seed=2)
    assert rows == [8 * 50] * 2
    rows.clear()
    monkeypatch.setattr(likelihood, "DECODE_ROWS", 8 * 16)
    assert iwae_nll(spread_model, binary_images, k=50, batch_size=8, seed=2) == pytest.approx(whole)
    assert rows == [8 * 16, 8 * 16, 8 * 16, 8 * 2] * 2


class GainAutoencoder(nn.Module):
    """A test double on 2 x 2 images: the latent is the image itself, and decoding
    scales it by 1.2, so an image of constant value v is reconstructed with error 0.2 v."""

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.flatten(1), torch.zeros_like(x.flatten(1))

    def decode(self, z: Tensor) -> Tensor:
        return 1.2 * z.view(-1, 1, 2, 2)


def test_psnr_formula_and_identical_images():
    assert psnr(torch.tensor([0.01, 1e-4])).tolist() == pytest.approx([20.0, 40.0])
    assert psnr(torch.tensor([0.0])).item() >= 100


def test_reconstruction_error_averages_per_image_psnr():
    images = torch.tensor([0.5, 0.05]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    # Errors 0.1 and 0.01: per-image MSE 1e-2 and 1e-4, PSNR 20 and 40 dB.
    result = reconstruction_error(GainAutoencoder(), images, batch_size=1)  # type: ignore[arg-type]
    assert result["mse"] == pytest.approx((1e-2 + 1e-4) / 2)
    assert result["psnr"] == pytest.approx((20 + 40) / 2)


def test_active_units_counts_latents_whose_mean_varies():
    gen = torch.Generator().manual_seed(0)
    images = torch.zeros(1000, 1, 2, 2)
    images[:, 0, 0, 0] = torch.rand(1000, generator=gen)  # variance 1/12: active
    images[:, 0, 0, 1] = 0.2 * torch.rand(1000, generator=gen)  # variance 1/300: inactive
    images[:, 0, 1, 0] = 0.5  # constant: inactive
    images[:, 0, 1, 1] = torch.rand(1000, generator=gen).round()  # variance 1/4: active
    assert active_units(GainAutoencoder(), images, batch_size=300) == 2  # type: ignore[arg-type]


def _eval(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_vae_eval_json(tiny_weights: Path, idx_dir: Path, tmp_path: Path, capsys):
    out_path = tmp_path / "eval.json"
    args = ["--data-dir", str(idx_dir), "--iwae-k", "3", "--device", "cpu", "--seed", "1"]
    code, out, _ = _eval(
        capsys, str(tiny_weights), *args, "--format", "json", "--json", str(out_path)
    )
    assert code == 0
    printed = json.loads(out)
    assert set(printed) == RESULT_KEYS
    assert json.loads(out_path.read_text()) == printed
    assert printed["n_images"] == 32 and printed["iwae_k"] == 3 and printed["latent_dim"] == 4
    assert printed["neg_elbo"] == pytest.approx(printed["recon"] + printed["kl"], rel=1e-5)


def test_vae_eval_text_and_limit(tiny_weights: Path, idx_dir: Path, capsys):
    code, out, _ = _eval(
        capsys, str(tiny_weights), "--data-dir", str(idx_dir), "--limit-test", "5", "--iwae-k", "2"
    )
    assert code == 0
    assert (
        "5 images" in out and "IWAE bound, k=2" in out and "PSNR" in out and "active units" in out
    )


@pytest.mark.parametrize("kind", ["missing", "garbage"])
def test_vae_eval_bad_weights_exit_2_with_one_line(tmp_path: Path, capsys, kind: str):
    path = tmp_path / "w.safetensors"
    if kind == "garbage":
        path.write_bytes(b"\x00garbage" * 10)
    code, out, err = _eval(capsys, str(path))
    assert code == 2 and out == ""
    assert err.startswith("vae-eval: error: ") and str(path) in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_vae_eval_bad_data_dir_exit_2(tiny_weights: Path, tmp_path: Path, capsys):
    code, _, err = _eval(capsys, str(tiny_weights), "--data-dir", str(tmp_path / "none"))
    assert code == 2 and "does not exist" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "bad", [[], ["w", "--iwae-k", "0"], ["w", "--limit-test", "-1"], ["w", "--format", "xml"],
            ["w", "--batch-size", "many"], ["w", "--unknown"]],
)  # fmt: skip
def test_vae_eval_bad_arguments(bad: list[str], capsys):
    with pytest.raises(SystemExit) as info:
        main(bad)
    assert info.value.code == 2
    assert "usage: vae-eval" in capsys.readouterr().err


def test_vae_eval_help_as_a_module():
    done = subprocess.run(
        [sys.executable, "-m", "vae_service.training.evaluate", "--help"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0
    for option in ("--iwae-k", "--limit-test", "--format", "--json", "--data-dir", "--device"):
        assert option in done.stdout


def test_compare_classic_prints_both_models(idx_dir: Path, tmp_path: Path):
    root = Path(__file__).resolve().parents[1]
    args = ["--data-dir", str(idx_dir), "--epochs", "1", "--batch-size", "32", "--no-progress",
            "--latent-dim", "4", "--widths", "4,8", "--hidden-dim", "16"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare_classic", *args,
         "--out", str(tmp_path / "cmp" / "vae.safetensors")],
        cwd=root, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = done.stdout.splitlines()[-2:]
    assert table[0].startswith("classic MLP 400-20") and table[1].startswith(
        "conv VAE z=4 (4, 8) h=16"
    )
    assert "64 train / 32 test images, 1 epochs" in done.stdout
    assert (tmp_path / "cmp" / "classic.ckpt.safetensors").is_file()

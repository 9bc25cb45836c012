"""The training CLI end to end on tiny subsets of Fashion-MNIST, on CPU. DDP (two CPU
ranks through torchrun, ending with bit-identical weights) is tested once, as the
Kubernetes training Job runs it: tests/test_k8s_train.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from vae_service.model import load_weights
from vae_service.model.vae import VAE
from vae_service.training import train as model_train
from vae_service.training.checkpoint import checkpoint_path
from vae_service.training.distributed import DistContext, parameter_digest
from vae_service.training.train import main

DATA = Path("/usr/share/datasets/fashion-mnist")
TINY_ARGS = [
    "--limit-train",
    "256",
    "--limit-test",
    "64",
    "--latent-dim",
    "4",
    "--widths",
    "4,8",
    "--hidden-dim",
    "16",
    "--batch-size",
    "64",
    "--no-progress",
]

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"Fashion-MNIST not installed at {DATA}")


def train(out: Path, *extra: str) -> int:
    return main([*TINY_ARGS, "--out", str(out), *extra])


@needs_data
def test_one_epoch_writes_weights_that_load_and_evaluate(tmp_path: Path) -> None:
    out = tmp_path / "w.safetensors"
    assert train(out, "--epochs", "1") == 0
    ckpt = load_weights(out)
    assert ckpt.config.latent_dim == 4
    assert ckpt.metadata["data"]["name"] == "fashion-mnist"
    assert ckpt.metadata["training"]["epochs"] == 1
    final = ckpt.metadata["training"]["final_test"]
    assert 0 < final["neg_elbo"] < 800 and final["kl"] >= 0
    report = tmp_path / "w.report"
    for name in ("metrics.json", "loss_curve.png", "samples.png", "reconstructions.png"):
        assert (report / name).stat().st_size > 0, name


@needs_data
def test_identical_seeds_give_identical_weights(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert train(a, "--epochs", "1", "--seed", "3") == 0
    assert train(b, "--epochs", "1", "--seed", "3") == 0
    assert parameter_digest(load_weights(a).model) == parameter_digest(load_weights(b).model)


@needs_data
def test_resume_matches_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight, resumed = tmp_path / "s.safetensors", tmp_path / "r.safetensors"
    assert train(straight, "--epochs", "2") == 0
    real_epoch = model_train.train_epoch

    def killed_in_epoch_2(trainer: Any, images: Any, epoch: int, step: int) -> Any:
        if epoch == 1:
            raise KeyboardInterrupt  # as if the job were stopped after epoch 1's checkpoint
        return real_epoch(trainer, images, epoch, step)

    monkeypatch.setattr(model_train, "train_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(resumed, "--epochs", "2")
    assert checkpoint_path(resumed).exists() and not resumed.exists()
    monkeypatch.setattr(model_train, "train_epoch", real_epoch)
    assert train(resumed, "--epochs", "2", "--resume") == 0
    assert load_weights(resumed).metadata["training"]["epochs"] == 2
    assert parameter_digest(load_weights(straight).model) == parameter_digest(
        load_weights(resumed).model
    )


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--epochs", "--beta", "--warmup-epochs", "--resume", "--device", "--data-dir"):
        assert flag in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--epochs", "0"],
        ["--batch-size", "-1"],
        ["--lr", "0"],
        ["--widths", "a,b"],
        ["--likelihood", "poisson"],
        ["--channels", "2"],
        ["--clip-grad", "0"],
        ["--storage", "int8"],
        ["--free-bits", "-0.1"],
        ["--head-width", "-1"],
    ],
)
def test_bad_arguments_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


@needs_data
def test_clipped_float16_run_stores_half_the_bytes(tmp_path: Path) -> None:
    full, half = tmp_path / "f32.safetensors", tmp_path / "f16.safetensors"
    assert train(full, "--epochs", "1", "--prior-components", "0") == 0
    assert train(half, "--epochs", "1", "--prior-components", "0", "--storage", "float16") == 0
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert load_weights(half).metadata["storage"] == "float16"
    clipped = tmp_path / "clipped.safetensors"
    assert train(clipped, "--epochs", "1", "--prior-components", "0", "--clip-grad", "1") == 0
    assert load_weights(clipped).metadata["training"]["args"]["clip_grad"] == 1.0


@needs_data
def test_free_bits_and_a_head_are_trained_and_recorded(tmp_path: Path) -> None:
    out = tmp_path / "w.safetensors"
    extra = ("--epochs", "1", "--prior-components", "0", "--free-bits", "0.1")
    assert train(out, *extra, "--head-width", "4") == 0
    ckpt = load_weights(out)
    assert ckpt.config.head_width == 4
    assert ckpt.metadata["training"]["args"]["free_bits"] == 0.1
    assert 0 < ckpt.metadata["training"]["final_test"]["neg_elbo"] < 800


@needs_data
def test_channels_last_trains_the_same_model_and_resumes(tmp_path: Path) -> None:
    plain, nhwc = tmp_path / "plain.safetensors", tmp_path / "nhwc.safetensors"
    extra = ("--epochs", "2", "--prior-components", "0")
    assert train(plain, *extra) == 0
    assert train(nhwc, *extra, "--channels-last") == 0
    a, b = load_weights(plain), load_weights(nhwc)
    assert b.metadata["training"]["args"]["channels_last"] is True
    # Only the convolutions' summation order may differ: the same run within rounding.
    elbo = [c.metadata["training"]["final_test"]["neg_elbo"] for c in (a, b)]
    assert abs(elbo[0] - elbo[1]) < 1e-4 * elbo[0]
    # Its checkpoint (stored NCHW) loads back into the NHWC model and optimiser.
    assert (
        train(nhwc, "--epochs", "3", "--prior-components", "0", "--channels-last", "--resume") == 0
    )
    assert load_weights(nhwc).metadata["training"]["epochs"] == 3


def test_channels_last_puts_the_convolutions_in_nhwc() -> None:
    args = model_train.build_parser().parse_args([*TINY_ARGS, "--channels-last"])
    model_train.positive_args(args, model_train.build_parser())
    model = VAE(model_train.model_config(args))
    model_train.Trainer(args, model, torch.device("cpu"), DistContext(), steps_per_epoch=1)
    conv = model.encoder.features[0][2].weight  # 4 x 4 x 3 x 3: NHWC differs from NCHW
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_bad_data_path_gets_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    assert main(["--data", str(missing), "--out", str(tmp_path / "w.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vae-train: error:") and str(missing) in err and "\n" not in err


def test_image_size_not_divisible_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (40, 40), 128).save(folder / "a.png")
    assert main(["--data", str(folder), "--image-size", "30", "--out", str(tmp_path / "w.st")]) == 2
    assert "not divisible" in capsys.readouterr().err

"""The sharpness measure, the adversarial pieces, vae-finetune and float16 storage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from vae_service.model import VAE, load_weights
from vae_service.model.config import VAEConfig
from vae_service.model.weights import save_weights
from vae_service.training import adversarial as A
from vae_service.training.compare import main as compare_main
from vae_service.training.finetune import main as finetune_main
from vae_service.training.metrics import data_sharpness, mean_gradient
from vae_service.training.quality import sharpness_ratios


def test_mean_gradient_of_a_step_edge() -> None:
    image = torch.zeros(1, 1, 4, 4)
    image[..., 2:] = 1.0  # one vertical edge: 4 of the 12 horizontal pairs differ by 1
    assert float(mean_gradient(image)[0]) == pytest.approx(4 / 24)


def test_blurring_lowers_the_mean_gradient() -> None:
    torch.manual_seed(0)
    sharp = (torch.rand(8, 1, 28, 28) > 0.5).float()
    blurred = torch.nn.functional.avg_pool2d(sharp, 3, stride=1, padding=1)
    assert data_sharpness(blurred) < 0.6 * data_sharpness(sharp)


def test_sharpness_ratios_name_the_prior(tiny_weights: Path) -> None:
    ckpt = load_weights(tiny_weights)
    images = torch.rand(16, 1, 28, 28)
    ratios = sharpness_ratios(ckpt, images, recon_sharpness=0.1, n=8)
    assert ratios["samples_prior"] == "standard"
    assert ratios["reconstructions"] == pytest.approx(0.1 / data_sharpness(images))
    assert ratios["samples"] > 0


@pytest.mark.parametrize(("size", "patches"), [(28, 7), (64, 8)])
def test_patch_discriminator_gives_one_logit_per_patch(size: int, patches: int) -> None:
    critic = A.PatchDiscriminator(3, width=8, layers=A.layers_for(size))
    assert critic(torch.rand(2, 3, size, size)).shape == (2, 1, patches, patches)


def test_critic_features_end_with_its_logits() -> None:
    critic = A.PatchDiscriminator(1, width=4, layers=2)
    images = torch.rand(2, 1, 28, 28)
    features = critic.features(images)
    assert [f.shape[1] for f in features] == [4, 8, 1]
    assert torch.equal(features[-1], critic(images))


def test_feature_matching_pulls_only_the_reconstruction() -> None:
    critic = A.PatchDiscriminator(1, width=4, layers=2)
    real = torch.rand(2, 1, 28, 28, requires_grad=True)
    same = A.feature_matching_loss(critic.features(real), critic.features(real))
    assert float(same) == 0.0
    fake = torch.rand(2, 1, 28, 28, requires_grad=True)
    loss = A.feature_matching_loss(critic.features(real), critic.features(fake))
    assert float(loss) > 0
    loss.backward()
    assert real.grad is None and fake.grad is not None and fake.grad.abs().sum() > 0


def test_hinge_losses() -> None:
    confident = A.discriminator_hinge_loss(torch.full((4,), 2.0), torch.full((4,), -2.0))
    fooled = A.discriminator_hinge_loss(torch.full((4,), -1.0), torch.full((4,), 1.0))
    assert float(confident) == 0.0 and float(fooled) == pytest.approx(2.0)
    assert float(A.generator_hinge_loss(torch.tensor([1.0, 3.0]))) == -2.0


def test_adaptive_weight_balances_gradient_norms() -> None:
    layer = torch.ones(3, requires_grad=True)
    rec, adv = (layer * 6).sum(), (layer * 2).sum()
    assert float(A.adaptive_weight(rec, adv, layer)) == pytest.approx(3.0, rel=1e-3)
    flat = (layer * 0).sum()
    assert float(A.adaptive_weight(rec, flat, layer)) == A.MAX_ADAPTIVE_WEIGHT


def test_float16_storage_halves_the_file_and_matches(tmp_path: Path, tiny_model) -> None:
    full = save_weights(tmp_path / "f32.safetensors", tiny_model)
    half = save_weights(tmp_path / "f16.safetensors", tiny_model, {"storage": "float16"})
    assert half.stat().st_size < 0.6 * full.stat().st_size
    a, b = load_weights(full), load_weights(half)
    assert b.metadata["storage"] == "float16" and a.metadata["storage"] == "float32"
    assert next(b.model.parameters()).dtype == torch.float32
    z = torch.randn(32, b.config.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert (a.model.decode(z) - b.model.decode(z)).abs().max() < 2e-3


def test_unknown_storage_is_refused(tmp_path: Path, tiny_model) -> None:
    with pytest.raises(ValueError, match="storage must be one of"):
        save_weights(tmp_path / "x.safetensors", tiny_model, {"storage": "int8"})


def test_finetune_freezes_the_encoder_and_keeps_the_prior(
    tmp_path: Path, tiny_weights: Path, idx_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sharp.safetensors"
    args = ["--data-dir", str(idx_dir), "--epochs", "2", "--batch-size", "16"]
    assert finetune_main([str(tiny_weights), "--out", str(out), *args, "--critic-warmup", "2"]) == 0
    before, after = load_weights(tiny_weights), load_weights(out)
    enc = before.model.encoder.state_dict()
    assert all(torch.equal(v, after.model.encoder.state_dict()[k]) for k, v in enc.items())
    dec = before.model.decoder.state_dict()
    assert not all(torch.equal(v, after.model.decoder.state_dict()[k]) for k, v in dec.items())
    meta = after.metadata["finetune"]
    assert meta["source_sha256"] == before.sha256 and len(meta["history"]) == 2
    assert not any(k.startswith("critic") for k in after.extra_tensors)
    assert "sharp_samples" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra", [[], ["--feature-matching", "2"], ["--latents", "mean"]], ids=["plain", "fm", "mean"]
)
def test_finetune_is_reproducible(
    tmp_path: Path, tiny_weights: Path, idx_dir: Path, extra: list[str]
) -> None:
    args = ["--data-dir", str(idx_dir), "--epochs", "1", "--batch-size", "16", *extra]
    outs = [tmp_path / f"{i}.safetensors" for i in range(2)]
    for out in outs:
        assert (
            finetune_main([str(tiny_weights), "--out", str(out), *args, "--critic-warmup", "1"])
            == 0
        )
    a, b = (load_weights(p).model.state_dict() for p in outs)
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    recorded = load_weights(outs[0]).metadata["finetune"]["args"]
    assert recorded["feature_matching"] == (2.0 if "--feature-matching" in extra else 0.0)
    assert recorded["latents"] == ("mean" if "--latents" in extra else "sample")


@pytest.mark.parametrize(
    "bad",
    [
        ["--epochs", "0"],
        ["--lr", "0"],
        ["--adv-weight", "-1"],
        ["--feature-matching", "-1"],
        ["--latents", "mode"],
        ["--storage", "int8"],
    ],
)
def test_finetune_refuses_bad_arguments(tmp_path: Path, tiny_weights: Path, bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        finetune_main([str(tiny_weights), "--out", str(tmp_path / "o.safetensors"), *bad])
    assert exit_.value.code == 2


def test_finetune_names_a_missing_weights_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert finetune_main([str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "o")]) == 2
    assert "vae-finetune: error:" in capsys.readouterr().err


def test_compare_figure_has_originals_reconstructions_and_samples(
    tmp_path: Path, tiny_weights: Path, idx_dir: Path
) -> None:
    out = tmp_path / "cmp.png"
    args = ["--out", str(out), "--data-dir", str(idx_dir), "--n", "4", "--zoom", "1"]
    assert compare_main([str(tiny_weights), str(tiny_weights), *args]) == 0
    with Image.open(out) as figure:  # 1 + 2 + 2 rows of four 28-pixel images, 2-pixel gaps
        assert figure.size == (4 * 30 + 2, 5 * 30 + 2)


def test_compare_refuses_models_of_different_shapes(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rgb = VAE(VAEConfig(image_size=64, channels=3, latent_dim=2, widths=(4, 4), hidden_dim=8))
    other = save_weights(tmp_path / "rgb.safetensors", rgb)
    assert compare_main([str(tiny_weights), str(other), "--out", str(tmp_path / "x.png")]) == 2
    assert "one shape" in capsys.readouterr().err

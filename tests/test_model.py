"""Shapes of every supported config, bad configs, and the reparameterization trick."""

from __future__ import annotations

import pytest
import torch

from vae_service.model import VAE, VAEConfig
from vae_service.model.classic import ClassicVAE
from vae_service.model.loss import elbo_terms

SHAPES = [(28, 1, (4, 8)), (28, 3, (4, 8)), (32, 1, (4, 8)), (32, 3, (4, 8, 8)),
          (64, 1, (4, 8, 8)), (64, 3, (4, 8, 8, 8))]  # fmt: skip


@pytest.mark.parametrize("head", [0, 4])
@pytest.mark.parametrize(("size", "channels", "widths"), SHAPES)
def test_shapes_for_each_supported_config(
    size: int, channels: int, widths: tuple[int, ...], head: int
):
    cfg = VAEConfig(
        image_size=size, channels=channels, latent_dim=5, widths=widths, hidden_dim=8,
        head_width=head,
    )  # fmt: skip
    model = VAE(cfg).eval()
    x = torch.rand(3, channels, size, size)
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (3, 5)
    logits, _, _ = model(x)
    assert logits.shape == x.shape
    images = model.decode(model.sample_prior(2))
    assert images.shape == (2, *cfg.image_shape)
    assert images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize(
    "bad",
    [
        {"image_size": 30},  # not divisible by 2**len(widths)
        {"image_size": 2},
        {"image_size": 28.0},
        {"channels": 2},
        {"latent_dim": 0},
        {"widths": ()},
        {"widths": (4, -1)},
        {"hidden_dim": 0},
        {"likelihood": "poisson"},
        {"gaussian_std": 0.0},
        {"head_width": -1},
        {"head_width": 2.0},
    ],
)
def test_bad_config_raises_value_error(bad: dict[str, object]):
    with pytest.raises(ValueError):
        VAEConfig(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("head", [0, 4])
def test_last_layer_is_the_one_that_writes_the_image(head: int):
    model = VAE(VAEConfig(channels=3, latent_dim=5, widths=(4, 8), hidden_dim=8, head_width=head))
    z = torch.randn(2, 5)
    model.decode_logits(z).sum().backward()
    last = model.decoder.last_layer
    assert last.shape[1 if head == 0 else 0] == 3  # ConvTranspose2d is (in, out, ...)
    assert last.grad is not None and last.grad.abs().sum() > 0


def test_config_dict_round_trip_and_unknown_keys():
    cfg = VAEConfig(image_size=32, channels=3, latent_dim=7, widths=(4, 8), likelihood="gaussian")
    assert VAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown config keys"):
        VAEConfig.from_dict({**cfg.to_dict(), "depth": 3})


def test_reparameterization_gradients_reach_mean_and_logvar():
    mean = torch.randn(4, 3, requires_grad=True)
    logvar = torch.randn(4, 3, requires_grad=True)
    z = VAE.reparameterize(mean, logvar, torch.Generator().manual_seed(0))
    z.pow(2).sum().backward()
    assert mean.grad is not None and logvar.grad is not None
    assert mean.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0


def test_reparameterization_draws_from_the_posterior():
    mean, logvar = (
        torch.full((20000, 2), 1.5),
        torch.full((20000, 2), 2 * torch.log(torch.tensor(0.5))),
    )
    z = VAE.reparameterize(mean, logvar, torch.Generator().manual_seed(1))
    assert torch.allclose(z.mean(0), torch.full((2,), 1.5), atol=0.02)
    assert torch.allclose(z.std(0), torch.full((2,), 0.5), atol=0.02)


def test_same_generator_seed_gives_same_draw(tiny_model: VAE):
    x = torch.rand(2, 1, 28, 28)
    a = tiny_model(x, torch.Generator().manual_seed(3))[0]
    b = tiny_model(x, torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b)


def test_model_gradients_flow_through_the_loss(tiny_model: VAE):
    tiny_model.train()
    x = torch.rand(4, 1, 28, 28)
    logits, mean, logvar = tiny_model(x)
    elbo_terms(logits, x, mean, logvar, tiny_model.cfg).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_model.parameters())


def test_classic_vae_matches_pytorch_examples():
    model = ClassicVAE()
    # 784-400-(20, 20) encoder and 20-400-784 decoder, as in pytorch/examples vae/main.py.
    assert sum(p.numel() for p in model.parameters()) == 652_824
    x = torch.rand(3, 1, 28, 28)
    logits, mean, logvar = model(x)
    assert logits.shape == x.shape and mean.shape == logvar.shape == (3, 20)
    assert model.decode(model.sample_prior(2)).shape == (2, 1, 28, 28)

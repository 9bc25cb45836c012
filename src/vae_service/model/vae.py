"""Convolutional VAE (Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014)."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from vae_service.model.config import VAEConfig


def _down(c_in: int, c_out: int) -> nn.Sequential:
    # A strided conv halves the side; a 3x3 conv after it adds capacity at that scale.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 4, stride=2, padding=1),
        nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.SiLU(),
    )


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1),
        nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.SiLU(),
    )


def _output_layer(c_in: int, channels: int, head_width: int) -> nn.Module:
    if not head_width:
        return nn.ConvTranspose2d(c_in, channels, 4, stride=2, padding=1)
    # Each output pixel of a lone transposed conv is linear in a 2x2 patch of the last
    # feature map; a nonlinear 3x3 conv at full resolution can model sharper edges.
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, head_width, 4, stride=2, padding=1),
        nn.SiLU(),
        nn.Conv2d(head_width, channels, 3, padding=1),
    )


class Encoder(nn.Module):
    """x -> (mean, logvar) of the diagonal Gaussian q(z|x)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        chans = (cfg.channels, *cfg.widths)
        self.features = nn.Sequential(*(_down(a, b) for a, b in itertools.pairwise(chans)))
        flat = cfg.widths[-1] * cfg.feature_size**2
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(flat, cfg.hidden_dim), nn.SiLU())
        self.to_stats = nn.Linear(cfg.hidden_dim, 2 * cfg.latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.to_stats(self.hidden(self.features(x))).chunk(2, dim=1)
        return mean, logvar


class Decoder(nn.Module):
    """z -> logits (Bernoulli) or means (Gaussian) of p(x|z), before the output squashing."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = tuple(reversed(cfg.widths))
        flat = widths[0] * cfg.feature_size**2
        self.hidden = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.hidden_dim),
            nn.SiLU(),
            nn.Linear(cfg.hidden_dim, flat),
            nn.SiLU(),
        )
        ups = [_up(a, b) for a, b in itertools.pairwise(widths)]
        self.features = nn.Sequential(*ups)
        self.to_image = _output_layer(widths[-1], cfg.channels, cfg.head_width)

    @property
    def last_layer(self) -> Tensor:
        """Weight of the layer that writes the output (for gradient-norm ratios)."""
        layer = self.to_image[-1] if isinstance(self.to_image, nn.Sequential) else self.to_image
        weight = layer.weight
        assert isinstance(weight, Tensor)
        return weight

    def forward(self, z: Tensor) -> Tensor:
        side = self.cfg.feature_size
        h = self.hidden(z).view(z.shape[0], -1, side, side)
        return self.to_image(self.features(h))


class VAE(nn.Module):
    """Encoder, reparameterization and decoder; images are floats in [0, 1], NCHW."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z|x)."""
        return self.encoder(x)

    @staticmethod
    def reparameterize(
        mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """z = mean + std * eps with eps ~ N(0, I), so gradients flow to mean and logvar
        (the reparameterization trick, Kingma & Welling 2014, Section 2.4)."""
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    def decode_logits(self, z: Tensor) -> Tensor:
        """Unsquashed decoder output: Bernoulli logits or Gaussian means before the sigmoid."""
        return self.decoder(z)

    def decode(self, z: Tensor) -> Tensor:
        """Images in [0, 1]: the mean of p(x|z)."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Decoder logits for one posterior draw, and the posterior's mean and logvar."""
        mean, logvar = self.encode(x)
        z = self.reparameterize(mean, logvar, generator)
        return self.decode_logits(z), mean, logvar

    def sample_prior(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """Latents drawn from N(0, temperature^2 I)."""
        device = next(self.parameters()).device
        z = torch.randn((n, self.cfg.latent_dim), generator=generator, device=device)
        return z * temperature

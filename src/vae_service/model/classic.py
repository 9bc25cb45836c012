"""The classic VAE of pytorch/examples (vae/main.py): an MLP 784-400-20 with a Bernoulli
likelihood, kept as the baseline our convolutional VAE must beat on the same data."""

from __future__ import annotations

from torch import Tensor, nn

from vae_service.model.config import VAEConfig
from vae_service.model.vae import VAE

CLASSIC_HIDDEN = 400
CLASSIC_LATENT = 20


class MLPEncoder(nn.Module):
    def __init__(self, pixels: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU())
        self.mean = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.hidden(x)
        return self.mean(h), self.logvar(h)


class MLPDecoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        pixels = cfg.channels * cfg.image_size**2
        self.shape = cfg.image_shape
        self.net = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.hidden_dim),
            nn.ReLU(),
            nn.Linear(cfg.hidden_dim, pixels),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(z.shape[0], *self.shape)


class ClassicVAE(VAE):
    """Same interface as :class:`VAE` (encode, reparameterize, decode, forward,
    sample_prior), so the loss, metrics and training loop work on it unchanged.

    Only ``image_size``, ``channels``, ``latent_dim``, ``hidden_dim`` and the likelihood
    of ``cfg`` apply; ``widths`` describe conv stages this model does not have.
    """

    def __init__(self, cfg: VAEConfig | None = None) -> None:
        # Skip VAE.__init__ on purpose: it would build the conv encoder and decoder that
        # the two MLPs below replace.
        nn.Module.__init__(self)
        self.cfg = cfg or VAEConfig(latent_dim=CLASSIC_LATENT, hidden_dim=CLASSIC_HIDDEN)
        pixels = self.cfg.channels * self.cfg.image_size**2
        # VAE types these as its conv modules; the MLPs honour the same call signatures.
        self.encoder = MLPEncoder(pixels, self.cfg.hidden_dim, self.cfg.latent_dim)  # type: ignore[assignment]
        self.decoder = MLPDecoder(self.cfg)  # type: ignore[assignment]

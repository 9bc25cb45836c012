"""Shared fixtures: tiny CPU configs and weights files made on the fly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model import VAE, VAEConfig, save_weights

# Tests share two cores with everything else; one thread each keeps them predictable.
torch.set_num_threads(1)

TINY = VAEConfig(image_size=28, channels=1, latent_dim=4, widths=(4, 8), hidden_dim=16)


@pytest.fixture
def tiny_config() -> VAEConfig:
    return TINY


@pytest.fixture
def tiny_model(tiny_config: VAEConfig) -> VAE:
    torch.manual_seed(0)
    return VAE(tiny_config).eval()


@pytest.fixture
def tiny_weights(tmp_path: Path, tiny_model: VAE) -> Path:
    """A randomly initialised, self-describing weights file."""
    meta = {
        "data": {"name": "synthetic", "shape": [1, 28, 28]},
        "training": {"epochs": 0, "note": "random init for tests"},
    }
    return save_weights(tmp_path / "tiny.safetensors", tiny_model, meta)

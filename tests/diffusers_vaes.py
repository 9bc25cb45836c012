"""Tiny diffusers VAEs for the tests, built here and written with save_pretrained: nothing
is downloaded. Each config varies what the service must honour: latent channels, the
downsampling factor, scaling and shift, latents_mean/std, and the quant convs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from vae_service.server.settings import Settings

diffusers = pytest.importorskip("diffusers")

KL_BLOCKS = {"layers_per_block": 1, "norm_num_groups": 8, "sample_size": 32}
KL_CONFIGS: dict[str, dict[str, Any]] = {
    # SD 1.x-like: 4 channels, scaling only, 4x down.
    "sd": {"block_out_channels": (8, 16, 16), "scaling_factor": 0.18215},
    # FLUX-like: 16 channels, shift, no quant convs (as FLUX and SD3 have none).
    "flux": {
        "block_out_channels": (8, 16),
        "latent_channels": 16,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    },
    # SDXL-pipeline-like per-channel statistics, and only the encoder's quant conv.
    "stats": {
        "block_out_channels": (8, 16),
        "scaling_factor": 0.5,
        "latents_mean": (0.1, -0.2, 0.3, 0.0),
        "latents_std": (1.5, 0.5, 2.0, 1.0),
        "use_post_quant_conv": False,
    },
    # Greyscale, one block (no downsampling) and no attention in the mid block.
    "grey": {
        "block_out_channels": (8,),
        "in_channels": 1,
        "out_channels": 1,
        "mid_block_add_attention": False,
    },
}
TINY_CONFIG = {
    "encoder_block_out_channels": (8, 8, 8),
    "decoder_block_out_channels": (8, 8, 8),
    "num_encoder_blocks": (1, 1, 1),
    "num_decoder_blocks": (1, 1, 1),
    "latent_channels": 4,
}


def kl_model(name: str, seed: int = 0) -> Any:
    config = KL_CONFIGS[name]
    blocks = len(config["block_out_channels"])
    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        **KL_BLOCKS,
        **config,
    ).eval()


def tiny_model(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return diffusers.AutoencoderTiny(**TINY_CONFIG).eval()


def model_of(name: str, seed: int = 0) -> Any:
    return tiny_model(seed) if name == "tiny" else kl_model(name, seed)


def write_models(folder: Path, names: tuple[str, ...] = (*KL_CONFIGS, "tiny")) -> dict[str, Any]:
    """Each named model saved as folder/NAME; the in-process models, by name."""
    models = {name: model_of(name) for name in names}
    for name, model in models.items():
        model.save_pretrained(folder / name)
    return models


def settings(folder: Path, **changes: Any) -> Settings:
    """A repository of ``folder`` on the CPU, with small limits to hit."""
    base = {
        "model_dir": folder,
        "model_poll_s": 0.05,
        "device": "cpu",
        "max_body_bytes": 256 * 1024,
        "max_images_per_request": 4,
        "max_pixels_per_image": 128 * 128,
        "max_batch_size": 4,
    }
    return Settings(**{**base, **changes})


def raw(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().view(torch.uint8).numpy().tobytes()

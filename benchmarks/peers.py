"""What the peer servers (LitServe, naive FastAPI) share with each other and with ours:
the same weights, thread setting, image decoding and PNG encoding, and the same JSON
shapes on the wire, so that the benchmark compares only how requests reach the model."""

from __future__ import annotations

import argparse
import base64
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vae_service.model import VAE, load_weights
from vae_service.server.imaging import decode_images, encode_base64_pngs

MAX_PIXELS = 25_000_000


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--weights", required=True, help="weights file (.safetensors)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-batch-delay-ms", type=float, default=2.0)
    return parser.parse_args()


def load_model(weights: str, threads: int) -> VAE:
    torch.set_num_threads(threads)
    return load_weights(weights).model


def images_from_json(body: dict[str, Any], model: VAE) -> Tensor:
    """``{"images": [base64 image file, ...]}`` -> N×C×H×W floats in [0, 1]."""
    blobs = [base64.b64decode(text) for text in body["images"]]
    cfg = model.cfg
    return torch.from_numpy(decode_images(blobs, cfg.image_size, cfg.channels, MAX_PIXELS))


def latents_from_json(body: dict[str, Any]) -> Tensor:
    return torch.tensor(body["z"], dtype=torch.float32)


def prior_draws(n: int, seed: int, model: VAE) -> Tensor:
    return torch.randn((n, model.cfg.latent_dim), generator=torch.Generator().manual_seed(seed))


def posterior_json(mean: Tensor, logvar: Tensor) -> dict[str, Any]:
    return {"latent_dim": mean.shape[1], "mean": mean.tolist(), "logvar": logvar.tolist()}


def images_json(images: Tensor, z: Tensor | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"images": encode_base64_pngs(np.asarray(images))}
    if z is not None:
        reply["z"] = z.tolist()
    return reply

"""The small report written beside trained weights: per-epoch metrics, a loss curve,
a grid of samples from the prior and a grid of test reconstructions."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vae_service.model.vae import VAE

# One history entry, as the training loop writes it:
# {"epoch": 1, "train": {"neg_elbo": ..., "recon": ..., "kl": ...}, "test": {...}, ...}
SPLITS = ("train", "test")
GRID_PADDING = 2


def save_history(path: str | Path, history: list[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(history, indent=2) + "\n")
    return path


def plot_loss_curve(path: str | Path, history: list[dict[str, Any]]) -> Path:
    """Train and test −ELBO (nats per image) against the epoch."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [row["epoch"] for row in history]
    for split in SPLITS:
        ax.plot(epochs, [row[split]["neg_elbo"] for row in history], marker="o", label=split)
    ax.set_xlabel("epoch")
    ax.set_ylabel("−ELBO (nats per image)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def make_grid(images: Tensor, nrow: int, padding: int = GRID_PADDING) -> Tensor:
    """Tile N x C x H x W images into one C x H' x W' image, ``nrow`` per row, on white."""
    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + padding) + padding, nrow * (w + padding) + padding)
    for i, image in enumerate(images):
        top = padding + (i // nrow) * (h + padding)
        left = padding + (i % nrow) * (w + padding)
        grid[:, top : top + h, left : left + w] = image
    return grid


def save_image_grid(path: str | Path, images: Tensor, nrow: int) -> Path:
    """Save N x C x H x W images in [0, 1] (C = 1 or 3) as one PNG grid."""
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow)
    pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]  # Pillow wants H x W for grayscale
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels)).save(path)
    return path


def _device_of(model: VAE) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def save_sample_grid(
    path: str | Path, model: VAE, n: int = 64, seed: int = 0, device: str | torch.device = "cpu"
) -> Path:
    """Decoded draws from the prior N(0, I), ``seed`` fixing which."""
    model.to(device).eval()
    gen = torch.Generator(device=_device_of(model)).manual_seed(seed)
    samples = model.decode(model.sample_prior(n, generator=gen))
    return save_image_grid(path, samples, nrow=math.ceil(math.sqrt(n)))


@torch.inference_mode()
def save_reconstruction_grid(
    path: str | Path, model: VAE, images: Tensor, n: int = 32, device: str | torch.device = "cpu"
) -> Path:
    """The first ``n`` images, each followed by decode(posterior mean) on its right,
    eight pairs to a row."""
    model.to(device).eval()
    originals = images[:n].to(device)
    recons = model.decode(model.encode(originals)[0])
    pairs = torch.stack([originals, recons], dim=1).flatten(0, 1)
    return save_image_grid(path, pairs, nrow=2 * min(8, len(originals)))


def write_report(
    out_dir: str | Path,
    model: VAE,
    history: list[dict[str, Any]],
    test_images: Tensor,
    device: str | torch.device = "cpu",
) -> dict[str, Path]:
    """Write metrics.json, loss_curve.png, samples.png and reconstructions.png to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "metrics": save_history(out / "metrics.json", history),
        "loss_curve": plot_loss_curve(out / "loss_curve.png", history),
        "samples": save_sample_grid(out / "samples.png", model, device=device),
        "reconstructions": save_reconstruction_grid(
            out / "reconstructions.png", model, test_images, device=device
        ),
    }

"""The loaded model and the one worker thread that runs it.

Handlers reach the model only through the async methods of ModelRuntime (encode,
decode, reconstruct, sample, interpolate). Every forward pass runs on a single
dedicated thread under ``torch.inference_mode``, so the event loop never waits on
torch and the model never runs twice at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor

from model import VAE, Checkpoint, VAEConfig, load_weights

logger = logging.getLogger("service")
T = TypeVar("T")


class DeviceError(Exception):
    """A device setting this machine cannot honour."""


@dataclass(frozen=True)
class Posterior:
    """q(z|x) per image: mean and natural log of the variance, CPU float32, N x latent_dim."""

    mean: Tensor
    logvar: Tensor


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> the first GPU when there is one, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise DeviceError(
                f"device {spec!r} requested, but this machine has {count} CUDA devices"
            )
    return device


def load_checkpoint(weights: Path, device: str) -> Checkpoint:
    """Read and check the weights onto the chosen device; WeightsError or DeviceError if not."""
    return load_weights(weights, resolve_device(device))


def seeded(seed: int) -> torch.Generator:
    # Noise is drawn on the CPU so that a seed means the same latents on every device.
    return torch.Generator().manual_seed(seed)


def draw_prior(n: int, latent_dim: int, temperature: float, seed: int) -> Tensor:
    """n latents from N(0, temperature^2 I)."""
    return torch.randn((n, latent_dim), generator=seeded(seed)) * temperature


def draw_posterior(posterior: Posterior, seed: int) -> Tensor:
    """One draw from each q(z|x), by the reparameterization the model was trained with."""
    return VAE.reparameterize(posterior.mean, posterior.logvar, seeded(seed))


def line_between(start: Tensor, end: Tensor, steps: int) -> Tensor:
    """``steps`` evenly spaced points from ``start`` to ``end``, both included."""
    t = torch.linspace(0.0, 1.0, steps).unsqueeze(1)
    return (1.0 - t) * start + t * end


class ModelRuntime:
    """A checkpoint on its device, served by one worker thread."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.device = next(self.model.parameters()).device
        self.ready = False
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vae-model")

    @property
    def config(self) -> VAEConfig:
        return self.checkpoint.config

    async def start(self) -> None:
        """One pass through encoder and decoder, so the first request pays no set-up cost."""
        started = time.perf_counter()
        await self.reconstruct(torch.zeros((1, *self.config.image_shape)))
        self.ready = True
        logger.info(
            "model ready: %s on %s, warm-up %.0f ms",
            self.checkpoint.path,
            self.device,
            (time.perf_counter() - started) * 1000,
        )

    def close(self) -> None:
        """Stop taking work and wait for the forward pass in flight."""
        self.ready = False
        self._worker.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    def _encode_now(self, images: Tensor) -> Posterior:
        with torch.inference_mode():
            mean, logvar = self.model.encode(images.to(self.device))
        return Posterior(mean.float().cpu(), logvar.float().cpu())

    def _decode_now(self, z: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.model.decode(z.to(self.device)).float().cpu()

    async def encode(self, images: Tensor) -> Posterior:
        """Images N x C x H x W in [0, 1] -> q(z|x)."""
        return await self._run(self._encode_now, images)

    async def decode(self, z: Tensor) -> Tensor:
        """Latents N x latent_dim -> images N x C x H x W in [0, 1] (the mean of p(x|z))."""
        return await self._run(self._decode_now, z)

    async def reconstruct(self, images: Tensor) -> Tensor:
        """Decoded posterior means."""
        return await self.decode((await self.encode(images)).mean)

    async def sample(self, n: int, temperature: float, seed: int) -> tuple[Tensor, Tensor]:
        """n draws from the prior and their images."""
        z = draw_prior(n, self.config.latent_dim, temperature, seed)
        return z, await self.decode(z)

    async def interpolate(self, start: Tensor, end: Tensor, steps: int) -> tuple[Tensor, Tensor]:
        """The straight line between two latents, and its images."""
        z = line_between(start, end, steps)
        return z, await self.decode(z)

"""A diffusers VAE served through the same dynamic batcher as our own models: the
repository loads, swaps and retires it as it does a ModelRuntime, and requests wait for
it through ``Served.wait``.

Images may have any size, so both operations take rows of any shape; a batch stacks only
requests of one shape (server/batcher.py). Images are N x C x H x W in [-1, 1], latents
N x C x h x w as the model gives them (unscaled), every tensor CPU float32.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import Tensor

from vae_service.model.device import resolve_device
from vae_service.server.batch_jobs import Operation, Outputs
from vae_service.server.batcher import Batcher
from vae_service.server.diffusers_models import (
    DiffusersModelError,
    DiffusersWeights,
    LatentSpace,
    load_diffusers,
)
from vae_service.server.runtime import HALF, Batching, DeviceError, forward_on

logger = logging.getLogger("service")
WARM_UP_LATENT = 2  # latent positions per side of the warm-up pass: small, and any model's


def load_folder(folder: Path, device: str) -> DiffusersWeights:
    """The folder's VAE on the chosen device (blocking)."""
    try:
        target = resolve_device(device)
    except ValueError as exc:
        raise DeviceError(str(exc)) from None
    return load_diffusers(folder, target)


class DiffusersRuntime:
    """A diffusers AutoencoderKL or AutoencoderTiny on its device, behind one batcher."""

    prior = None  # no fitted prior: the shared views (/models, OpenAPI) read this

    def __init__(self, weights: DiffusersWeights, batching: Batching) -> None:
        self.checkpoint = weights
        self.model = weights.model
        self.device = next(self.model.parameters()).device
        self.half = HALF.get(batching.precision) if self.device.type == "cuda" else None
        self.ready = False
        operations = {
            "encode": Operation(self._encode_batch, None),
            "decode": Operation(self._decode_batch, None),
        }
        self.batcher = Batcher(
            operations,
            batching.max_batch_size,
            batching.max_delay_s,
            batching.max_queue_images,
            batching.max_queue_wait_s,
        )

    @property
    def config(self) -> LatentSpace:
        return self.checkpoint.space

    @property
    def has_posterior(self) -> bool:
        """AutoencoderKL encodes to a Gaussian; AutoencoderTiny straight to latents."""
        return self.config.family == "AutoencoderKL"

    def metric_info(self) -> dict[str, str]:
        space = self.config
        return {
            "name": Path(self.checkpoint.path).name,
            "sha256": self.checkpoint.sha256,
            "device": str(self.device),
            "family": space.family,
            "latent_channels": str(space.latent_channels),
            "channels": str(space.image_channels),
        }

    async def start(self) -> None:
        """One pass each way at a small size, which also checks the latent space the
        config describes against what the model does."""
        started = time.perf_counter()
        await self.batcher.on_worker(self._warm_up)
        self.ready = True
        logger.info(
            "model ready: %s (%s) on %s, warm-up %.0f ms",
            self.checkpoint.path,
            self.config.family,
            self.device,
            (time.perf_counter() - started) * 1000,
        )

    def _warm_up(self) -> None:
        space, side = self.config, WARM_UP_LATENT
        (images,) = self._decode_batch(torch.zeros((1, space.latent_channels, side, side)))
        expected = (1, space.image_channels, side * space.factor, side * space.factor)
        encoded = self._encode_batch(torch.zeros(expected))[0]
        if tuple(images.shape) != expected or tuple(encoded.shape[2:]) != (side, side):
            raise DiffusersModelError(
                f"the config says {space.factor}x downsampling, but {side}x{side} latents "
                f"decode to {tuple(images.shape)} and that encodes to {tuple(encoded.shape)}"
            )

    async def aclose(self) -> None:
        """Stop taking work and answer every request already queued."""
        self.ready = False
        await self.batcher.aclose()

    def _encode_batch(self, images: Tensor) -> Outputs:
        return forward_on(self.device, self.half, self._encode, images)

    def _decode_batch(self, z: Tensor) -> Outputs:
        return forward_on(self.device, self.half, self._decode, z)

    def _encode(self, images: Tensor) -> Outputs:
        encoded = self.model.encode(images)
        if self.has_posterior:
            return encoded.latent_dist.mean, encoded.latent_dist.logvar
        return (encoded.latents,)

    def _decode(self, z: Tensor) -> Outputs:
        return (self.model.decode(z).sample,)

    async def encode(self, images: Tensor) -> Outputs:
        """Images N x C x H x W in [-1, 1] -> (mean, logvar) of q(z|x) for AutoencoderKL,
        (latents,) for AutoencoderTiny; unscaled."""
        return await self.batcher.submit("encode", images)

    async def decode(self, z: Tensor) -> Tensor:
        """Unscaled latents N x C x h x w -> images N x C x H x W, about [-1, 1]."""
        (images,) = await self.batcher.submit("decode", z)
        return images

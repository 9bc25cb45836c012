"""A diffusers VAE served through the same dynamic batcher as our own models: the
repository loads, swaps and retires it as it does a ModelRuntime, and requests wait for
it through ``Served.wait``.

Images may have any size, so both operations take rows of any shape; a batch stacks only
requests of one shape (server/batcher.py), and only as many images as fit in
VAE_MAX_BATCH_PIXELS. An image over that budget runs with diffusers' own tiling, as does
any request that asks for it (the ``*_tiled`` operations). Images are N x C x H x W in
[-1, 1], latents N x C x h x w as the model gives them (unscaled), every tensor CPU
float32 whatever the weights' dtype.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vae_service.model.device import resolve_device
from vae_service.server.batch_jobs import Operation, Outputs
from vae_service.server.diffusers_models import (
    DiffusersModelError,
    DiffusersWeights,
    LatentSpace,
    load_diffusers,
)
from vae_service.server.runtime import HALF, Batching, DeviceError, forward_on

logger = logging.getLogger("service")
WARM_UP_LATENT = 2  # latent positions per side of the warm-up pass: small, and any model's


def load_folder(folder: Path, device: str, precision: str = "fp32") -> DiffusersWeights:
    """The folder's VAE on the chosen device (blocking); VAE_PRECISION applies on CUDA."""
    try:
        target = resolve_device(device)
    except ValueError as exc:
        raise DeviceError(str(exc)) from None
    return load_diffusers(folder, target, HALF.get(precision) if target.type == "cuda" else None)


def encode_pass(model: Any, images: Tensor) -> Outputs:
    """One encoder pass: (mean, logvar) of q(z|x) for AutoencoderKL, (latents,) for
    AutoencoderTiny; unscaled (also vae-encode-dataset's)."""
    encoded = model.encode(images)
    if hasattr(encoded, "latent_dist"):
        return encoded.latent_dist.mean, encoded.latent_dist.logvar
    return (encoded.latents,)


class DiffusersRuntime:
    """A diffusers AutoencoderKL or AutoencoderTiny on its device, behind one batcher."""

    prior = None  # no fitted prior: the shared views (/models, OpenAPI) read this

    def __init__(self, weights: DiffusersWeights, batching: Batching) -> None:
        self.checkpoint = weights
        self.model = weights.model
        self.device = next(self.model.parameters()).device
        self.dtype = weights.dtype
        # Half-precision weights run under autocast to their own dtype, so that float32
        # inputs meet them, and NaN or inf re-runs in float32 (runtime.run_guarded).
        self.half = None if self.dtype == torch.float32 else self.dtype
        self.max_pixels = batching.max_batch_pixels
        self.ready = False
        factor = self.config.factor
        operations = {
            "encode": self._operation(self._encode, 1, tile=False),
            "decode": self._operation(self._decode, factor**2, tile=False),
            "encode_tiled": self._operation(self._encode, 1, tile=True),
            "decode_tiled": self._operation(self._decode, factor**2, tile=True),
        }
        self.batcher = batching.batcher(operations)

    @property
    def config(self) -> LatentSpace:
        return self.checkpoint.space

    @property
    def can_tile(self) -> bool:
        """diffusers' AutoencoderTiny tiling assumes TAESD's 4 latent and 3 image channels."""
        space = self.config
        channels = (space.latent_channels, space.image_channels)
        return space.family == "AutoencoderKL" or channels == (4, 3)

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

    def _operation(self, fn: Callable[[Tensor], Outputs], scale: int, tile: bool) -> Operation:
        """``fn`` batched by pixels (``scale`` output pixels a row position), tiled when
        asked or when one row alone is over the budget."""

        def pixels(rows: Tensor) -> int:
            return rows.shape[-2] * rows.shape[-1] * scale

        def run(batch: Tensor) -> Outputs:
            with self._tiling(tile or pixels(batch) > self.max_pixels):
                return self._forward(fn, batch)

        return Operation(run, None, lambda rows: self.max_pixels // pixels(rows))

    @contextlib.contextmanager
    def _tiling(self, on: bool) -> Iterator[None]:
        # Only the batcher's one thread runs the model, so the switch is never seen by
        # another pass.
        on = on and self.can_tile
        if on:
            self.model.enable_tiling()
        try:
            yield
        finally:
            if on:
                self.model.disable_tiling()

    def _forward(self, fn: Callable[[Tensor], Outputs], batch: Tensor) -> Outputs:
        return forward_on(
            self.device,
            self.half,
            lambda b: fn(b.to(self.dtype)),
            batch,
            partial(self._fp32, fn) if self.half else None,
        )

    def _fp32(self, fn: Callable[[Tensor], Outputs], batch: Tensor) -> Outputs:
        """``fn`` with the weights upcast for this pass only: float16 or bfloat16 to float32
        and back is exact, and keeps no second copy of the weights."""
        # nn.Module.to: ModelMixin.to warns about modules kept in float32, of which these
        # classes have none.
        torch.nn.Module.to(self.model, torch.float32)
        try:
            return fn(batch.float())
        finally:
            torch.nn.Module.to(self.model, self.dtype)

    def _encode_batch(self, images: Tensor) -> Outputs:
        return self._forward(self._encode, images)

    def _decode_batch(self, z: Tensor) -> Outputs:
        return self._forward(self._decode, z)

    def _encode(self, images: Tensor) -> Outputs:
        return encode_pass(self.model, images)

    def _decode(self, z: Tensor) -> Outputs:
        return (self.model.decode(z).sample,)

    async def encode(self, images: Tensor, tile: bool = False) -> Outputs:
        """Images N x C x H x W in [-1, 1] -> (mean, logvar) of q(z|x) for AutoencoderKL,
        (latents,) for AutoencoderTiny; unscaled."""
        return await self.batcher.submit("encode_tiled" if tile else "encode", images)

    async def decode(self, z: Tensor, tile: bool = False) -> Tensor:
        """Unscaled latents N x C x h x w -> images N x C x H x W, about [-1, 1]."""
        (images,) = await self.batcher.submit("decode_tiled" if tile else "decode", z)
        return images

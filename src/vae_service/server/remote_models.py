"""A model as the remote VAE routes see it, either kind: the checks its latents and images
must pass, its scaling, and its passes with images in [-1, 1], diffusers' convention.

A diffusers VAE takes latents N x C x h x w (or FLUX's packed N x patches x C*4) and images
at their own size. This service's own VAEs take latents N x D, and images of the model's
size: a raw tensor must have that size (422 otherwise), an image file is converted and
resized as /encode does.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from vae_service.server.batch_jobs import Outputs
from vae_service.server.diffusers_runtime import DiffusersRuntime
from vae_service.server.errors import Unprocessable
from vae_service.server.imaging import decode_image_as_is, decode_images
from vae_service.server.remote_query import RemoteDecodeQuery, RemoteQuery
from vae_service.server.remote_vae import (
    Scaling,
    check_images,
    check_size,
    latent_grid,
    plain_scaling,
    scaling_of,
)
from vae_service.server.runtime import ModelRuntime
from vae_service.server.settings import Settings
from vae_service.server.validation import check_limit


class RemoteModel(Protocol):
    """What the remote VAE routes need of a model."""

    family: str
    has_posterior: bool  # False: encode gives latents only, and sample=true is refused
    can_tile: bool

    def packed_grid(self, query: RemoteDecodeQuery, settings: Settings) -> tuple[int, int] | None:
        """Checks /remote-decode's declared shape; packed latents' h x w, else None."""

    def scaling(self, query: RemoteQuery) -> Scaling | None:
        """The client's scaling, or with do_scaling the model's own."""

    def check_images(self, shape: list[int], settings: Settings) -> None:
        """Checks /remote-encode's declared image shape."""

    async def file_images(self, body: bytes, settings: Settings) -> Tensor:
        """One image file as 1 x C x H x W in [-1, 1]."""

    async def decode(self, z: Tensor, tile: bool) -> Tensor:
        """Images in [-1, 1]."""

    async def encode(self, images: Tensor, tile: bool) -> Outputs:
        """The posterior's mean and log-variance, or the latents alone."""


class DiffusersRemote:
    """A diffusers AutoencoderKL or AutoencoderTiny, as its own remote endpoint serves it."""

    def __init__(self, runtime: DiffusersRuntime) -> None:
        self.runtime = runtime
        self.family = runtime.config.family
        self.has_posterior = runtime.has_posterior
        self.can_tile = runtime.can_tile

    def packed_grid(self, query: RemoteDecodeQuery, settings: Settings) -> tuple[int, int] | None:
        space = self.runtime.config
        h, w = latent_grid(query, space)
        pixels = h * w * space.factor**2
        check_limit(
            pixels, settings.max_pixels_per_image, "pixels per image", "max_pixels_per_image"
        )
        return (h, w) if len(query.shape) == 3 else None

    def scaling(self, query: RemoteQuery) -> Scaling | None:
        return scaling_of(query, self.runtime.config)

    def check_images(self, shape: list[int], settings: Settings) -> None:
        check_images(shape, self.runtime.config, settings)

    async def file_images(self, body: bytes, settings: Settings) -> Tensor:
        space, max_pixels = self.runtime.config, settings.max_pixels_per_image
        array: np.ndarray = await asyncio.to_thread(
            decode_image_as_is, body, space.image_channels, max_pixels
        )
        check_size(array.shape[1], array.shape[2], space, settings)
        return torch.from_numpy(array).unsqueeze(0) * 2 - 1

    async def decode(self, z: Tensor, tile: bool) -> Tensor:
        return await self.runtime.decode(z, tile)

    async def encode(self, images: Tensor, tile: bool) -> Outputs:
        return await self.runtime.encode(images, tile)


class OwnRemote:
    """This service's own VAE: latents N x D, images of the model's size, no tiling and
    no scaling of its own (do_scaling leaves latents as they are)."""

    family = "VAE"
    has_posterior = True
    can_tile = False

    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime

    def packed_grid(self, query: RemoteDecodeQuery, settings: Settings) -> tuple[int, int] | None:
        dim = self.runtime.config.latent_dim
        if len(query.shape) != 2 or query.shape[1] != dim:
            raise Unprocessable(
                f"latents have shape {query.shape}; this model's are N x {dim} (a VAE of "
                "this service, not a diffusers one)"
            )
        return None

    def scaling(self, query: RemoteQuery) -> Scaling | None:
        return plain_scaling(query)

    def check_images(self, shape: list[int], settings: Settings) -> None:
        cfg = self.runtime.config
        n, *image_shape = shape
        check_limit(
            n, settings.max_images_per_request, "images per request", "max_images_per_request"
        )
        if tuple(image_shape) != cfg.image_shape:
            wanted = " x ".join(map(str, cfg.image_shape))
            raise Unprocessable(f"images have shape {shape}; this model takes N x {wanted}")

    async def file_images(self, body: bytes, settings: Settings) -> Tensor:
        cfg = self.runtime.config
        args = ([body], cfg.image_size, cfg.channels, settings.max_pixels_per_image)
        return torch.from_numpy(await asyncio.to_thread(decode_images, *args)) * 2 - 1

    async def decode(self, z: Tensor, tile: bool) -> Tensor:
        return await self.runtime.decode(z) * 2 - 1

    async def encode(self, images: Tensor, tile: bool) -> Outputs:
        posterior = await self.runtime.encode((images + 1) / 2)
        return posterior.mean, posterior.logvar

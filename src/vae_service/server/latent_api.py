"""Our own API (/encode, /decode, /reconstruct, /interpolate) on either kind of model.

Each kind reads its own request bodies and checks them by its own latent shape; the
handlers see images N x C x H x W in [0, 1] and latents as the model has them: N x D for
this service's own VAEs, N x C x h x w for a diffusers model (unscaled, as its encoder
gives them: no scaling_factor or shift_factor). A diffusers model takes images at their
own size, which must be a multiple of its downsampling factor in each side (422, as on
the remote routes): they are not resized, padded or cropped.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import numpy as np
import orjson
import torch
from fastapi import Request
from torch import Tensor

from vae_service.server.diffusers_runtime import DiffusersRuntime
from vae_service.server.errors import BadImage, Unprocessable
from vae_service.server.imaging import decode_image_as_is
from vae_service.server.npy import MEDIA_TYPE as NPY_MEDIA_TYPE
from vae_service.server.npy import NpyError, parse_array, parse_images
from vae_service.server.remote_vae import check_size, finite
from vae_service.server.request_bodies import (
    from_base64,
    image_blobs,
    images_tensor,
    media_type,
    parse_json,
    request_images,
    require_json,
    unsupported,
)
from vae_service.server.runtime import ModelRuntime
from vae_service.server.schemas import DecodeRequest, InterpolateRequest
from vae_service.server.settings import Settings
from vae_service.server.validation import check_limit, checked_latents, latent_rows

LATENT_MEDIA_TYPES = ("application/json", NPY_MEDIA_TYPE)


class LatentApi(Protocol):
    """What the /encode, /decode, /reconstruct and /interpolate handlers need of a model."""

    family: str
    has_posterior: bool  # False: encode gives latents and no log-variance
    image_shape: tuple[int, ...]  # C x H x W; -1 where any size the model takes
    latent_shape: tuple[int, ...]  # (D,), or C x h x w with -1 where any size

    def check_declared(self, shape: tuple[int, ...], latents: bool, settings: Settings) -> None:
        """The limits a declared shape matching image_shape or latent_shape must still
        meet (its -1 sizes), checked before its values are read."""

    def latent_info(self, z: Tensor) -> dict[str, Any]:
        """The latents' description in a JSON answer."""

    async def images(self, request: Request, settings: Settings) -> Tensor:
        """The request's images, N x C x H x W in [0, 1]."""

    async def blob_images(self, blobs: list[bytes], settings: Settings) -> Tensor:
        """Image files as N x C x H x W in [0, 1]."""

    async def pair(self, request: Request, settings: Settings) -> Tensor | list[bytes]:
        """/interpolate's JSON body: two latents, or two image files."""

    async def latents(self, request: Request, settings: Settings) -> Tensor:
        """The request's latents (/decode's body), checked."""

    def latent_rows(self, rows: list[Any], max_rows: int, settings: Settings) -> Tensor:
        """Latents given as JSON nested lists, checked."""

    async def encode(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """The posterior's mean and log-variance (None without a posterior)."""

    async def decode(self, z: Tensor) -> Tensor:
        """Images in [0, 1]."""


class OwnApi:
    """This service's own VAE: latents N x D, images at the model's size."""

    family = "VAE"
    has_posterior = True

    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime
        self.image_shape: tuple[int, ...] = runtime.config.image_shape
        self.latent_shape: tuple[int, ...] = (runtime.config.latent_dim,)

    def check_declared(self, shape: tuple[int, ...], latents: bool, settings: Settings) -> None:
        """Nothing: our shapes fix every size but the count, which its callers check."""

    def latent_info(self, z: Tensor) -> dict[str, Any]:
        return {"latent_dim": self.runtime.config.latent_dim}

    async def images(self, request: Request, settings: Settings) -> Tensor:
        return await request_images(request, self.runtime, settings)

    async def blob_images(self, blobs: list[bytes], settings: Settings) -> Tensor:
        return await images_tensor(blobs, self.runtime, settings)

    async def pair(self, request: Request, settings: Settings) -> Tensor | list[bytes]:
        body = await parse_json(request, InterpolateRequest)
        if body.z is not None:
            return self.latent_rows(body.z, 2, settings)
        return from_base64(body.images or [])

    async def latents(self, request: Request, settings: Settings) -> Tensor:
        require_json(request)
        body = await parse_json(request, DecodeRequest)
        return self.latent_rows(body.z, settings.max_images_per_request, settings)

    def latent_rows(self, rows: list[Any], max_rows: int, settings: Settings) -> Tensor:
        dim = self.runtime.config.latent_dim
        return latent_rows(rows, dim, max_rows, settings.max_abs_latent)

    async def encode(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        posterior = await self.runtime.encode(images)
        return posterior.mean, posterior.logvar

    async def decode(self, z: Tensor) -> Tensor:
        return await self.runtime.decode(z)


class DiffusersApi:
    """A diffusers AutoencoderKL or AutoencoderTiny: latents N x C x h x w, images at their
    own size in [0, 1] (the model's [-1, 1] inside). AutoencoderTiny has no posterior:
    its encode answers the latents as the mean, and no log-variance."""

    def __init__(self, runtime: DiffusersRuntime) -> None:
        self.runtime = runtime
        self.family = runtime.config.family
        self.has_posterior = runtime.has_posterior
        space = runtime.config
        self.image_shape: tuple[int, ...] = (space.image_channels, -1, -1)
        self.latent_shape: tuple[int, ...] = (space.latent_channels, -1, -1)

    def check_declared(self, shape: tuple[int, ...], latents: bool, settings: Settings) -> None:
        if latents:
            self.check_shape(shape, settings.max_images_per_request, settings)
        else:
            check_size(shape[2], shape[3], self.runtime.config, settings)

    def latent_info(self, z: Tensor) -> dict[str, Any]:
        space = self.runtime.config
        return {"latent_dim": space.latent_channels, "latent_shape": list(z.shape[1:])}

    async def images(self, request: Request, settings: Settings) -> Tensor:
        space = self.runtime.config
        if media_type(request) == NPY_MEDIA_TYPE:
            body = await request.body()
            try:
                images = parse_images(
                    body, None, space.image_channels, settings.max_images_per_request
                )
            except NpyError as exc:
                raise (BadImage if exc.status_code == 400 else Unprocessable)(str(exc)) from None
            check_size(images.shape[2], images.shape[3], space, settings)
            return images
        blobs = await image_blobs(request, settings.max_images_per_request)
        return await self.blob_images(blobs, settings)

    async def blob_images(self, blobs: list[bytes], settings: Settings) -> Tensor:
        arrays = await asyncio.to_thread(self._decode_files, blobs, settings)
        return torch.from_numpy(np.stack(arrays))

    def _decode_files(self, blobs: list[bytes], settings: Settings) -> list[np.ndarray]:
        space, arrays = self.runtime.config, list[np.ndarray]()
        for i, blob in enumerate(blobs):
            array = decode_image_as_is(blob, space.image_channels, settings.max_pixels_per_image, i)
            check_size(array.shape[1], array.shape[2], space, settings)
            if arrays and array.shape != arrays[0].shape:
                raise Unprocessable(
                    f"images[{i}] is {array.shape[1]}x{array.shape[2]}; images[0] is "
                    f"{arrays[0].shape[1]}x{arrays[0].shape[2]}: one request's images "
                    "share one size"
                )
            arrays.append(array)
        return arrays

    def check_shape(self, shape: tuple[int, ...], max_rows: int, settings: Settings) -> None:
        """N x C x h x w latents this model can decode, checked before they are read."""
        space = self.runtime.config
        if len(shape) != 4:
            raise Unprocessable(
                f"latents have shape {list(shape)}; this model's are N x C x h x w "
                f"with C = {space.latent_channels}"
            )
        n, channels, h, w = shape
        if min(shape) < 1:
            raise Unprocessable(f"latents have shape {list(shape)}: every size must be >= 1")
        check_limit(n, max_rows, "latents per request", "max_images_per_request")
        if channels != space.latent_channels:
            raise Unprocessable(
                f"latents have {channels} channels; this model's have {space.latent_channels}"
            )
        pixels = h * w * space.factor**2
        check_limit(
            pixels, settings.max_pixels_per_image, "pixels per image", "max_pixels_per_image"
        )

    async def latents(self, request: Request, settings: Settings) -> Tensor:
        kind, body = media_type(request), await request.body()
        max_rows = settings.max_images_per_request
        if kind == NPY_MEDIA_TYPE:
            try:
                z = parse_array(body, lambda shape: self.check_shape(shape, max_rows, settings))
            except NpyError as exc:
                raise Unprocessable(str(exc)) from None
            return checked_latents(z, settings.max_abs_latent)
        if kind != "application/json":
            raise unsupported(request, LATENT_MEDIA_TYPES)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Unprocessable(f"the body is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("z"), list):
            raise Unprocessable('the body must be {"z": N x C x h x w nested lists of floats}')
        return self.latent_rows(parsed["z"], max_rows, settings)

    async def pair(self, request: Request, settings: Settings) -> Tensor | list[bytes]:
        try:
            parsed = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise Unprocessable(f"the body is not valid JSON: {exc}") from None
        given = [k for k in ("images", "z") if isinstance(parsed, dict) and k in parsed]
        pair = parsed[given[0]] if len(given) == 1 else None
        if not isinstance(pair, list) or len(pair) != 2:
            raise Unprocessable(
                "give either 'images' (two base64 image files) or 'z' (two C x h x w "
                "latents), not both"
            )
        if given == ["z"]:
            return self.latent_rows(pair, 2, settings)
        if not all(isinstance(text, str) for text in pair):
            raise Unprocessable("images must be two base64 strings")
        return from_base64(pair)

    def latent_rows(self, rows: list[Any], max_rows: int, settings: Settings) -> Tensor:
        check_limit(len(rows), max_rows, "latents per request", "max_images_per_request")
        try:
            # float64: a value such as 1e300 stays finite, so it is refused as too large.
            z = torch.tensor(rows, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise Unprocessable(
                "z must be N x C x h x w nested lists of numbers, every list of one length"
            ) from None
        self.check_shape(tuple(z.shape), max_rows, settings)
        return checked_latents(z, settings.max_abs_latent)

    async def encode(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        encoded = await self.runtime.encode(images * 2 - 1)
        mean = finite(encoded[0])
        return mean, (finite(encoded[1]) if len(encoded) == 2 else None)

    async def decode(self, z: Tensor) -> Tensor:
        images = finite(await self.runtime.decode(z))
        return ((images + 1) / 2).clamp(0, 1)


def latent_api(runtime: ModelRuntime | DiffusersRuntime) -> LatentApi:
    """The model as /encode, /decode, /reconstruct, /interpolate and the Open Inference
    Protocol see it, either kind."""
    if isinstance(runtime, ModelRuntime):
        return OwnApi(runtime)
    return DiffusersApi(runtime)

"""diffusers' remote VAE endpoints, so that ``remote_decode(endpoint=...)`` and
``remote_encode(endpoint=...)`` work unchanged: /remote-decode and /remote-encode for the
default model, and again under /models/{model}/. The wire format is server/remote_vae.py's;
the model runs through its batcher (``Served.wait``), as every model route's does."""

from __future__ import annotations

import asyncio
from typing import Annotated

import torch
from fastapi import APIRouter, Depends, Query, Request, Response
from torch import Tensor

from vae_service.server.api_docs import error_responses
from vae_service.server.errors import Unprocessable
from vae_service.server.remote_query import RemoteDecodeQuery, RemoteEncodeQuery
from vae_service.server.remote_vae import (
    DTYPES,
    check_decode,
    check_tiling,
    finite,
    image_file,
    read_tensor,
    signed_images,
    tensor_reply,
    uint8_images,
    unpack,
)
from vae_service.server.routes.inference import choose_seed
from vae_service.server.runtime import Posterior, draw_posterior
from vae_service.server.serving import PER_MODEL, Served, ServedModel, leased, model_path
from vae_service.server.validation import checked_latents

IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg"}


async def remote_decode(
    model: ServedModel, query: Annotated[RemoteDecodeQuery, Query()], request: Request
) -> Response:
    """Latents (a raw tensor) -> images: a PNG or JPEG (output_type=pil), or a raw tensor
    (pt): floats in [-1, 1] in the latents' dtype, or uint8 N×H×W×C (partial_postprocess)."""
    remote, settings = model.remote, model.settings
    check_decode(query, settings)
    grid = remote.packed_grid(query, settings)
    check_tiling(query, remote.can_tile, remote.family)
    z = read_tensor(await request.body(), query.shape, query.dtype, settings.max_body_bytes)
    z = checked_latents(unpack(z, *grid) if grid else z, settings.max_abs_latent)
    scaling = remote.scaling(query)
    z = scaling.to_model(z) if scaling else z
    images = finite(await model.wait(remote.decode(z, query.tile)))
    if query.output_type == "pil":
        data = await asyncio.to_thread(image_file, images, query.image_format)
        return Response(data, media_type=IMAGE_TYPES[query.image_format], headers=model.headers)
    if query.partial_postprocess:
        return tensor_reply(torch.from_numpy(uint8_images(images)), model.headers)
    return tensor_reply(images.to(DTYPES[query.dtype]), model.headers)


async def remote_encode(
    model: ServedModel, query: Annotated[RemoteEncodeQuery, Query()], request: Request
) -> Response:
    """Images (a raw tensor in [-1, 1], or an image file) -> latents, a raw tensor in the
    images' dtype (float32 for a file): the posterior's mode, or with sample=true a draw."""
    remote = model.remote
    if query.sample and not remote.has_posterior:
        raise Unprocessable(f"{remote.family} has no posterior to sample from")
    check_tiling(query, remote.can_tile, remote.family)
    images, dtype = await request_images(request, query, model)
    encoded = await model.wait(remote.encode(images, query.tile))
    headers = model.headers
    z = finite(encoded[0])
    if query.sample:
        seed = choose_seed(query.seed)
        z, headers["X-Seed"] = draw_posterior(Posterior(*encoded), seed), str(seed)
    scaling = remote.scaling(query)
    return tensor_reply((scaling.from_model(z) if scaling else z).to(dtype), headers)


async def request_images(
    request: Request, query: RemoteEncodeQuery, model: Served
) -> tuple[Tensor, torch.dtype]:
    """The images to encode, and the dtype to answer in."""
    remote, settings = model.remote, model.settings
    if query.shape is None:  # diffusers' client sends a PIL image as a PNG file
        return await remote.file_images(await request.body(), settings), torch.float32
    remote.check_images(query.shape, settings)
    body = await request.body()
    images = read_tensor(body, query.shape, query.dtype, settings.max_body_bytes)
    return signed_images(images), DTYPES[query.dtype]


def remote_router(prefix: str = "") -> APIRouter:
    """The remote VAE routes under ``prefix``: "" for the default model, or PER_MODEL."""
    per_model = prefix == PER_MODEL
    # Left out of /openapi.json, as the /v2 routes are: the wire format is diffusers'
    # (raw tensor bodies no schema can bound), documented in docs/diffusers.md.
    router = APIRouter(
        prefix=prefix,
        tags=["remote VAE"],
        include_in_schema=False,
        dependencies=[Depends(model_path)] if per_model else [],
        responses=error_responses(404) if per_model else {},
    )
    errors = error_responses(400, 401, 413, 422, 503, 504)
    router.post("/remote-decode", response_class=Response, responses=errors)(leased(remote_decode))
    router.post("/remote-encode", response_class=Response, responses=errors)(leased(remote_encode))
    return router

"""The model endpoints: /encode, /decode, /reconstruct, /interpolate, /sample.

Each handler parses its request, makes one call on the runtime, and builds the answer.
They read their query string, model and body themselves, not through FastAPI's
dependency solving, which cost the event loop more (server/routes/query.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import torch
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel
from torch import Tensor

from vae_service.server.api_docs import (
    IMAGE_PAIR,
    NPY_RESPONSE,
    PNG_RESPONSE,
    error_responses,
    image_body,
)
from vae_service.server.deps import get_runtime, media_type, require_json, settings_of
from vae_service.server.errors import Unprocessable
from vae_service.server.imaging import encode_base64_pngs, encode_grid_png
from vae_service.server.npy import MEDIA_TYPE as NPY_MEDIA_TYPE
from vae_service.server.npy import images_to_npy, to_npy
from vae_service.server.randomness import new_seed
from vae_service.server.routes.bodies import (
    IMAGE_MEDIA_TYPES,
    check_limit,
    from_base64,
    images_tensor,
    latents_tensor,
    multipart_blobs,
    parse_json,
    request_images,
    unsupported,
)
from vae_service.server.routes.query import (
    EncodeQuery,
    ImagesQuery,
    InterpolateQuery,
    SampleQuery,
    query_doc,
    read_query,
)
from vae_service.server.runtime import ModelRuntime, draw_posterior
from vae_service.server.schemas import (
    DecodeRequest,
    DecodeResponse,
    EncodeFormat,
    EncodeRequest,
    EncodeResponse,
    ImageFormat,
    InterpolateRequest,
    InterpolateResponse,
    PriorName,
    SampleResponse,
)
from vae_service.server.settings import Settings

router = APIRouter(tags=["model"])
JSON = "application/json"
IMAGES_OR_ARRAY = "Images as multipart parts named 'images', JSON, or one .npy array"
IMAGE_BODY = image_body(EncodeRequest, IMAGES_OR_ARRAY, npy=True)

IMAGE_ERRORS = error_responses(400, 401, 413, 415, 422, 503, 504)
DECODE_ERRORS = error_responses(401, 413, 415, 422, 503, 504)
DECODE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": DecodeRequest.model_json_schema()}},
    }
}


def choose_seed(seed: int | None) -> int:
    return new_seed() if seed is None else seed


def choose_prior(requested: PriorName | None, runtime: ModelRuntime) -> PriorName:
    """The fitted prior when the weights carry one, unless the standard one is asked for."""
    if requested is None:
        return PriorName.fitted if runtime.prior else PriorName.standard
    if requested is PriorName.fitted and runtime.prior is None:
        raise Unprocessable(
            "prior=fitted: these weights carry no fitted prior (add one with vae-fit-prior), "
            "use prior=standard"
        )
    return requested


async def reply_with_images(
    images: Tensor,
    fmt: ImageFormat,
    build: Callable[[list[str]], BaseModel],
    headers: dict[str, str] | None = None,
    columns: int | None = None,
) -> BaseModel | Response:
    """PNG encoding runs off the event loop; ``build`` wraps the base64 PNGs in a model.
    A float32 .npy array needs no encoding: it is the tensor's bytes."""
    if fmt is ImageFormat.npy:
        return Response(images_to_npy(images), media_type=NPY_MEDIA_TYPE, headers=headers)
    array = images.numpy()
    if fmt is ImageFormat.png:
        png = await asyncio.to_thread(encode_grid_png, array, columns)
        return Response(png, media_type="image/png", headers=headers)
    return build(await asyncio.to_thread(encode_base64_pngs, array))


@router.post(
    "/encode",
    response_model=EncodeResponse,
    response_model_exclude_none=True,
    responses={**NPY_RESPONSE, **IMAGE_ERRORS},
    openapi_extra=IMAGE_BODY | query_doc(EncodeQuery),
)
async def encode(request: Request) -> Response:
    """Mean and log-variance of q(z|x) for each image, in order. Image files are converted
    to the model's channels and resized to its image size; .npy arrays must have it."""
    runtime, query = await get_runtime(request), read_query(request, EncodeQuery)
    posterior = await runtime.encode(await request_images(request, runtime, settings_of(request)))
    rows = {"mean": posterior.mean, "logvar": posterior.logvar}
    headers = {}
    if query.sample:
        chosen = choose_seed(query.seed)
        rows["z"] = draw_posterior(posterior, chosen)
        headers["X-Seed"] = str(chosen)
    if query.fmt is EncodeFormat.npy:
        return Response(to_npy(torch.stack(list(rows.values()), 1)), 200, headers, NPY_MEDIA_TYPE)
    # orjson writes the float32 arrays directly: no Python lists, no model validation.
    body = {"latent_dim": runtime.config.latent_dim, **{k: v.numpy() for k, v in rows.items()}}
    if query.sample:
        body["seed"] = chosen
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), 200, headers, JSON)


@router.post(
    "/decode",
    response_model=DecodeResponse,
    responses={**PNG_RESPONSE, **DECODE_ERRORS},
    openapi_extra=DECODE_BODY | query_doc(ImagesQuery),
)
async def decode(request: Request) -> BaseModel | Response:
    """Images (the mean of p(x|z)) for each latent, in order."""
    runtime, query = await get_runtime(request), read_query(request, ImagesQuery)
    require_json(request)
    body, settings = await parse_json(request, DecodeRequest), settings_of(request)
    z = latents_tensor(
        body.z, runtime.config.latent_dim, settings.max_images_per_request, settings.max_abs_latent
    )
    images = await runtime.decode(z)
    return await reply_with_images(images, query.fmt, lambda pngs: DecodeResponse(images=pngs))


@router.post(
    "/reconstruct",
    response_model=DecodeResponse,
    responses={**PNG_RESPONSE, **IMAGE_ERRORS},
    openapi_extra=IMAGE_BODY | query_doc(ImagesQuery),
)
async def reconstruct(request: Request) -> BaseModel | Response:
    """Each image through the encoder's mean and back through the decoder."""
    runtime, query = await get_runtime(request), read_query(request, ImagesQuery)
    images = await request_images(request, runtime, settings_of(request))
    recon = await runtime.reconstruct(images)
    return await reply_with_images(recon, query.fmt, lambda pngs: DecodeResponse(images=pngs))


async def interpolation_ends(request: Request, runtime: ModelRuntime, settings: Settings) -> Tensor:
    """The two latents to join: given, or the posterior means of two images."""
    kind = media_type(request)
    if kind == "multipart/form-data":
        blobs = await multipart_blobs(request)
        if len(blobs) != 2:
            raise Unprocessable(f"interpolation takes exactly 2 images, got {len(blobs)}")
    elif kind == "application/json":
        body = await parse_json(request, InterpolateRequest)
        if body.z is not None:
            return latents_tensor(body.z, runtime.config.latent_dim, 2, settings.max_abs_latent)
        blobs = from_base64(body.images or [])
    else:
        raise unsupported(request, IMAGE_MEDIA_TYPES)
    return (await runtime.encode(await images_tensor(blobs, runtime, settings))).mean


@router.post(
    "/interpolate",
    response_model=InterpolateResponse,
    responses={**PNG_RESPONSE, **IMAGE_ERRORS},
    openapi_extra=image_body(
        InterpolateRequest,
        "Two images (multipart parts named 'images', or JSON), or two latents",
        count=IMAGE_PAIR,
    )
    | query_doc(InterpolateQuery),
)
async def interpolate(request: Request) -> BaseModel | Response:
    """Decoded points on the straight line between two latents: nearby latents decode to
    similar images (continuity) and every point decodes to a plausible one (completeness).
    With ?format=png, one row of images."""
    runtime, query = await get_runtime(request), read_query(request, InterpolateQuery)
    settings, steps = settings_of(request), query.steps
    check_limit(steps, settings.max_interpolation_steps, "steps", "max_interpolation_steps")
    ends = await interpolation_ends(request, runtime, settings)
    z, images = await runtime.interpolate(ends[0], ends[1], steps)
    return await reply_with_images(
        images,
        query.fmt,
        lambda pngs: InterpolateResponse(steps=steps, z=z.tolist(), images=pngs),
        columns=steps,  # one row, first to last
    )


@router.get(
    "/sample",
    response_model=SampleResponse,
    responses={**PNG_RESPONSE, **error_responses(401, 422, 503, 504)},
    openapi_extra=query_doc(SampleQuery),
)
async def sample(request: Request) -> BaseModel | Response:
    """n latents from the prior, decoded: N(0, temperature^2 I), or the fitted mixture with
    each draw's deviation from its component mean scaled by temperature. The same seed
    gives the same PNGs byte for byte on the same device; with ?format=png|npy the seed is
    in X-Seed and the prior in X-Prior."""
    runtime, query = await get_runtime(request), read_query(request, SampleQuery)
    limit = settings_of(request).max_sample_n
    check_limit(query.n, limit, "n", "max_sample_n")
    used, chosen = choose_prior(query.prior, runtime), choose_seed(query.seed)
    z, images = await runtime.sample(query.n, query.temperature, chosen, used is PriorName.fitted)
    return await reply_with_images(
        images,
        query.fmt,
        lambda pngs: SampleResponse(
            prior=used, seed=chosen, temperature=query.temperature, z=z.tolist(), images=pngs
        ),
        headers={"X-Seed": str(chosen), "X-Prior": used.value},
    )

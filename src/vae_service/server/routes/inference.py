"""The model endpoints: /encode, /decode, /reconstruct, /interpolate, /sample, for the
default model and again under /models/{model}/ for any model of the repository.

Each handler decodes its request, waits for one call on the runtime, and encodes the
answer. The model and the query string come in through the signature; the body is read
in server/request_bodies.py, as it may be one of several content types.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

import orjson
import torch
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel
from torch import Tensor

from vae_service.server.api_docs import (
    IMAGE_PAIR,
    NPY_RESPONSE,
    PNG_RESPONSE,
    error_responses,
    image_body,
)
from vae_service.server.errors import Unprocessable
from vae_service.server.imaging import encode_base64_pngs, encode_grid_png
from vae_service.server.latent_api import LatentApi, OwnApi
from vae_service.server.npy import MEDIA_TYPE as NPY_MEDIA_TYPE
from vae_service.server.npy import images_to_npy, to_npy
from vae_service.server.query_models import (
    EncodeQuery,
    ImagesQuery,
    InterpolateQuery,
    SampleQuery,
)
from vae_service.server.randomness import new_seed
from vae_service.server.request_bodies import (
    IMAGE_MEDIA_TYPES,
    media_type,
    multipart_blobs,
    unsupported,
)
from vae_service.server.routes import scoring
from vae_service.server.runtime import ModelRuntime, Posterior, draw_posterior, line_between
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
from vae_service.server.score_schemas import ScoreResponse
from vae_service.server.serving import PER_MODEL, Served, ServedModel, leased, model_path
from vae_service.server.validation import check_limit

JSON = "application/json"
IMAGES_OR_ARRAY = "Images as multipart parts named 'images', JSON, or one .npy array"
IMAGE_BODY = image_body(EncodeRequest, IMAGES_OR_ARRAY, npy=True)

DECODE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": DecodeRequest.model_json_schema()}},
    }
}
PAIR_BODY = image_body(
    InterpolateRequest,
    "Two images (multipart parts named 'images', or JSON), or two latents",
    count=IMAGE_PAIR,
)


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
    build: Callable[[list[str]], BaseModel | dict[str, Any]],
    headers: dict[str, str],
    columns: int | None = None,
) -> Response:
    """PNG encoding runs off the event loop; ``build`` wraps the base64 PNGs in a model.
    A float32 .npy array needs no encoding: it is the tensor's bytes."""
    if fmt is ImageFormat.npy:
        return Response(images_to_npy(images), media_type=NPY_MEDIA_TYPE, headers=headers)
    array = images.numpy()
    if fmt is ImageFormat.png:
        png = await asyncio.to_thread(encode_grid_png, array, columns)
        return Response(png, media_type="image/png", headers=headers)
    pngs = await asyncio.to_thread(encode_base64_pngs, array)
    body = build(pngs)
    if isinstance(body, dict):
        data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(data, media_type=JSON, headers=headers)
    return Response(body.model_dump_json(), media_type=JSON, headers=headers)


async def encode(
    model: ServedModel,
    query: Annotated[EncodeQuery, Query()],
    request: Request,
) -> Response:
    """Mean and log-variance of q(z|x) for each image, in order. Image files are converted
    to the model's channels and resized to its image size; .npy arrays must have it.
    A diffusers model takes images at their own size (a multiple of its downsampling
    factor), and answers latents C×h×w; AutoencoderTiny answers no logvar."""
    api = model.api
    if query.sample and not api.has_posterior:
        raise Unprocessable(f"{api.family} has no posterior to sample from")
    images = await api.images(request, model.settings)
    mean, logvar = await model.wait(api.encode(images))
    rows, headers = {"mean": mean}, model.headers
    if logvar is not None:
        rows["logvar"] = logvar
    if query.sample and logvar is not None:
        chosen = choose_seed(query.seed)
        rows["z"] = draw_posterior(Posterior(mean, logvar), chosen)
        headers["X-Seed"] = str(chosen)
    if query.fmt is EncodeFormat.npy:
        return Response(to_npy(torch.stack(list(rows.values()), 1)), 200, headers, NPY_MEDIA_TYPE)
    # orjson writes the float32 arrays directly: no Python lists, no model validation.
    body = {**api.latent_info(mean), **{k: v.numpy() for k, v in rows.items()}}
    if query.sample:
        body["seed"] = chosen
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), 200, headers, JSON)


async def decode(
    model: ServedModel,
    query: Annotated[ImagesQuery, Query()],
    request: Request,
) -> Response:
    """Images (the mean of p(x|z)) for each latent, in order. A diffusers model takes
    latents N×C×h×w: JSON nested lists, or a float32 .npy array."""
    api = model.api
    z = await api.latents(request, model.settings)
    images = await model.wait(api.decode(z))
    return await reply_with_images(
        images, query.fmt, lambda pngs: DecodeResponse(images=pngs), model.headers
    )


async def reconstruct(
    model: ServedModel,
    query: Annotated[ImagesQuery, Query()],
    request: Request,
) -> Response:
    """Each image through the encoder's mean and back through the decoder."""
    api = model.api
    images = await api.images(request, model.settings)
    recon = await model.wait(reconstructed(api, images))
    return await reply_with_images(
        recon, query.fmt, lambda pngs: DecodeResponse(images=pngs), model.headers
    )


async def reconstructed(api: LatentApi, images: Tensor) -> Tensor:
    mean, _ = await api.encode(images)
    return await api.decode(mean)


async def interpolation_ends(request: Request, model: Served) -> Tensor:
    """The two latents to join: given, or the posterior means of two images."""
    api, settings, kind = model.api, model.settings, media_type(request)
    if kind == "multipart/form-data":
        blobs = await multipart_blobs(request)
        if len(blobs) != 2:
            raise Unprocessable(f"interpolation takes exactly 2 images, got {len(blobs)}")
    elif kind == "application/json":
        pair = await api.pair(request, settings)
        if isinstance(pair, Tensor):
            return pair
        blobs = pair
    else:
        raise unsupported(request, IMAGE_MEDIA_TYPES)
    images = await api.blob_images(blobs, settings)
    mean, _ = await model.wait(api.encode(images))
    return mean


async def interpolate(
    model: ServedModel,
    query: Annotated[InterpolateQuery, Query()],
    request: Request,
) -> Response:
    """Decoded points on the straight line between two latents: nearby latents decode to
    similar images (continuity) and every point decodes to a plausible one (completeness).
    With ?format=png, one row of images."""
    steps = query.steps
    check_limit(steps, model.settings.max_interpolation_steps, "steps", "max_interpolation_steps")
    ends = await interpolation_ends(request, model)
    z = line_between(ends[0], ends[1], steps)
    images = await model.wait(model.api.decode(z))

    def build(pngs: list[str]) -> BaseModel | dict[str, Any]:
        if z.ndim == 2:
            return InterpolateResponse(steps=steps, z=z.tolist(), images=pngs)
        return {"steps": steps, "z": z.numpy(), "images": pngs}  # a diffusers model's

    return await reply_with_images(
        images,
        query.fmt,
        build,
        model.headers,
        columns=steps,  # one row, first to last
    )


async def sample(model: ServedModel, query: Annotated[SampleQuery, Query()]) -> Response:
    """n latents from the prior, decoded: N(0, temperature^2 I), or the fitted mixture with
    each draw's deviation from its component mean scaled by temperature. The same seed
    gives the same PNGs byte for byte on the same device; with ?format=png|npy the seed is
    in X-Seed and the prior in X-Prior."""
    check_limit(query.n, model.settings.max_sample_n, "n", "max_sample_n")
    if not isinstance(model.api, OwnApi):
        raise Unprocessable(
            f"/sample: model {model.name!r} is a diffusers {model.api.family}, which has no "
            "prior to draw latents from; decode latents of your own with /decode"
        )
    used, chosen = choose_prior(query.prior, model.runtime), choose_seed(query.seed)
    drawn = model.runtime.sample(query.n, query.temperature, chosen, used is PriorName.fitted)
    z, images = await model.wait(drawn)
    return await reply_with_images(
        images,
        query.fmt,
        lambda pngs: SampleResponse(
            prior=used, seed=chosen, temperature=query.temperature, z=z.tolist(), images=pngs
        ),
        {**model.headers, "X-Seed": str(chosen), "X-Prior": used.value},
    )


def model_router(prefix: str = "") -> APIRouter:
    """The model routes under ``prefix``: "" for the default model, or PER_MODEL. Each
    route has its whole path, as the metrics' endpoint label and the docs show it."""
    per_model = prefix == PER_MODEL
    router = APIRouter(
        prefix=prefix,
        tags=["model"],
        dependencies=[Depends(model_path)] if per_model else [],
        responses=error_responses(404) if per_model else {},
    )
    image_errors = error_responses(400, 401, 413, 415, 422, 503, 504)
    router.post(
        "/encode",
        response_model=EncodeResponse,
        response_model_exclude_none=True,
        responses={**NPY_RESPONSE, **image_errors},
        openapi_extra=IMAGE_BODY,
    )(leased(encode))
    router.post(
        "/decode",
        response_model=DecodeResponse,
        responses={**PNG_RESPONSE, **error_responses(401, 413, 415, 422, 503, 504)},
        openapi_extra=DECODE_BODY,
    )(leased(decode))
    router.post(
        "/reconstruct",
        response_model=DecodeResponse,
        responses={**PNG_RESPONSE, **image_errors},
        openapi_extra=IMAGE_BODY,
    )(leased(reconstruct))
    router.post(
        "/interpolate",
        response_model=InterpolateResponse,
        responses={**PNG_RESPONSE, **image_errors},
        openapi_extra=PAIR_BODY,
    )(leased(interpolate))
    router.get(
        "/sample",
        response_model=SampleResponse,
        responses={**PNG_RESPONSE, **error_responses(401, 422, 503, 504)},
    )(leased(sample))
    router.post(
        "/score", response_model=ScoreResponse, responses=image_errors, openapi_extra=IMAGE_BODY
    )(leased(scoring.score))
    return router

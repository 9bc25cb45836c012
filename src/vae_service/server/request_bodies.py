"""Reading request bodies: image files (multipart or base64 JSON), .npy arrays, and JSON
validated as a request model.

The model routes take several content types for one body, which no signature can
declare: they read it here, and their ``openapi_extra`` documents it. Each reader checks
counts against the settings before the expensive work, and turns what it reads into
CPU float32 tensors for the runtime.
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
from typing import TypeVar

import torch
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from torch import Tensor

from vae_service.server.errors import BadImage, Unprocessable, UnsupportedMediaType
from vae_service.server.imaging import decode_images, png_pixels
from vae_service.server.npy import MEDIA_TYPE as NPY_MEDIA_TYPE
from vae_service.server.npy import NpyError, parse_images
from vae_service.server.runtime import ModelRuntime
from vae_service.server.schemas import EncodeRequest
from vae_service.server.settings import Settings
from vae_service.server.validation import check_limit

IMAGE_MEDIA_TYPES = ("multipart/form-data", "application/json")
ARRAY_MEDIA_TYPES = (*IMAGE_MEDIA_TYPES, NPY_MEDIA_TYPE)
# Measured on 2 cores: a thread hop costs more than decoding a small image (a 28×28 PNG
# is ~1 KB and ~0.2 ms), so small PNGs are decoded on the event loop. The pixel bound
# matters as much as the byte bound: a 16 KB PNG can declare 4000×4000 pixels (90 ms).
INLINE_DECODE_BYTES = 64 * 1024
INLINE_DECODE_PIXELS = 128 * 128
M = TypeVar("M", bound=BaseModel)
# With a length that is a multiple of 4, the same strings as schemas.BASE64_PATTERN.
BASE64_CHARS = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def media_type(request: Request) -> str:
    """The request's content type without parameters, lower-cased ('' if none)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def require_json(request: Request) -> None:
    """415 unless the body is declared as JSON."""
    if media_type(request) != "application/json":
        raise unsupported(request, ("application/json",))


async def parse_json(request: Request, model: type[M]) -> M:
    """The body validated as ``model``; errors as FastAPI's 422 list."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def unsupported(request: Request, accepted: tuple[str, ...]) -> UnsupportedMediaType:
    got = media_type(request) or "none"
    return UnsupportedMediaType(f"expected Content-Type {' or '.join(accepted)}, got {got}")


def is_base64(text: str) -> bool:
    """Standard padded base64, exactly the strings that BASE64_PATTERN (in the OpenAPI
    document) matches: b64decode alone lets a few others through ('AA==AA==', 'AAAA====').
    The character class scan is linear and fast; the full pattern is not, on megabytes."""
    return len(text) % 4 == 0 and BASE64_CHARS.fullmatch(text) is not None


def from_base64(encoded: list[str]) -> list[bytes]:
    blobs = []
    for i, text in enumerate(encoded):
        if not is_base64(text):
            raise Unprocessable(f"images[{i}] is not valid base64")
        blobs.append(base64.b64decode(text))  # cannot fail on what is_base64 accepts
    return blobs


async def multipart_blobs(request: Request) -> list[bytes]:
    """The files sent as parts named ``images``, in order."""
    # The body limit bounds the number of parts; the image limit is checked by the caller,
    # so it answers 422 like every other count.
    async with request.form(max_files=math.inf) as form:
        parts = form.getlist("images")
        if not parts:
            raise Unprocessable("multipart body has no parts named 'images'")
        if not all(isinstance(part, UploadFile) for part in parts):
            raise Unprocessable("every 'images' part must be a file (curl -F images=@file.png)")
        return [await part.read() for part in parts if isinstance(part, UploadFile)]


async def image_blobs(request: Request, max_images: int) -> list[bytes]:
    """Image files from a multipart body or a JSON ``{"images": [base64, ...]}`` body."""
    kind = media_type(request)
    if kind == "multipart/form-data":
        blobs = await multipart_blobs(request)
        check_limit(len(blobs), max_images, "images per request", "max_images_per_request")
        return blobs
    if kind == "application/json":
        encoded = (await parse_json(request, EncodeRequest)).images
        check_limit(len(encoded), max_images, "images per request", "max_images_per_request")
        return from_base64(encoded)
    raise unsupported(request, ARRAY_MEDIA_TYPES)


def decode_inline(blobs: list[bytes]) -> bool:
    """Small PNGs, by their bytes and by the pixels their headers declare."""
    if sum(len(blob) for blob in blobs) > INLINE_DECODE_BYTES:
        return False
    pixels = [png_pixels(blob) for blob in blobs]
    return None not in pixels and sum(p or 0 for p in pixels) <= INLINE_DECODE_PIXELS


async def images_tensor(blobs: list[bytes], runtime: ModelRuntime, settings: Settings) -> Tensor:
    """Decode to the model's channels and size; off the event loop unless small."""
    cfg = runtime.config
    args = (blobs, cfg.image_size, cfg.channels, settings.max_pixels_per_image)
    if decode_inline(blobs):
        return torch.from_numpy(decode_images(*args))
    return torch.from_numpy(await asyncio.to_thread(decode_images, *args))


def array_images(body: bytes, runtime: ModelRuntime, settings: Settings) -> Tensor:
    """An application/x-npy body, checked from its header before its data is read."""
    cfg = runtime.config
    try:
        return parse_images(body, cfg.image_size, cfg.channels, settings.max_images_per_request)
    except NpyError as exc:
        raise (BadImage if exc.status_code == 400 else Unprocessable)(str(exc)) from None


async def request_images(request: Request, runtime: ModelRuntime, settings: Settings) -> Tensor:
    """The request's images as an N x C x H x W tensor in [0, 1]."""
    if media_type(request) == NPY_MEDIA_TYPE:
        return array_images(await request.body(), runtime, settings)
    blobs = await image_blobs(request, settings.max_images_per_request)
    return await images_tensor(blobs, runtime, settings)

"""What the OpenAPI document (/docs) says besides the bodies' models: the API's
description, the error statuses each endpoint answers, the PNG and .npy answers, and the
multipart and .npy request bodies the routes read themselves."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from vae_service.server.schemas import ErrorResponse, live

ERROR_MEANINGS = {
    400: "Empty image, a file no image decoder can read, or a body that is no .npy file "
    "(bytes a schema cannot tell from an image)",
    401: "VAE_API_KEYS is set and no valid 'Authorization: Bearer <key>' was sent",
    403: "An admin operation without an admin key, or with no VAE_ADMIN_KEYS set",
    404: "No model of that name; the detail lists the known ones",
    413: "Request body over VAE_MAX_BODY_BYTES",
    415: "Content type this endpoint does not take",
    422: "Invalid values (latent length, NaN/inf, format, base64, a prior the weights lack) "
    "or a count over its limit",
    503: "Model not loaded yet, queue full, out of device memory, or shutting down",
    504: "Request took longer than VAE_REQUEST_TIMEOUT_S; its queued work was dropped",
}


def error_responses(
    *codes: int, meanings: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses an endpoint can answer; ``meanings``
    replaces the usual description of a status where it means something else."""
    meaning = {**ERROR_MEANINGS, **(meanings or {})}
    return {code: {"model": ErrorResponse, "description": meaning[code]} for code in codes}


PNG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/png": {}, "application/x-npy": {}},
        "description": "JSON; with ?format=png one PNG; with ?format=npy a float32 N×H×W×C array",
    }
}
NPY_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/x-npy": {}},
        "description": "JSON; with ?format=npy a float32 N×2×D array (N×3×D with ?sample=true)",
    }
}
# How many images a body holds: 1 to VAE_MAX_IMAGES_PER_REQUEST, or the two of /interpolate.
IMAGE_COUNT: dict[str, Any] = {"minItems": 1, **live(maxItems="max_images_per_request")}
IMAGE_PAIR: dict[str, Any] = {"minItems": 2, "maxItems": 2}


def multipart_images(count: dict[str, Any]) -> dict[str, Any]:
    """A multipart body of ``count`` file parts named ``images``, none of them empty (an
    empty file is no image: 400, as an empty base64 string in JSON)."""
    part = {"type": "string", "format": "binary", "minLength": 1}
    files = {"type": "array", "items": part, **count}
    return {"type": "object", "properties": {"images": files}, "required": ["images"]}


NPY_BODY = {
    "type": "string",
    "format": "binary",
    "description": "A .npy array: uint8 (0..255) or float32 (0..1), N×H×W, N×H×W×C or "
    "N×C×H×W, at the model's image size",
}


def image_body(
    json_model: type[BaseModel], what: str, npy: bool = False, count: dict[str, Any] = IMAGE_COUNT
) -> dict[str, Any]:
    """openapi_extra for endpoints that read images from multipart or JSON bodies (and,
    with ``npy``, from an application/x-npy array); ``count`` bounds the multipart parts."""
    content = {
        "multipart/form-data": {"schema": multipart_images(count)},
        "application/json": {"schema": json_model.model_json_schema()},
    }
    if npy:
        content["application/x-npy"] = {"schema": NPY_BODY}
    return {"requestBody": {"required": True, "description": what, "content": content}}


API_DESCRIPTION = """
A variational autoencoder over HTTP: encode images to the posterior q(z|x), decode
latents to images, sample the prior, reconstruct, and interpolate.

**Images in**: any file Pillow reads (PNG, JPEG, WebP, BMP, GIF first frame, TIFF), as
multipart parts named `images` or base64 strings in JSON. Each is converted to the
model's channels (transparent pixels become black, 16-bit greys are scaled) and resized
to its square image size, aspect ratio not kept.

**Images out**: base64 PNGs in JSON, or with `?format=png` one PNG (a grid for several).

**Priors**: `/sample?prior=fitted` draws from a Gaussian mixture fitted to the training
set's posterior means (sharper samples), `prior=standard` from N(0, I); the default is
`fitted` when the weights carry one (see `/model`), and the answer names the prior used
(`prior` in JSON, `X-Prior` with `?format=png|npy`).

**Binary fast path**: /encode and /reconstruct also take an `application/x-npy` body
(uint8 0..255 or float32 0..1, N×H×W, N×H×W×C or N×C×H×W, at the model's size: not
resized), and `?format=npy` answers a float32 `.npy` array: images N×H×W×C from /decode,
/sample, /reconstruct and /interpolate; N×2×D (mean, logvar) from /encode, N×3×D with
the draw z under `?sample=true` (its seed in `X-Seed`).

**Errors** are JSON `{"detail": ...}`: 400 empty or undecodable image (on /decode, a
body that is not UTF-8 text); 413 body over
`VAE_MAX_BODY_BYTES`; 415 wrong content type; 422 invalid values (latent length,
NaN/inf/over `VAE_MAX_ABS_LATENT`, unknown `format`, bad base64, `prior=fitted` on
weights without one) and counts over a
limit (images per request, pixels per image, `n`, `steps`); 503 model not loaded yet,
queue full, out of device memory or shutting down (with `Retry-After`); 504 slower than
`VAE_REQUEST_TIMEOUT_S`. With `VAE_API_KEYS` set, every endpoint but `/healthz` and
`/readyz` answers 401 without `Authorization: Bearer <key>`. Unknown query parameters
are ignored. Every answer carries `X-Request-ID` (yours, if you sent a short one).

**Limits in this document** are the running server's: its settings and, once the model
is loaded (`/readyz`), the model's (`z` rows of exactly `latent_dim` numbers, the priors
the weights offer). Where the repository's models differ in these, the routes that
depend on them are written out for each model (`/models/NAME/decode`, ...), with its
own. A request this document allows is accepted, except for what no schema can say:
bytes that are no image (400), an image over `VAE_MAX_PIXELS_PER_IMAGE` pixels (422), a
body over `VAE_MAX_BODY_BYTES` (413).
"""

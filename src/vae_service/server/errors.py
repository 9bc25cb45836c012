"""Error statuses and the handlers that turn every failure into ``{"detail": ...}``.

Status policy (also in the OpenAPI page):

* 400 - an image that is empty or that no decoder can read;
* 401 - ``VAE_API_KEYS`` is set and the request has no valid ``Authorization: Bearer``
  key (server/auth.py), with ``WWW-Authenticate: Bearer``;
* 403 - an admin operation while no ``VAE_ADMIN_KEYS`` are set, or without an admin key;
* 404 - no model of that name (the detail lists the known ones);
* 413 - a request body over ``VAE_MAX_BODY_BYTES`` (the HTTP meaning of 413);
* 415 - a body whose content type the endpoint does not take;
* 422 - a well-formed request whose values are wrong: latents of the wrong length,
  NaN, infinite or over ``VAE_MAX_ABS_LATENT``, an unknown ``format``, bad base64, and
  counts over a configured limit (images or latents per request, pixels per image,
  ``n``, ``steps``);
* 503 - the model is not loaded yet, its queue is full (``VAE_MAX_QUEUE_IMAGES``), the
  device ran out of memory on a single image, or the server is shutting down; each
  with ``Retry-After``;
* 504 - the request took longer than ``VAE_REQUEST_TIMEOUT_S`` (server/limits.py);
  its queued work is dropped.

Nothing reaches a client as a traceback: an unexpected exception is logged with the
request id and answered with a generic 500 (server/observability.py).
"""

from __future__ import annotations

from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from vae_service.server.batch_jobs import BatcherUnavailable
from vae_service.server.oip.errors import ProtocolErrors


class ServiceError(HTTPException):
    """A refusal with a fixed status. Subclassing HTTPException lets FastAPI pass it
    through its body parsing untouched, so a limit hit there keeps its status."""

    status: ClassVar[int] = 500

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(self.status, detail, headers)


class BadImage(ServiceError):
    status = 400


class PayloadTooLarge(ServiceError):
    status = 413


class UnsupportedMediaType(ServiceError):
    status = 415


class Unprocessable(ServiceError):
    status = 422


class Forbidden(ServiceError):
    status = 403


class ModelNotFound(ServiceError):
    status = 404


class NotReady(ServiceError):
    status = 503


def _public_error(error: Any) -> dict[str, Any]:
    # Drop "input" (it may echo megabytes of base64, or NaN that JSON cannot carry)
    # and "ctx" (it may hold exception objects).
    return {"loc": list(error.get("loc", ())), "msg": error.get("msg"), "type": error.get("type")}


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = [_public_error(error) for error in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


async def model_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """A full batching queue, or a server shutting down: come back later."""
    assert isinstance(exc, BatcherUnavailable)
    headers = {"Retry-After": str(exc.retry_after_s)}
    return JSONResponse({"detail": str(exc)}, status_code=503, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """HTTPException (and so ServiceError) keeps FastAPI's ``{"detail": ...}`` handler;
    other exceptions reach RequestObservability, which answers a generic 500. Under /v2,
    every error body is the Open Inference Protocol's ``{"error": ...}`` (added last, so
    around all the middleware: server/oip/errors.py)."""
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(BatcherUnavailable, model_unavailable)
    app.add_middleware(ProtocolErrors)

"""Error statuses and the handlers that turn every failure into ``{"detail": ...}``.

Status policy (also in the OpenAPI page):

* 400 - an image that is empty or that no decoder can read;
* 401 - ``VAE_API_KEYS`` is set and the request has no valid ``Authorization: Bearer``
  key (server/auth.py), with ``WWW-Authenticate: Bearer``;
* 403 - an admin operation while no ``VAE_ADMIN_KEYS`` are set, or without an admin key;
* 404 - no model of that name (the detail lists the known ones): ``UnknownModel``;
* 413 - a request body over ``VAE_MAX_BODY_BYTES`` (the HTTP meaning of 413);
* 415 - a body whose content type the endpoint does not take;
* 422 - a well-formed request whose values are wrong: latents of the wrong length,
  NaN, infinite or over ``VAE_MAX_ABS_LATENT``, an unknown ``format``, bad base64, and
  counts over a configured limit (images or latents per request, pixels per image,
  ``n``, ``steps``);
* 503 - the model is not loaded yet (``ModelUnavailable``), its queue is full
  (``VAE_MAX_QUEUE_IMAGES``), the device ran out of memory on a single image, or the
  server is shutting down; each with ``Retry-After``;
* 504 - the request took longer than ``VAE_REQUEST_TIMEOUT_S`` (server/serving.py);
  its queued work is dropped.

Nothing reaches a client as a traceback: an unexpected exception is logged with the
request id and answered with a generic 500 (server/observability.py).

Every error body is ``{"detail": ...}``, except under /v2, where the Open Inference
Protocol's clients expect ``{"error": "..."}``: ``error_response`` is the one place that
writes an error body, for the handlers here and for the middleware that answers on its
own (the key check, the body limit, the last-resort 500).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from vae_service.server.batch_jobs import BatcherUnavailable
from vae_service.server.model_entries import ModelUnavailable, UnknownModel

PROTOCOL_PREFIX = "/v2"  # the Open Inference Protocol's paths (server/routes/oip.py)


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


class RequestTimeout(ServiceError):
    status = 504


class ClientClosedRequest(ServiceError):
    """The client left before its answer: nginx's 499, recorded and never sent
    (server/observability.py drops it)."""

    status = 499


class ModelFailure(Exception):
    """An unexpected error while a model version served a request, raised from it with
    that version's X-Model headers, so that the generic 500 names the model too."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("unexpected error while serving a request")
        self.headers = headers


def is_protocol_path(path: str) -> bool:
    return path == PROTOCOL_PREFIX or path.startswith(PROTOCOL_PREFIX + "/")


def error_text(detail: Any) -> str:
    """One line from a ``detail``: a string as it is, FastAPI's validation list joined."""
    if not isinstance(detail, list):
        return str(detail)
    parts = []
    for item in detail:
        where = ".".join(str(part) for part in item.get("loc", ()))
        parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
    return "; ".join(parts)


def error_response(
    path: str, status: int, detail: Any, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """``{"detail": ...}``, or the protocol's ``{"error": "..."}`` under /v2."""
    body = {"error": error_text(detail)} if is_protocol_path(path) else {"detail": detail}
    return JSONResponse(body, status_code=status, headers=headers)


def _public_error(error: Any) -> dict[str, Any]:
    # Drop "input" (it may echo megabytes of base64, or NaN that JSON cannot carry)
    # and "ctx" (it may hold exception objects).
    return {"loc": list(error.get("loc", ())), "msg": error.get("msg"), "type": error.get("type")}


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = [_public_error(error) for error in exc.errors()]
    return error_response(request.url.path, 422, detail)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_response(request.url.path, exc.status_code, exc.detail, exc.headers)


async def batcher_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """A full batching queue, or a server shutting down: come back later."""
    assert isinstance(exc, BatcherUnavailable)
    headers = {"Retry-After": str(exc.retry_after_s)}
    return error_response(request.url.path, 503, str(exc), headers)


async def unknown_model(request: Request, exc: Exception) -> JSONResponse:
    """No model of that name: the detail lists the known ones."""
    return error_response(request.url.path, 404, str(exc))


async def model_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The model is loading, or failed to load with no older version serving."""
    return error_response(request.url.path, 503, str(exc), {"Retry-After": "1"})


# Exceptions, besides HTTPException, that have handlers of their own here.
HANDLED = (RequestValidationError, BatcherUnavailable, UnknownModel, ModelUnavailable)


def install_error_handlers(app: FastAPI) -> None:
    """Every refusal as ``error_response`` writes it; other exceptions reach
    RequestObservability, which answers a generic 500."""
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(BatcherUnavailable, batcher_unavailable)
    app.add_exception_handler(UnknownModel, unknown_model)
    app.add_exception_handler(ModelUnavailable, model_unavailable)

"""How a request reaches the model version that answers, and the settings.

The light routes take them as FastAPI dependencies (``Runtime``, ``Repository``); the
model routes call ``get_runtime`` and ``settings_of`` themselves, which is cheaper
(server/routes/query.py). The dependencies are ``async def`` although most never
await: FastAPI runs a plain ``def`` dependency on its thread pool, a thread hop per
dependency per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from vae_service.server.errors import ModelNotFound, NotReady, UnsupportedMediaType
from vae_service.server.leases import hold
from vae_service.server.model_entries import ModelUnavailable, UnknownModel, Version
from vae_service.server.observability import MODEL_STATE, PREFIX_STATE
from vae_service.server.repository import ModelRepository
from vae_service.server.runtime import ModelRuntime
from vae_service.server.schemas import live
from vae_service.server.settings import Settings

RETRY = {"Retry-After": "1"}
PER_MODEL = "/models/{model}"  # the prefix of the per-model model routes


def get_repository(request: Request) -> ModelRepository:
    repository: ModelRepository | None = request.app.state.repository
    if repository is None:
        raise NotReady("model not loaded yet", headers=RETRY)
    return repository


ModelName = Annotated[
    str,
    Path(
        description="A model's name, as GET /models lists them",
        json_schema_extra=live(enum="models"),
    ),
]


async def model_path(request: Request, model: ModelName) -> None:
    """Declares /models/{model}/... routes' path parameter (get_runtime reads it), and
    their prefix for the metrics' route template."""
    setattr(request.state, PREFIX_STATE, PER_MODEL)


def serving(repository: ModelRepository, name: str | None) -> Version:
    """The version answering ``name`` (None: the default model) now: 404 for an
    unknown model, 503 until it is loaded and warmed up (and while the default
    model's file is not in VAE_MODEL_DIR yet: the service is not ready)."""
    try:
        return repository.serving(name)
    except UnknownModel as exc:
        if name is None:
            raise NotReady(str(exc), headers=RETRY) from None
        raise ModelNotFound(str(exc)) from None
    except ModelUnavailable as exc:
        raise NotReady(str(exc), headers=RETRY) from None


def tag(request: Request, name: str, sha256: str) -> None:
    """Record which model version answers: for the X-Model headers and the metrics."""
    setattr(request.state, MODEL_STATE, (name, sha256))


async def get_runtime(request: Request) -> ModelRuntime:
    """The version serving the path's model (else the default), held for the whole
    request so that a swap meanwhile lets it finish there (server/leases.py). Its name
    and SHA-256 go into the response headers (server/observability.py)."""
    repository = get_repository(request)
    name = request.path_params.get("model")
    version = serving(repository, name)
    tag(request, name or repository.default, version.sha256)
    hold(request, version)
    return version.runtime


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def media_type(request: Request) -> str:
    """The request's content type without parameters, lower-cased ('' if none)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def require_json(request: Request) -> None:
    """415 unless the body is declared as JSON."""
    if media_type(request) != "application/json":
        raise UnsupportedMediaType(
            f"expected Content-Type application/json, got {media_type(request) or 'none'}"
        )


Runtime = Annotated[ModelRuntime, Depends(get_runtime)]
Repository = Annotated[ModelRepository, Depends(get_repository)]

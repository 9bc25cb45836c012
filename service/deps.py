"""Request dependencies: the loaded runtime and the settings, from ``app.state``.

They are ``async def`` although they never await: FastAPI runs a plain ``def``
dependency on its thread pool, a thread hop per dependency per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.errors import NotReady, UnsupportedMediaType
from service.runtime import ModelRuntime
from service.settings import Settings


async def get_runtime(request: Request) -> ModelRuntime:
    """The model, once loaded and warmed up; 503 before that."""
    runtime: ModelRuntime | None = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.ready:
        raise NotReady("model not loaded yet", headers={"Retry-After": "1"})
    return runtime


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def media_type(request: Request) -> str:
    """The request's content type without parameters, lower-cased ('' if none)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def require_json(request: Request) -> None:
    """415 unless the body is declared as JSON."""
    if media_type(request) != "application/json":
        raise UnsupportedMediaType(
            f"expected Content-Type application/json, got {media_type(request) or 'none'}"
        )


Runtime = Annotated[ModelRuntime, Depends(get_runtime)]
AppSettings = Annotated[Settings, Depends(get_app_settings)]

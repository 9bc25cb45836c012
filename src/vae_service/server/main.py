"""The app factory: settings, lifespan, middleware, routes and error handlers.

``app`` is built at import for ``uvicorn vae_service.server.main:app``; the model loads only when
the lifespan starts (server/lifespan.py), never at import.
"""

from __future__ import annotations

from fastapi import FastAPI

from vae_service import __version__
from vae_service.model import Checkpoint
from vae_service.server.api_docs import API_DESCRIPTION
from vae_service.server.auth import add_access_control
from vae_service.server.errors import install_error_handlers
from vae_service.server.leases import ReleaseLeases
from vae_service.server.lifespan import model_lifespan
from vae_service.server.limits import BodySizeLimit, LoadShedder, RequestGuard
from vae_service.server.metrics import Metrics
from vae_service.server.observability import RequestObservability
from vae_service.server.openapi import install_live_openapi
from vae_service.server.routes import (
    PER_MODEL,
    PER_MODEL_DEPENDENCIES,
    PER_MODEL_RESPONSES,
    ROUTERS,
    inference,
)
from vae_service.server.settings import Settings, get_settings


def add_middleware(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """Innermost first: model leases, body size, time limit, API keys and CORS, then ids
    and metrics around everything, so that refusals by the others are counted and logged
    too."""
    app.add_middleware(ReleaseLeases)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestGuard, timeout_s=settings.request_timeout_s)
    app.add_middleware(LoadShedder, max_wait_s=settings.max_queue_wait_ms / 1000)
    add_access_control(app, settings.api_keys, settings.admin_keys, settings.cors_origins)
    app.add_middleware(RequestObservability, metrics=metrics, access_log=settings.access_log)


def create_app(settings: Settings | None = None, checkpoint: Checkpoint | None = None) -> FastAPI:
    """The service; ``checkpoint`` is weights loaded already (``vae-serve`` checks them
    before it listens), else the lifespan loads ``settings.weights``."""
    settings = settings or get_settings()
    metrics = Metrics()
    lifespan = model_lifespan(settings, checkpoint, metrics)
    app = FastAPI(
        title="VAE inference service",
        version=__version__,
        description=API_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings, app.state.metrics, app.state.repository = settings, metrics, None
    add_middleware(app, settings, metrics)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(
        inference.router,
        prefix=PER_MODEL,
        dependencies=PER_MODEL_DEPENDENCIES,
        responses=PER_MODEL_RESPONSES,
    )
    install_live_openapi(app)  # the limits in /openapi.json are the settings' and the model's
    return app


app = create_app()

"""The app factory: settings, lifespan, middleware, routes and error handlers.

``app`` is built at import for ``uvicorn vae_service.server.main:app``; the model loads
only when the lifespan starts (server/lifespan.py), never at import.
"""

from __future__ import annotations

from fastapi import FastAPI

from vae_service import __version__
from vae_service.model import Checkpoint
from vae_service.server.api_docs import API_DESCRIPTION
from vae_service.server.auth import add_access_control
from vae_service.server.body_limit import BodySizeLimit
from vae_service.server.errors import install_error_handlers
from vae_service.server.lifespan import model_lifespan
from vae_service.server.metrics import Metrics
from vae_service.server.observability import RequestObservability
from vae_service.server.openapi import install_live_openapi
from vae_service.server.routes import all_routers
from vae_service.server.settings import Settings, get_settings


def create_app(settings: Settings | None = None, checkpoint: Checkpoint | None = None) -> FastAPI:
    """The service; ``checkpoint`` is weights loaded already (``vae-serve`` checks them
    before it listens), else the lifespan loads ``settings.weights``."""
    settings = settings or get_settings()
    metrics = Metrics()
    app = FastAPI(
        title="VAE inference service",
        version=__version__,
        description=API_DESCRIPTION,
        lifespan=model_lifespan(settings, checkpoint, metrics),
    )
    app.state.settings, app.state.metrics, app.state.repository = settings, metrics, None
    # Innermost first: the body limit, then API keys and CORS, then ids, metrics and
    # logs around everything, so that the others' refusals are counted and logged too.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    add_access_control(app, settings.api_keys, settings.admin_keys, settings.cors_origins)
    app.add_middleware(RequestObservability, metrics=metrics, access_log=settings.access_log)
    install_error_handlers(app)
    for router in all_routers():
        app.include_router(router)
    install_live_openapi(app)  # the limits in /openapi.json are the settings' and the model's
    return app


app = create_app()

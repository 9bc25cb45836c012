"""The app factory: wires settings, the model's lifespan, routes and error handlers.

``app`` is built at import for ``uvicorn service.main:app``; the model loads only when
the lifespan starts, never at import.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import torch
from fastapi import FastAPI

from model import Checkpoint
from service import __version__
from service.errors import install_error_handlers
from service.imaging import limit_pillow_pixels
from service.limits import BodySizeLimit
from service.routes import ROUTERS
from service.runtime import Batching, ModelRuntime, load_checkpoint, torch_threads
from service.schemas import API_DESCRIPTION
from service.settings import Settings, get_settings


def configure_logging(level: str) -> None:
    logger = logging.getLogger("service")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)


def batching(settings: Settings) -> Batching:
    return Batching(
        settings.max_batch_size,
        settings.max_batch_delay_ms / 1000,
        settings.max_queue_images,
        settings.precision,
    )


def model_lifespan(
    settings: Settings, checkpoint: Checkpoint | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Load (unless ``vae-serve`` already did), warm up, serve, then stop the worker."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level)
        limit_pillow_pixels(settings.max_pixels_per_image)
        loaded = checkpoint
        if loaded is None:
            loaded = await asyncio.to_thread(load_checkpoint, settings.weights, settings.device)
        torch.set_num_threads(torch_threads(settings.torch_threads))
        runtime = ModelRuntime(loaded, batching(settings))
        try:
            await runtime.start()
            # Start-up objects (torch, FastAPI) move out of the collector's reach: full
            # collections over them were the p99 latency (110 ms -> 46 ms at c=32).
            gc.freeze()
            app.state.runtime = runtime
            yield
        finally:
            app.state.runtime = None
            await runtime.aclose()

    return lifespan


def create_app(settings: Settings | None = None, checkpoint: Checkpoint | None = None) -> FastAPI:
    """The service; ``checkpoint`` is weights loaded already (``vae-serve`` checks them
    before it listens), else the lifespan loads ``settings.weights``."""
    settings = settings or get_settings()
    app = FastAPI(
        title="VAE inference service",
        version=__version__,
        description=API_DESCRIPTION,
        lifespan=model_lifespan(settings, checkpoint),
    )
    app.state.settings = settings
    app.state.runtime = None
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


app = create_app()

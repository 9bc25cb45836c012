"""The app's lifespan, one start-up path: settings -> process set-up -> the model
repository -> one warmed-up runtime per model; then serve; then drain every batcher
so that every queued request is answered."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from vae_service.model import Checkpoint
from vae_service.server.metrics import Metrics
from vae_service.server.process import configure_process, freeze_start_up_objects
from vae_service.server.repository import ModelRepository
from vae_service.server.settings import Settings

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def model_lifespan(settings: Settings, checkpoint: Checkpoint | None, metrics: Metrics) -> Lifespan:
    """``checkpoint``: the single model's weights, read already by ``vae-serve``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_process(settings)
        repository = ModelRepository(settings, metrics)
        try:
            await repository.start(checkpoint)
        except BaseException:
            await repository.aclose()
            raise
        freeze_start_up_objects()
        app.state.repository = repository
        try:
            yield
        finally:
            app.state.repository = None  # not ready while draining
            await repository.aclose()

    return lifespan

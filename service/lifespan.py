"""The app's lifespan, one start-up path: settings -> process set-up -> the model
repository -> one warmed-up runtime per model; then serve; then drain every batcher
so that every queued request is answered."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from model import Checkpoint
from service.metrics import Metrics
from service.process import configure_process, freeze_start_up_objects
from service.repository import ModelRepository
from service.settings import Settings

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

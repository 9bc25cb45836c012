"""HTTP routes, split by concern. The model routes serve the default model, and again,
under /models/{model}/, any model of the repository."""

from fastapi import APIRouter

from vae_service.server.routes import models, oip, ops, playground
from vae_service.server.routes.inference import model_router
from vae_service.server.routes.remote import remote_router
from vae_service.server.serving import PER_MODEL


def all_routers() -> tuple[APIRouter, ...]:
    return (
        ops.router,
        model_router(),
        models.router,
        model_router(PER_MODEL),
        remote_router(),
        remote_router(PER_MODEL),
        oip.router,
        playground.router,
    )

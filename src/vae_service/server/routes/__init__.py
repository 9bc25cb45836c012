"""HTTP routes, split by concern. The model routes serve the default model, and again,
under /models/{model}/, any model of the repository."""

from fastapi import Depends

from vae_service.server.api_docs import error_responses
from vae_service.server.deps import PER_MODEL, model_path
from vae_service.server.routes import inference, models, oip, ops, playground

ROUTERS = (ops.router, inference.router, models.router, oip.router, playground.router)
__all__ = ["PER_MODEL", "PER_MODEL_DEPENDENCIES", "PER_MODEL_RESPONSES", "ROUTERS", "inference"]
PER_MODEL_DEPENDENCIES = [Depends(model_path)]
PER_MODEL_RESPONSES = error_responses(404)

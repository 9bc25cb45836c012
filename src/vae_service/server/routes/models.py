"""The model repository's routes: /models, /models/{model}, its readiness, and the
admin reload. The inference routes under /models/{model}/ are routes/inference.py's,
included a second time (routes/__init__.py)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from vae_service.server.api_docs import error_responses
from vae_service.server.auth import bearer_token, digest, key_matches
from vae_service.server.diffusers_runtime import DiffusersRuntime
from vae_service.server.errors import Forbidden, Unprocessable
from vae_service.server.model_entries import Entry
from vae_service.server.routes.ops import AnyModelInfo, describe_any
from vae_service.server.runtime import ModelRuntime
from vae_service.server.schemas import Status
from vae_service.server.serving import ModelName, Repository, ServedModel
from vae_service.server.settings import BackendName

router = APIRouter(tags=["models"])


class ModelSummary(BaseModel):
    name: str = Field(examples=["fashion-mnist"])
    default: bool = Field(description="Whether the un-prefixed routes (/encode, ...) serve it")
    state: Literal["loading", "ready", "failed"]
    error: str | None = Field(
        description="Why the last load failed (an older version may still serve); null if none"
    )
    sha256: str | None = Field(description="SHA-256 of the file of the version serving")
    image_shape: list[int] | None = Field(description="C, H, W", examples=[[1, 28, 28]])
    latent_dim: int | None
    backend: BackendName | None = Field(
        description="What runs the version serving (VAE_BACKEND); null if none serves"
    )
    prior: Literal["standard", "fitted"] | None = Field(
        description="The prior /sample uses by default"
    )
    family: Literal["ours", "AutoencoderKL", "AutoencoderTiny"] | None = Field(
        None, description="ours: this service's VAE; else the diffusers class (docs/diffusers.md)"
    )
    latent_shape: list[int] | None = Field(
        None, description="One image's latent: [D], or C, h, w with -1 for any size"
    )
    downsampling: int | None = Field(
        None, description="Image pixels per latent position, per side (diffusers models)"
    )
    dtype: str | None = Field(None, description="The weights' dtype", examples=["float32"])
    calibrated: bool | None = Field(
        None,
        description="Whether /score answers p-values and flags (vae-calibrate); null for a "
        "model /score does not serve",
    )


class ModelList(BaseModel):
    default: str
    models: list[ModelSummary]


def summary(entry: Entry, default: str) -> ModelSummary:
    runtime = entry.live.runtime if entry.live else None
    common = {
        "name": entry.name,
        "default": entry.name == default,
        "state": entry.state,
        "error": entry.error,
        "sha256": entry.live.sha256 if entry.live else None,
    }
    if isinstance(runtime, DiffusersRuntime):
        return ModelSummary.model_validate({**common, **diffusers_summary(runtime)})
    return ModelSummary.model_validate({**common, **own_summary(runtime)})


def own_summary(runtime: ModelRuntime | None) -> dict[str, Any]:
    if runtime is None:  # no version serves
        return dict.fromkeys(("image_shape", "latent_dim", "backend", "prior"))
    return {
        "image_shape": list(runtime.config.image_shape),
        "latent_dim": runtime.config.latent_dim,
        "backend": runtime.backend.name,
        "prior": "fitted" if runtime.prior else "standard",
        "family": "ours",
        "latent_shape": [runtime.config.latent_dim],
        "dtype": dtype_name(runtime.model),
        "calibrated": runtime.calibration is not None,
    }


def diffusers_summary(runtime: DiffusersRuntime) -> dict[str, Any]:
    space = runtime.config
    return {
        "image_shape": [space.image_channels, -1, -1],
        "latent_dim": None,
        "backend": "torch",
        "prior": None,
        "family": space.family,
        "latent_shape": [space.latent_channels, -1, -1],
        "downsampling": space.factor,
        "dtype": dtype_name(runtime.model),
    }


def dtype_name(model: torch.nn.Module) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


@router.get("/models", response_model=ModelList, responses=error_responses(401, 503))
async def list_models(repository: Repository) -> ModelList:
    """Every model in the repository, its state and the version serving it."""
    entries = [repository.entries[name] for name in repository.names()]
    return ModelList(
        default=repository.default, models=[summary(e, repository.default) for e in entries]
    )


@router.get(
    "/models/{model}", response_model=AnyModelInfo, responses=error_responses(401, 404, 503)
)
async def model_info(model: ModelName, served: ServedModel, response: Response) -> AnyModelInfo:
    """What /model gives, for this model."""
    response.headers.update(served.headers)
    return describe_any(served.version.runtime, model)


@router.get(
    "/models/{model}/ready", response_model=Status, responses=error_responses(401, 404, 503)
)
async def model_ready(model: ModelName, served: ServedModel, response: Response) -> Status:
    """200 once this model is loaded and warmed up; 503 before."""
    response.headers.update(served.headers)
    return Status(status="ready")


async def require_admin(request: Request) -> None:
    """403 unless the request carries one of VAE_ADMIN_KEYS (none set: always 403)."""
    digests = [digest(key.get_secret_value()) for key in request.app.state.settings.admin_keys]
    if not digests:
        raise Forbidden("admin operations are disabled: set VAE_ADMIN_KEYS to enable them")
    token = bearer_token(request.headers.get("authorization", ""))
    if not key_matches(token, digests):
        raise Forbidden("admin operations need 'Authorization: Bearer <admin key>'")


@router.post(
    "/models/{model}/reload",
    response_model=ModelSummary,
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 403, 404, 422, 503),
)
async def reload_model(
    model: ModelName, repository: Repository, response: Response
) -> ModelSummary:
    """Load the model's file again now, warm it up beside the serving version, and
    swap it in; a file that does not load leaves the old version serving (422). With
    several workers, the others follow within VAE_MODEL_POLL_S."""
    entry = await repository.reload(model)
    headers = {"X-Model": model, "X-Model-SHA256": entry.live.sha256} if entry.live else {}
    if entry.error is not None:
        raise Unprocessable(entry.error, headers=headers)
    response.headers.update(headers)
    return summary(entry, repository.default)

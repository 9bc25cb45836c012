"""Operational endpoints: liveness, readiness, metrics, and what model is being served."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from vae_service.server.api_docs import error_responses
from vae_service.server.diffusers_runtime import DiffusersRuntime
from vae_service.server.runtime import ModelRuntime
from vae_service.server.schemas import DiffusersModelInfo, FittedPriorInfo, ModelInfo, Status
from vae_service.server.serving import Repository, ServedModel

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Status)
async def healthz() -> Status:
    """200 while the process lives, loaded or not."""
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses=error_responses(503))
async def readyz(repository: Repository) -> Status:
    """200 once the default model is loaded and warmed up; 503 before."""
    repository.serving()
    return Status(status="ready")


# /model and /models/{model}: our own VAE's description, or a diffusers folder's.
AnyModelInfo = ModelInfo | DiffusersModelInfo


@router.get("/model", response_model=AnyModelInfo, responses=error_responses(503))
async def model_info(model: ServedModel, response: Response) -> AnyModelInfo:
    """The default model's weights: their metadata, where they run, and the file's SHA-256
    (for a diffusers model: its family, config.json, latent shape and scaling)."""
    response.headers.update(model.headers)
    return describe_any(model.version.runtime, model.name)


def describe_any(runtime: ModelRuntime | DiffusersRuntime, name: str) -> AnyModelInfo:
    if isinstance(runtime, DiffusersRuntime):
        return describe_diffusers(runtime, name)
    return describe(runtime, name)


def describe_diffusers(runtime: DiffusersRuntime, name: str) -> DiffusersModelInfo:
    space, weights = runtime.config, runtime.checkpoint
    return DiffusersModelInfo(
        name=name,
        weights=Path(weights.path).name,
        sha256=weights.sha256,
        device=str(runtime.device),
        backend="torch",
        family=space.family,  # type: ignore[arg-type]  # one of diffusers_models.FAMILIES
        config=weights.config,
        image_shape=[space.image_channels, -1, -1],
        latent_shape=[space.latent_channels, -1, -1],
        downsampling=space.factor,
        dtype=str(runtime.dtype).removeprefix("torch."),
        scaling_factor=space.scaling_factor,
        shift_factor=space.shift_factor,
        latents_mean=None if space.latents_mean is None else list(space.latents_mean),
        latents_std=None if space.latents_std is None else list(space.latents_std),
    )


def describe(runtime: ModelRuntime, name: str) -> ModelInfo:
    ckpt, cfg = runtime.checkpoint, runtime.config
    return ModelInfo(
        name=name,
        weights=Path(ckpt.path).name,
        sha256=ckpt.sha256,
        format_version=int(ckpt.metadata.get("format_version", 0)),
        device=str(runtime.device),
        backend=runtime.backend.name,
        latent_dim=cfg.latent_dim,
        image_size=cfg.image_size,
        channels=cfg.channels,
        likelihood=cfg.likelihood,
        config=cfg.to_dict(),
        data=ckpt.metadata.get("data") or {},
        training=ckpt.metadata.get("training") or {},
        prior=FittedPriorInfo(**runtime.prior.describe()) if runtime.prior else None,
        calibration=runtime.calibration.describe() if runtime.calibration else None,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests by endpoint and status, latencies, batch sizes,
    queue depth, model load time and identity; with several workers, over all of them."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

"""The Open Inference Protocol's REST routes (KServe v2), under /v2: server metadata and
health, and per protocol model its metadata, readiness and inference, with or without
its version in the path. The protocol itself is in server/oip/.

They run on the repository's models as the other routes do: the same runtimes and
batchers, the version held for the whole request, the same limits, X-Model and
X-Model-SHA256 headers and the ``model`` metrics label (the repository's name of the
model, not the protocol's). They are left out of /openapi.json: the protocol has its own
specification, and docs/oip.md describes these models.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from torch import Tensor

from vae_service.server.deps import get_repository, serving
from vae_service.server.observability import MODEL_STATE
from vae_service.server.oip.parsing import (
    InferRequest,
    InputTensor,
    RequestedOutput,
    inflate,
    parse_infer_request,
)
from vae_service.server.oip.protocol import (
    BINARY_MEDIA_TYPE,
    BYTES,
    ENCODER,
    FP32,
    HEADER_LENGTH,
    BadTensor,
    ProtocolModel,
    TensorSpec,
    check_version,
    resolve,
    server_metadata,
)
from vae_service.server.oip.responses import infer_response
from vae_service.server.oip.tensors import (
    batch_size,
    byte_elements,
    checked_latents,
    fp32_array,
    requested_outputs,
    seed_for,
    the_input,
    unit_images,
)
from vae_service.server.routes.bodies import images_tensor
from vae_service.server.runtime import draw_posterior
from vae_service.server.settings import Settings

router = APIRouter(prefix="/v2", tags=["open inference protocol"], include_in_schema=False)
JSON = "application/json"
# Inflating a compressed body this large or larger runs on a worker thread.
INLINE_INFLATE_BYTES = 64 * 1024


def protocol_model(request: Request, name: str, version: str | None) -> ProtocolModel:
    """The protocol model of the path, recorded for the X-Model headers and metrics."""
    model = resolve(get_repository(request), name)
    setattr(request.state, MODEL_STATE, (model.base, model.version.sha256))
    check_version(model, version)
    return model


@router.get("")
async def metadata_of_server() -> dict[str, Any]:
    """Name, version and extensions (binary_tensor_data)."""
    return server_metadata()


@router.get("/health/live")
async def live() -> dict[str, bool]:
    """200 while the process lives (no API key needed, like /healthz)."""
    return {"live": True}


@router.get("/health/ready")
async def ready(request: Request) -> dict[str, bool]:
    """200 once the default model serves, 503 before (no API key needed, like /readyz)."""
    serving(get_repository(request), None)
    return {"ready": True}


@router.get("/models/{model_name}")
async def model_metadata(request: Request, model_name: str) -> dict[str, Any]:
    return protocol_model(request, model_name, None).metadata()


@router.get("/models/{model_name}/versions/{model_version}")
async def version_metadata(request: Request, model_name: str, model_version: str) -> dict[str, Any]:
    return protocol_model(request, model_name, model_version).metadata()


@router.get("/models/{model_name}/ready")
async def model_ready(request: Request, model_name: str) -> dict[str, Any]:
    """200 while the model serves; 404 unknown, 503 loading or failed."""
    model = protocol_model(request, model_name, None)
    return {"name": model.name, "ready": True}


@router.get("/models/{model_name}/versions/{model_version}/ready")
async def version_ready(request: Request, model_name: str, model_version: str) -> dict[str, Any]:
    model = protocol_model(request, model_name, model_version)
    return {"name": model.name, "ready": True}


@router.post("/models/{model_name}/infer")
async def infer(request: Request, model_name: str) -> Response:
    return await run_inference(request, protocol_model(request, model_name, None))


@router.post("/models/{model_name}/versions/{model_version}/infer")
async def version_infer(request: Request, model_name: str, model_version: str) -> Response:
    return await run_inference(request, protocol_model(request, model_name, model_version))


async def run_inference(request: Request, model: ProtocolModel) -> Response:
    """Read and check the request, run the model's version (held until the answer is
    built, so that a swap meanwhile lets it finish there), and answer."""
    settings: Settings = request.app.state.settings
    with model.version.held():
        body = await request.body()
        encoding = request.headers.get("content-encoding")
        if encoding is not None and len(body) >= INLINE_INFLATE_BYTES:
            body = await asyncio.to_thread(inflate, body, encoding, settings.max_body_bytes)
        else:
            body = inflate(body, encoding, settings.max_body_bytes)
        parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
        tensor, spec = the_input(parsed, model)
        outputs = requested_outputs(parsed, model)
        if model.role == ENCODER:
            results, parameters = await encode(parsed, model, tensor, spec, outputs, settings)
        else:
            results, parameters = await decode(model, tensor, spec, outputs, settings)
        content, header_length = infer_response(model, parsed, results, parameters)
    headers = {"X-Seed": str(parameters["seed"])} if "seed" in parameters else {}
    if header_length is None:
        return Response(content, media_type=JSON, headers=headers)
    headers[HEADER_LENGTH] = str(header_length)
    return Response(content, media_type=BINARY_MEDIA_TYPE, headers=headers)


Results = list[tuple[RequestedOutput, Tensor]]


async def encode(
    parsed: InferRequest,
    model: ProtocolModel,
    tensor: InputTensor,
    spec: TensorSpec,
    outputs: list[RequestedOutput],
    settings: Settings,
) -> tuple[Results, dict[str, Any]]:
    seed = seed_for(parsed, outputs)  # a bad seed is refused before any model work
    images = await encoder_images(model, tensor, spec, settings)
    posterior = await model.runtime.encode(images)
    values = {"mean": posterior.mean, "logvar": posterior.logvar}
    if seed is not None:
        values["z"] = draw_posterior(posterior, seed)
    parameters = {} if seed is None else {"seed": seed}
    return [(output, values[output.name]) for output in outputs], parameters


async def encoder_images(
    model: ProtocolModel, tensor: InputTensor, spec: TensorSpec, settings: Settings
) -> Tensor:
    """FP32 N x C x H x W in [0, 1], or BYTES N image files decoded as /encode does."""
    limit = settings.max_images_per_request
    if tensor.datatype == FP32:
        batch_size(tensor, spec.shape, limit, "images")
        return unit_images(fp32_array(tensor))
    if tensor.datatype == BYTES:
        count = batch_size(tensor, (-1,), limit, "images")
        return await images_tensor(byte_elements(tensor, count), model.runtime, settings)
    raise BadTensor(
        f"input {tensor.name!r} must be FP32 (pixels) or BYTES (image files), "
        f"got {tensor.datatype!r}"
    )


async def decode(
    model: ProtocolModel,
    tensor: InputTensor,
    spec: TensorSpec,
    outputs: list[RequestedOutput],
    settings: Settings,
) -> tuple[Results, dict[str, Any]]:
    if tensor.datatype != FP32:
        raise BadTensor(f"input {tensor.name!r} must be FP32, got {tensor.datatype!r}")
    batch_size(tensor, spec.shape, settings.max_images_per_request, "latents")
    z = checked_latents(fp32_array(tensor), settings.max_abs_latent)
    images = await model.runtime.decode(z)
    return [(output, images) for output in outputs], {}

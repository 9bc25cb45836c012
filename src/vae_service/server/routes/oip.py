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
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Depends, Request, Response
from torch import Tensor

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
    SCORES,
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
    fp32_array,
    requested_outputs,
    seed_for,
    the_input,
    unit_images,
)
from vae_service.server.runtime import Posterior, draw_posterior
from vae_service.server.serving import Lease, Repository, Served, serve
from vae_service.server.settings import Settings
from vae_service.server.validation import checked_latents

router = APIRouter(prefix="/v2", tags=["open inference protocol"], include_in_schema=False)
JSON = "application/json"
# Inflating a compressed body this large or larger runs on a worker thread.
INLINE_INFLATE_BYTES = 64 * 1024


async def protocol_model(
    request: Request, repository: Repository, model_name: str
) -> tuple[ProtocolModel, Served]:
    """The protocol model of the path (at the path's version, if it names one)."""
    model = resolve(repository, model_name)
    check_version(model, request.path_params.get("model_version"))
    return model, serve(request, model.base, model.version)


ProtocolModelOf = Annotated[tuple[ProtocolModel, Served], Depends(protocol_model)]


@router.get("")
async def metadata_of_server() -> dict[str, Any]:
    """Name, version and extensions (binary_tensor_data)."""
    return server_metadata()


@router.get("/health/live")
async def live() -> dict[str, bool]:
    """200 while the process lives (no API key needed, like /healthz)."""
    return {"live": True}


@router.get("/health/ready")
async def ready(repository: Repository) -> dict[str, bool]:
    """200 once the default model serves, 503 before (no API key needed, like /readyz)."""
    repository.serving()
    return {"ready": True}


@router.get("/models/{model_name}")
@router.get("/models/{model_name}/versions/{model_version}")
async def model_metadata(of: ProtocolModelOf, response: Response) -> dict[str, Any]:
    model, served = of
    response.headers.update(served.headers)
    return model.metadata()


@router.get("/models/{model_name}/ready")
@router.get("/models/{model_name}/versions/{model_version}/ready")
async def model_ready(of: ProtocolModelOf, response: Response) -> dict[str, Any]:
    """200 while the model serves; 404 unknown, 503 loading or failed."""
    model, served = of
    response.headers.update(served.headers)
    return {"name": model.name, "ready": True}


@router.post("/models/{model_name}/infer")
@router.post("/models/{model_name}/versions/{model_version}/infer")
async def infer(of: ProtocolModelOf, request: Request) -> Response:
    """Read and check the request, run the model's version, and answer."""
    model, served = of
    with Lease(served):  # from the first line, as the other model routes hold theirs
        parsed = parse_infer_request(
            await inflated_body(request, served.settings), request.headers.get(HEADER_LENGTH)
        )
        tensor, spec = the_input(parsed, model)
        outputs = requested_outputs(parsed, model)
        if model.role == ENCODER:
            results, parameters = await encode(parsed, served, tensor, spec, outputs)
        else:
            results, parameters = await decode(served, tensor, spec, outputs)
        content, header_length = infer_response(model, parsed, results, parameters)
    headers = served.headers
    if "seed" in parameters:
        headers["X-Seed"] = str(parameters["seed"])
    if header_length is None:
        return Response(content, media_type=JSON, headers=headers)
    headers[HEADER_LENGTH] = str(header_length)
    return Response(content, media_type=BINARY_MEDIA_TYPE, headers=headers)


async def inflated_body(request: Request, settings: Settings) -> bytes:
    """The body, inflated when sent compressed (large ones on a worker thread)."""
    body = await request.body()
    encoding = request.headers.get("content-encoding")
    if encoding is not None and len(body) >= INLINE_INFLATE_BYTES:
        return await asyncio.to_thread(inflate, body, encoding, settings.max_body_bytes)
    return inflate(body, encoding, settings.max_body_bytes)


Results = list[tuple[RequestedOutput, Tensor]]


async def encode(
    parsed: InferRequest,
    served: Served,
    tensor: InputTensor,
    spec: TensorSpec,
    outputs: list[RequestedOutput],
) -> tuple[Results, dict[str, Any]]:
    seed = seed_for(parsed, outputs)  # a bad seed is refused before any model work
    images = await encoder_images(served, tensor, spec)
    mean, logvar = await served.wait(served.api.encode(images))
    values = {"mean": mean} if logvar is None else {"mean": mean, "logvar": logvar}
    if seed is not None and logvar is not None:
        values["z"] = draw_posterior(Posterior(mean, logvar), seed)
    if any(output.name in SCORES for output in outputs):
        values.update(await scored(served, images))
    parameters = {} if seed is None else {"seed": seed}
    return [(output, values[output.name]) for output in outputs], parameters


async def scored(served: Served, images: Tensor) -> dict[str, Tensor]:
    """The encoder's score outputs, as /score gives them at its default k."""
    runtime = served.runtime
    scores = await served.wait(runtime.score(images, runtime.default_score_k))
    return {
        "score": scores.score,
        **({} if scores.p_value is None else {"p_value": scores.p_value}),
    }


async def encoder_images(served: Served, tensor: InputTensor, spec: TensorSpec) -> Tensor:
    """FP32 N x C x H x W in [0, 1], or BYTES N image files decoded as /encode does."""
    settings, api = served.settings, served.api
    limit = settings.max_images_per_request
    if tensor.datatype == FP32:
        batch_size(tensor, spec.shape, limit, "images")
        api.check_declared(tensor.shape, False, settings)
        return unit_images(fp32_array(tensor))
    if tensor.datatype == BYTES:
        count = batch_size(tensor, (-1,), limit, "images")
        return await api.blob_images(byte_elements(tensor, count), settings)
    raise BadTensor(
        f"input {tensor.name!r} must be FP32 (pixels) or BYTES (image files), "
        f"got {tensor.datatype!r}"
    )


async def decode(
    served: Served, tensor: InputTensor, spec: TensorSpec, outputs: list[RequestedOutput]
) -> tuple[Results, dict[str, Any]]:
    settings, api = served.settings, served.api
    if tensor.datatype != FP32:
        raise BadTensor(f"input {tensor.name!r} must be FP32, got {tensor.datatype!r}")
    batch_size(tensor, spec.shape, settings.max_images_per_request, "latents")
    api.check_declared(tensor.shape, True, settings)
    z = checked_latents(torch.from_numpy(fp32_array(tensor)), settings.max_abs_latent)
    images = await served.wait(api.decode(z))
    return [(output, images) for output in outputs], {}

"""The Open Inference Protocol's constants, its refusal (BadTensor, a 400), and its models:
each repository model's encoder and decoder, their metadata, names and versions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vae_service import __version__
from vae_service.server.errors import ModelNotFound, ServiceError
from vae_service.server.latent_api import LatentApi, latent_api
from vae_service.server.model_entries import UnknownModel, Version
from vae_service.server.repository import ModelRepository
from vae_service.server.runtime import ModelRuntime

SERVER_NAME = "vae-serve"
EXTENSIONS = ("binary_tensor_data",)
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_MEDIA_TYPE = "application/octet-stream"
FP32, BYTES = "FP32", "BYTES"
ENCODER, DECODER = "encoder", "decoder"
ROLES = (ENCODER, DECODER)
SCORES = ("score", "p_value")  # an encoder's anomaly outputs, as /score answers them
VERSION_DIGITS = 12
MAX_SEED = 2**63 - 1
# Parameters of features this server does not have: ignoring them would answer
# something other than what was asked, so they are refused.
UNSUPPORTED = ("shared_memory_region", "classification")


class BadTensor(ServiceError):
    """A request the protocol refuses (400): not a JSON inference request, or a tensor
    of the wrong name, datatype or shape, or data of the wrong size."""

    status = 400


# ---------------------------------------------------------------------------- models


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the model metadata states it; -1: any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    parameters: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "datatype": self.datatype,
            "shape": list(self.shape),
        }
        if self.parameters:
            entry["parameters"] = self.parameters
        return entry


IMAGE_FILES = (
    "also BYTES [-1]: one encoded image file (PNG, JPEG, WebP, ...) per element, "
    "converted (and for this service's own VAEs resized) as /encode does; base64 "
    "strings in JSON"
)


@dataclass(frozen=True)
class ProtocolModel:
    """One protocol model: the encoder or the decoder of a repository model's version."""

    base: str  # the repository's name for the model
    role: str  # ENCODER or DECODER
    version: Version

    @property
    def name(self) -> str:
        return f"{self.base}-{self.role}"

    @property
    def api(self) -> LatentApi:
        return latent_api(self.version.runtime)

    @property
    def version_id(self) -> str:
        return self.version.sha256[:VERSION_DIGITS]

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        api = self.api
        if self.role == ENCODER:
            return (TensorSpec("images", FP32, (-1, *api.image_shape), {"content": IMAGE_FILES}),)
        return (TensorSpec("z", FP32, (-1, *api.latent_shape)),)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        api = self.api
        if self.role == ENCODER:
            latents = tuple(TensorSpec(n, FP32, (-1, *api.latent_shape)) for n in self.encodings)
            return latents + tuple(TensorSpec(n, FP32, (-1,)) for n in self.scores)
        return (TensorSpec("images", FP32, (-1, *api.image_shape)),)

    @property
    def encodings(self) -> tuple[str, ...]:
        """An encoder's outputs: AutoencoderTiny has no posterior, so its latents alone."""
        return ("mean", "logvar", "z") if self.api.has_posterior else ("mean",)

    @property
    def scores(self) -> tuple[str, ...]:
        """An encoder's anomaly outputs (as /score's, at its default k): this service's
        own VAEs only, and the p-value only where the weights are calibrated."""
        runtime = self.version.runtime
        if self.role != ENCODER or not isinstance(runtime, ModelRuntime):
            return ()
        return SCORES if runtime.calibration else SCORES[:1]

    @property
    def default_outputs(self) -> tuple[str, ...]:
        """What a request that names no outputs gets: z is a random draw, and the scores
        cost k decoder passes per image, so both only on request."""
        return self.encodings[:2] if self.role == ENCODER else ("images",)

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version_id],
            "platform": "pytorch",
            "inputs": [spec.describe() for spec in self.inputs],
            "outputs": [spec.describe() for spec in self.outputs],
        }


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def split_name(name: str) -> tuple[str, str] | None:
    """``NAME-encoder`` -> (NAME, encoder); None unless it ends in a role."""
    for role in ROLES:
        suffix = f"-{role}"
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], role
    return None


def protocol_names(repository: ModelRepository) -> list[str]:
    return [f"{name}-{role}" for name in repository.names() for role in ROLES]


def resolve(repository: ModelRepository, name: str) -> ProtocolModel:
    """The protocol model ``name`` as its live version serves it now: UnknownModel (404)
    for a name no repository model has, ModelUnavailable (503) while it does not serve."""
    split = split_name(name)
    try:
        if split is None:
            raise UnknownModel(name, [])
        return ProtocolModel(*split, repository.serving(split[0]))
    except UnknownModel:
        raise UnknownModel(name, protocol_names(repository)) from None


def check_version(model: ProtocolModel, version: str | None) -> None:
    """404 unless ``version`` (None: any) is the one serving."""
    if version is not None and version != model.version_id:
        raise ModelNotFound(
            f"model {model.name!r} has no version {version!r}; it serves {model.version_id}"
        )

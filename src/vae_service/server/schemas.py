"""Request and response bodies of the API, with the examples shown at ``/docs``."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vae_service.model.prior import PriorFit
from vae_service.server.settings import BackendName

# A 28 x 28 grey PNG (a light bar on black), base64-encoded: a valid example input.
EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAAHklEQVR42mNgGEqAEc46AWdZwBhM+HSOSg5GyaEF"
    "AKcsASBLq2xRAAAAAElFTkSuQmCC"
)
EXAMPLE_Z = [0.12, -1.3, 0.57, 0.0]
# Standard base64 with its padding, as request_bodies.py checks it (no whitespace).
BASE64_PATTERN = r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
LIVE = "x-live"


def example_latent(latent_dim: int) -> list[float]:
    """A latent of ``latent_dim`` values (EXAMPLE_Z's, repeated): /decode's example in
    the OpenAPI document, the loaded model's length (see ``z_examples``)."""
    return [EXAMPLE_Z[i % len(EXAMPLE_Z)] for i in range(latent_dim)]


def live(**keywords: str) -> dict[str, Any]:
    """A mark for server/openapi.py: set each JSON Schema keyword to the live value named
    (a setting, or ``latent_dim``, ``priors`` and ``z_examples`` from the loaded model;
    ``-`` negates a number),
    for limits that are only known once the app has its settings and weights."""
    return {LIVE: keywords}


# Each bound is a setting or the model's, checked in validation.py and request_bodies.py,
# and filled into the OpenAPI document by server/openapi.py.
LatentValue = Annotated[
    float,
    Field(
        strict=True,
        allow_inf_nan=False,
        json_schema_extra=live(minimum="-max_abs_latent", maximum="max_abs_latent"),
    ),
]
Latent = Annotated[
    list[LatentValue],
    Field(
        min_length=1,
        description="latent_dim floats",
        json_schema_extra=live(minItems="latent_dim", maxItems="latent_dim"),
    ),
]
Base64Image = Annotated[
    str,
    Field(
        description="An image file (PNG, JPEG, ...), base64-encoded",
        # minLength: an empty string is no image (refused with 400, as an empty file part)
        json_schema_extra={
            "pattern": f"^{BASE64_PATTERN}$",
            "minLength": 1,
            "contentEncoding": "base64",
        },
    ),
]


class PriorName(StrEnum):
    """Where /sample draws latents: the standard normal N(0, I), or the Gaussian mixture
    fitted to the training set's posterior means (sharper samples; vae-fit-prior)."""

    standard = "standard"
    fitted = "fitted"


class ImageFormat(StrEnum):
    """How images come back: base64 PNGs inside JSON, one PNG (a grid for several), or
    a float32 N×H×W×C .npy array."""

    json = "json"
    png = "png"
    npy = "npy"


class EncodeFormat(StrEnum):
    """How /encode answers: JSON, or one float32 .npy array N×2×D (mean, logvar), N×3×D
    with the draw z under ?sample=true."""

    json = "json"
    npy = "npy"


class EncodeRequest(BaseModel):
    images: list[Base64Image] = Field(
        min_length=1,
        examples=[[EXAMPLE_PNG]],
        json_schema_extra=live(maxItems="max_images_per_request"),
    )


class EncodeResponse(BaseModel):
    """One row per image, in request order."""

    latent_dim: int = Field(examples=[4])
    mean: list[list[float]] = Field(description="Mean of q(z|x)", examples=[[EXAMPLE_Z]])
    logvar: list[list[float]] = Field(
        description="Natural log of the variance of q(z|x)", examples=[[[-3.1, -2.8, -3.4, -0.1]]]
    )
    z: list[list[float]] | None = Field(
        default=None,
        description="With ?sample=true: one draw from each q(z|x)",
        examples=[[EXAMPLE_Z]],
    )
    seed: int | None = Field(default=None, description="With ?sample=true: the seed of the draws")


class DecodeRequest(BaseModel):
    z: list[Latent] = Field(
        min_length=1,
        # Until the model is loaded; then one row of its latent_dim (a valid request).
        examples=[[EXAMPLE_Z]],
        json_schema_extra=live(maxItems="max_images_per_request", examples="z_examples"),
    )


class DecodeResponse(BaseModel):
    images: list[str] = Field(description="Base64 PNG files, in order", examples=[[EXAMPLE_PNG]])


class SampleResponse(BaseModel):
    prior: PriorName = Field(description="The prior the latents were drawn from")
    seed: int = Field(description="Seed of the prior draws: send it back for the same images")
    temperature: float
    z: list[list[float]] = Field(examples=[[EXAMPLE_Z]])
    images: list[str] = Field(description="Base64 PNG files, in order", examples=[[EXAMPLE_PNG]])


def _one_of_the_pair(schema: dict[str, Any]) -> None:
    """What ``one_pair`` checks, for clients: one of the two is a list, the other null
    or absent."""
    schema["oneOf"] = [
        {"required": [given], "properties": {given: {"type": "array"}, other: {"type": "null"}}}
        for given, other in (("images", "z"), ("z", "images"))
    ]


class InterpolateRequest(BaseModel):
    """Exactly one of the two: two images or two latents."""

    model_config = ConfigDict(json_schema_extra=_one_of_the_pair)

    images: list[Base64Image] | None = Field(
        None, min_length=2, max_length=2, examples=[[EXAMPLE_PNG, EXAMPLE_PNG]]
    )
    z: list[Latent] | None = Field(default=None, min_length=2, max_length=2)

    @model_validator(mode="after")
    def one_pair(self) -> InterpolateRequest:
        if (self.images is None) == (self.z is None):
            raise ValueError("give either 'images' (two) or 'z' (two latents), not both")
        return self


class InterpolateResponse(BaseModel):
    steps: int
    z: list[list[float]] = Field(description="The points on the line, first to last")
    images: list[str] = Field(description="Base64 PNG files, first to last")


class FittedPriorInfo(BaseModel):
    components: int = Field(examples=[10])
    covariance_type: str = Field(examples=["full"])
    train_loglik: float = Field(
        description="Mean log-likelihood of the training posterior means (fit 'means') or "
        "of one posterior draw per training image (fit 'learned') under the mixture, in nats",
        examples=[48.51],
    )
    n_fit: int = Field(description="Training images it was fitted to", examples=[60000])
    fit: PriorFit = Field(
        "means",
        description="means: fitted to posterior means after training, for sampling only; "
        "learned: trained with the model on its ELBO (vae-tune-prior), the model's own prior",
    )


class ModelInfo(BaseModel):
    name: str = Field(description="The model's name in the repository", examples=["fashion-mnist"])
    weights: str = Field(description="File name of the served weights")
    sha256: str
    format_version: int
    device: str
    backend: BackendName = Field(description="What runs the forward passes (VAE_BACKEND)")
    latent_dim: int
    image_size: int
    channels: int
    likelihood: str
    config: dict[str, Any]
    data: dict[str, Any] = Field(description="The data set the weights were trained on")
    training: dict[str, Any] = Field(description="Training summary: epochs, test metrics, ...")
    prior: FittedPriorInfo | None = Field(
        description="The fitted latent prior /sample uses by default; null if none"
    )
    calibration: dict[str, Any] | None = Field(
        description="The anomaly score's calibration (vae-calibrate, docs/anomaly.md); "
        "null if the weights carry none"
    )


class DiffusersModelInfo(BaseModel):
    """What /model gives for a diffusers VAE served from a folder (docs/diffusers.md)."""

    name: str = Field(description="The model's name in the repository", examples=["sdxl-vae"])
    weights: str = Field(description="Name of the model's folder")
    sha256: str = Field(description="SHA-256 of config.json followed by the weights")
    device: str
    backend: BackendName = Field(description="What runs the forward passes")
    family: Literal["AutoencoderKL", "AutoencoderTiny"] = Field(description="The diffusers class")
    config: dict[str, Any] = Field(description="The folder's config.json")
    image_shape: list[int] = Field(description="C, H, W, with -1 for any size")
    latent_shape: list[int] = Field(description="C, h, w of one image's latent, -1: any size")
    downsampling: int = Field(description="Image pixels per latent position, per side")
    dtype: str = Field(description="The dtype the model runs in", examples=["float32"])
    scaling_factor: float = Field(description="The config's scaling_factor (1.0 if none)")
    shift_factor: float = Field(description="The config's shift_factor (0.0 if none)")
    latents_mean: list[float] | None = Field(description="Per channel, where the config has it")
    latents_std: list[float] | None = Field(description="Per channel, where the config has it")


class Status(BaseModel):
    status: str = Field(examples=["ok"])


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: str | list[ValidationIssue]

"""The model routes' query parameters, one pydantic model per route, declared in their
signatures as ``Annotated[Model, Query()]``: FastAPI validates them and documents them."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from vae_service.model.anomaly import DEFAULT_IWAE_SAMPLES
from vae_service.server.schemas import EncodeFormat, ImageFormat, PriorName, live


class QueryModel(BaseModel):
    """Unknown parameters are ignored, as FastAPI ignores them."""

    model_config = ConfigDict(extra="ignore", frozen=True)


Seed = Annotated[
    int | None,
    Field(
        ge=0, le=2**63 - 1, description="Seed of the random draws; chosen and returned if absent"
    ),
]
Format = Annotated[
    ImageFormat,
    Field(
        alias="format", description="json: base64 PNGs in JSON; png: one PNG (a grid for several)"
    ),
]


class EncodeQuery(QueryModel):
    sample: bool = Field(False, description="Also return one draw z from each q(z|x)")
    seed: Seed = None
    fmt: EncodeFormat = Field(
        EncodeFormat.json,
        alias="format",
        description="json, or npy: float32 N×2×D (N×3×D with z)",
    )


class ImagesQuery(QueryModel):
    """/decode's and /reconstruct's."""

    fmt: Format = ImageFormat.json


class InterpolateQuery(QueryModel):
    steps: int = Field(
        8,
        ge=2,
        description="Points on the line, both ends included",
        json_schema_extra=live(maximum="max_interpolation_steps"),
    )
    fmt: Format = ImageFormat.json


class SampleQuery(QueryModel):
    n: int = Field(
        16, ge=1, description="How many images", json_schema_extra=live(maximum="max_sample_n")
    )
    seed: Seed = None
    temperature: float = Field(1.0, ge=0.0, le=10.0, allow_inf_nan=False, description="Prior std")
    fmt: Format = ImageFormat.json
    prior: PriorName | None = Field(
        None,
        description="standard: N(0, I); fitted: the weights' mixture (the default if any)",
        json_schema_extra=live(enum="priors"),
    )


class ScoreQuery(QueryModel):
    k: int | None = Field(
        None,
        ge=1,
        description="Importance samples of the IWAE bound (Burda et al. 2016) in the parts; "
        f"default: the calibration's k, else {DEFAULT_IWAE_SAMPLES}. The score of a calibrated "
        "model is always computed at its calibration's k",
        json_schema_extra=live(maximum="max_score_samples"),
    )
    fpr: float = Field(
        0.01,
        gt=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description="The false-positive rate to flag at: the share of in-distribution images "
        "flagged as anomalous",
    )

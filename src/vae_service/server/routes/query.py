"""Query strings of the model routes, read by hand: one pydantic model per route,
validated in one call.

FastAPI's dependency solving validates each query parameter and dependency on its own:
reading them here cut the event loop's CPU by 90-180 µs a request on /encode and
/sample (BENCHMARKS.md, "Query strings read by hand on the model routes"). The models
also document the parameters in /openapi.json (``query_doc``), so the document and the
validation cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vae_service.server.routes.bodies import M, invalid_request
from vae_service.server.schemas import EncodeFormat, ImageFormat, PriorName, live


class Query(BaseModel):
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


class EncodeQuery(Query):
    sample: bool = Field(False, description="Also return one draw z from each q(z|x)")
    seed: Seed = None
    fmt: EncodeFormat = Field(
        EncodeFormat.json,
        alias="format",
        description="json, or npy: float32 N×2×D (N×3×D with z)",
    )


class ImagesQuery(Query):
    """/decode's and /reconstruct's."""

    fmt: Format = ImageFormat.json


class InterpolateQuery(Query):
    steps: int = Field(
        8,
        ge=2,
        description="Points on the line, both ends included",
        json_schema_extra=live(maximum="max_interpolation_steps"),
    )
    fmt: Format = ImageFormat.json


class SampleQuery(Query):
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


def read_query(request: Request, model: type[M]) -> M:
    """The query string as ``model``; errors as FastAPI's 422 list, located in the query.
    A repeated parameter counts once, its last value, as in FastAPI."""
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise invalid_request(exc, "query") from None


def query_doc(model: type[BaseModel]) -> dict[str, Any]:
    """openapi_extra declaring ``model``'s fields as the operation's query parameters.
    A query parameter cannot be null (it is absent instead), so optional ones are
    documented by their non-null type; enums are written out, not referenced."""
    schema = model.model_json_schema(by_alias=True)
    definitions = schema.get("$defs", {})
    parameters = []
    for name, field in schema["properties"].items():
        description = field.pop("description", None)
        branches = [b for b in field.pop("anyOf", [field]) if b != {"type": "null"}]
        (kept,) = branches
        parameter_schema = {**resolve(kept, definitions), **field}
        parameter_schema.pop("$ref", None)
        if parameter_schema.get("default", 0) is None:  # absent, as it cannot be null
            del parameter_schema["default"]
        parameters.append(
            {"name": name, "in": "query", "required": False, "schema": parameter_schema}
            | ({"description": description} if description else {})
        )
    return {"parameters": parameters}


def resolve(branch: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """``branch`` with a reference to one of ``definitions`` replaced by its schema (less
    its description: the parameter has its own)."""
    reference = branch.get("$ref")
    if reference is None:
        return branch
    definition = definitions[reference.rsplit("/", 1)[1]]
    return {key: value for key, value in definition.items() if key != "description"}

"""The OpenAPI document with the limits the server enforces: read from the app's settings
and, once the lifespan has loaded it, from the default model (its latent_dim, its fitted
prior). The /models/{model}/ routes share the request schemas: their model-dependent
bounds are each model's own, as GET /models lists them.

The request models and route declarations mark where a live value goes
(``schemas.live``); ``live_openapi`` fills the marks in FastAPI's generated document.
Before the model is loaded the document is served without the model's bounds (the rows
of ``z`` say only "at least one number", ``prior`` lists both priors): /docs stays up
while the weights load, and every model endpoint answers 503 until then anyway.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from vae_service.server.schemas import LIVE, PriorName

# The settings the document quotes; only these, never the whole settings (API keys).
SETTINGS_LIMITS = (
    "max_abs_latent",
    "max_images_per_request",
    "max_interpolation_steps",
    "max_sample_n",
)
Document = dict[str, Any]


def live_values(app: FastAPI) -> dict[str, Any]:
    """The values the marks name: the limit settings, and the model's once loaded."""
    settings = app.state.settings
    values: dict[str, Any] = {name: getattr(settings, name) for name in SETTINGS_LIMITS}
    repository = app.state.repository
    if repository is not None:
        values["models"] = repository.names()
    default = repository.entries.get(repository.default) if repository else None
    if default is not None and default.live is not None:
        runtime = default.live.runtime
        values["latent_dim"] = runtime.config.latent_dim
        fitted = [PriorName.fitted.value] if runtime.prior is not None else []
        values["priors"] = [PriorName.standard.value, *fitted]
    return values


def fill_live(node: Any, values: dict[str, Any]) -> None:
    """Replace each mark under ``node`` by its keywords' values, in place; a keyword
    whose value is unknown yet (the model's, before it is loaded) is left out."""
    if isinstance(node, list):
        for item in node:
            fill_live(item, values)
    elif isinstance(node, dict):
        for keyword, name in node.pop(LIVE, {}).items():
            value = values.get(name.removeprefix("-"))
            if value is not None:
                node[keyword] = -value if name.startswith("-") else value
        for item in node.values():
            fill_live(item, values)


def plain_query_parameters(document: Document) -> None:
    """Each query parameter's schema written out: without the ``null`` branch FastAPI
    gives optional ones (a query parameter is absent, never null), so that the document
    allows no value the server refuses, and with an enum inlined, not referenced."""
    components = document.get("components", {}).get("schemas", {})
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "query":
                    plain_schema(parameter["schema"], components)


def plain_schema(schema: dict[str, Any], components: dict[str, Any]) -> None:
    branches = [branch for branch in schema.get("anyOf", []) if branch != {"type": "null"}]
    if len(branches) == 1 < len(schema["anyOf"]):
        del schema["anyOf"]
        schema.update(branches[0])
    reference = schema.pop("$ref", None)
    if reference is not None:
        definition = components[reference.rsplit("/", 1)[1]]
        kept = {k: v for k, v in definition.items() if k != "description" and k not in schema}
        schema.update(kept)


def live_openapi(app: FastAPI, static: Callable[[], Document]) -> Callable[[], Document]:
    """``app.openapi``: FastAPI's document (``static``, cached by FastAPI) with the live
    values filled in, built again only when the values change (a new model)."""
    cached: tuple[Document, dict[str, Any], Document] | None = None

    def openapi() -> Document:
        nonlocal cached
        base, values = static(), live_values(app)
        if cached is None or cached[0] is not base or cached[1] != values:
            document = copy.deepcopy(base)
            fill_live(document, values)
            plain_query_parameters(document)
            cached = (base, values, document)
        return cached[2]

    return openapi


def install_live_openapi(app: FastAPI) -> None:
    app.openapi = live_openapi(app, app.openapi)  # type: ignore[method-assign]

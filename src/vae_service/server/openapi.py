"""The OpenAPI document with the limits the server enforces: read from the app's settings
and, once the lifespan has loaded them, from the models (their latent_dim, their fitted
priors).

The request models and route declarations mark where a live value goes
(``schemas.live``); ``live_openapi`` fills the marks in FastAPI's generated document.
The un-prefixed model routes get the default model's values, and so do the routes
under /models/{model}/ while every model has the default's. Where the models differ
(/decode's latent length, /sample's priors, ...), such a route is written out for each
model under its own path (/models/NAME/decode), with that model's values: no path
parameter can change a body's schema, and each model checks requests against its own.

Before a model is loaded the document is written without its bounds (the rows of ``z``
say only "at least one number", ``prior`` lists both priors): /docs stays up while the
weights load, and the model's endpoints answer 503 until then anyway.

With VAE_API_KEYS set, every operation but the health checks declares the bearer key
it needs, and its 401.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI

from vae_service.server.api_docs import ERROR_MEANINGS
from vae_service.server.auth import is_open
from vae_service.server.model_entries import Entry
from vae_service.server.schemas import LIVE, PriorName, example_latent
from vae_service.server.serving import PER_MODEL

# The settings the document quotes; only these, never the whole settings (API keys).
SETTINGS_LIMITS = (
    "max_abs_latent",
    "max_images_per_request",
    "max_interpolation_steps",
    "max_sample_n",
    "max_score_samples",
)
# The values each model has of its own (``model_values``).
MODEL_VALUES = frozenset({"latent_dim", "priors", "z_examples"})
EACH_MODEL = "each_model"  # model name -> its values, in ``live_values``
BEARER = "bearer"
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
Document = dict[str, Any]


def model_values(entry: Entry | None) -> dict[str, Any]:
    """A model's own values; none while no version of it serves."""
    if entry is None or entry.live is None:
        return {}
    runtime = entry.live.runtime
    latent_dim = runtime.config.latent_dim
    fitted = [PriorName.fitted.value] if runtime.prior is not None else []
    return {
        "latent_dim": latent_dim,
        "priors": [PriorName.standard.value, *fitted],
        "z_examples": [[example_latent(latent_dim)]],
    }


def live_values(app: FastAPI) -> dict[str, Any]:
    """The values the marks name: the limit settings, and once the repository is up,
    the models' names, the default model's values, and each model's (EACH_MODEL)."""
    settings = app.state.settings
    values: dict[str, Any] = {name: getattr(settings, name) for name in SETTINGS_LIMITS}
    values["api_keys"] = bool(settings.api_keys)
    repository = app.state.repository
    if repository is not None:
        names = repository.names()
        values["models"] = names
        values[EACH_MODEL] = {name: model_values(repository.entries[name]) for name in names}
        values.update(model_values(repository.entries.get(repository.default)))
    return values


def fill_live(node: Any, values: dict[str, Any]) -> None:
    """Replace each mark under ``node`` by its keywords' values, in place; a keyword
    whose value is unknown yet (a model's, before it is loaded) is left out."""
    if isinstance(node, list):
        for item in node:
            fill_live(item, values)
    elif isinstance(node, dict):
        for keyword, name in node.pop(LIVE, {}).items():
            value = values.get(name.removeprefix("-"))
            if value is not None:
                node[keyword] = -value if name.startswith("-") else copy.deepcopy(value)
        for item in node.values():
            fill_live(item, values)


def marked(node: Any) -> Iterator[str]:
    """The names of the values the marks under ``node`` need."""
    if isinstance(node, list):
        for item in node:
            yield from marked(item)
    elif isinstance(node, dict):
        yield from (name.removeprefix("-") for name in node.get(LIVE, {}).values())
        for item in node.values():
            yield from marked(item)


def operations(path_item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (operation for method, operation in path_item.items() if method in HTTP_METHODS)


def one_model_path(path_item: dict[str, Any], name: str, values: dict[str, Any]) -> Document:
    """A /models/{model}/ path item written out for model ``name``, with its values (none
    of a model's own while it is not loaded)."""
    item = copy.deepcopy(path_item)
    for operation in operations(item):
        operation["parameters"] = [
            parameter
            for parameter in operation.get("parameters", [])
            if (parameter.get("in"), parameter.get("name")) != ("path", "model")
        ]
        if not operation["parameters"]:
            del operation["parameters"]
        if "operationId" in operation:
            operation["operationId"] += "_" + re.sub(r"\W", "_", name)
        operation["summary"] = f"{operation.get('summary', '')} ({name})".strip()
    shared = {key: value for key, value in values.items() if key not in MODEL_VALUES}
    fill_live(item, {**shared, **values[EACH_MODEL][name]})
    return item


def per_model_paths(document: Document, values: dict[str, Any]) -> None:
    """Each /models/{model}/ path whose document depends on the model, written out under
    /models/NAME/ for every model, unless every loaded model has the default's values
    there. (One path for the models alike and one for each other model would do, but
    a client that takes a name from GET /models, as schemathesis' stateful phase does,
    would send it to the shared path, whatever its ``model`` enum says.)"""
    each_model: dict[str, dict[str, Any]] | None = values.get(EACH_MODEL)
    if not each_model:
        return
    paths: dict[str, Any] = {}
    for path, item in document.get("paths", {}).items():
        needs = sorted(MODEL_VALUES.intersection(marked(item)))
        default = [values.get(name) for name in needs]
        if path.startswith(PER_MODEL + "/") and any(
            own and [own.get(name) for name in needs] != default for own in each_model.values()
        ):
            for model in each_model:
                paths[path.replace("{model}", model)] = one_model_path(item, model, values)
        else:
            paths[path] = item
    document["paths"] = paths


def plain_query_parameters(document: Document) -> None:
    """Each query parameter's schema written out: without the ``null`` branch FastAPI
    gives optional ones (a query parameter is absent, never null), so that the document
    allows no value the server refuses, and with an enum inlined, not referenced."""
    components = document.get("components", {}).get("schemas", {})
    for item in document.get("paths", {}).values():
        for operation in operations(item):
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


def api_key_security(document: Document) -> None:
    """VAE_API_KEYS is set: every operation but the health checks (server/auth.py)
    needs ``Authorization: Bearer <key>``, and answers 401 without it."""
    schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes[BEARER] = {
        "type": "http",
        "scheme": "bearer",
        "description": "One of VAE_API_KEYS (or VAE_ADMIN_KEYS)",
    }
    for path, item in document.get("paths", {}).items():
        if is_open(path):
            continue
        for operation in operations(item):
            operation["security"] = [{BEARER: []}]
            if "401" not in operation.setdefault("responses", {}):
                operation["responses"]["401"] = {
                    "description": ERROR_MEANINGS[401],
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ErrorResponse"}
                        }
                    },
                }


def live_openapi(app: FastAPI, static: Callable[[], Document]) -> Callable[[], Document]:
    """``app.openapi``: FastAPI's document (``static``, cached by FastAPI) with the live
    values filled in, built again only when the values change (a new model)."""
    cached: tuple[Document, dict[str, Any], Document] | None = None

    def openapi() -> Document:
        nonlocal cached
        base, values = static(), live_values(app)
        if cached is None or cached[0] is not base or cached[1] != values:
            document = copy.deepcopy(base)
            per_model_paths(document, values)
            fill_live(document, values)
            plain_query_parameters(document)
            if values["api_keys"]:
                api_key_security(document)
            cached = (base, values, document)
        return cached[2]

    return openapi


def install_live_openapi(app: FastAPI) -> None:
    app.openapi = live_openapi(app, app.openapi)  # type: ignore[method-assign]

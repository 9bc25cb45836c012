"""The limits in /openapi.json are the running ones: the settings' (the tiny test
settings: max_sample_n=32, max_interpolation_steps=16, max_images_per_request=8) and,
once loaded, the model's (the tiny model's latent_dim is 4, and it has no fitted prior);
in a repository of models that differ, each model's own. tests/test_openapi_walk.py
walks the whole document with schemathesis."""

from __future__ import annotations

import itertools
import json
import re
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from tests.conftest import settings_for
from tests.test_openapi_walk import model_repository
from vae_service.server.main import create_app
from vae_service.server.request_bodies import is_base64
from vae_service.server.schemas import BASE64_PATTERN, EXAMPLE_Z, LIVE, example_latent
from vae_service.server.settings import Settings

MODELS = ["fashion-mnist", "fitted", "wide"]  # model_repository's


def parameter(spec: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    operation = next(iter(spec["paths"][path].values()))
    schemas: dict[str, Any] = {p["name"]: p["schema"] for p in operation["parameters"]}
    return schemas[name]


def body(spec: dict[str, Any], path: str, media_type: str) -> dict[str, Any]:
    schema: dict[str, Any] = spec["paths"][path]["post"]["requestBody"]["content"][media_type][
        "schema"
    ]
    if "$ref" in schema:
        return spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]  # type: ignore[no-any-return]
    return schema


def latent_rows(z: dict[str, Any]) -> dict[str, Any]:
    """The schema of one row of ``z`` (a list, or null where optional)."""
    listed = next(branch for branch in z.get("anyOf", [z]) if branch.get("type") == "array")
    return listed["items"]  # type: ignore[no-any-return]


def test_settings_limits_are_in_the_schema(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert parameter(spec, "/sample", "n") | {"minimum": 1, "maximum": 32} == parameter(
        spec, "/sample", "n"
    )
    assert parameter(spec, "/interpolate", "steps")["maximum"] == 16
    for path in ("/encode", "/reconstruct"):
        files = body(spec, path, "multipart/form-data")
        assert files["required"] == ["images"]
        assert files["properties"]["images"]["minItems"] == 1
        assert files["properties"]["images"]["maxItems"] == 8
        # An empty file or string is no image (400): the document allows neither.
        assert files["properties"]["images"]["items"]["minLength"] == 1
        images = body(spec, path, "application/json")["properties"]["images"]
        assert (images["minItems"], images["maxItems"]) == (1, 8)
        assert images["items"]["pattern"] == f"^{BASE64_PATTERN}$"
        assert images["items"]["minLength"] == 1
    decode_z = body(spec, "/decode", "application/json")["properties"]["z"]
    assert (decode_z["minItems"], decode_z["maxItems"]) == (1, 8)
    value = latent_rows(decode_z)["items"]
    assert (value["minimum"], value["maximum"]) == (-1e4, 1e4)


def test_model_limits_are_in_the_schema(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for z in (
        body(spec, "/decode", "application/json")["properties"]["z"],
        body(spec, "/interpolate", "application/json")["properties"]["z"],
    ):
        row = latent_rows(z)
        assert (row["minItems"], row["maxItems"]) == (4, 4)
    # The tiny weights carry no fitted prior: prior=fitted is a 422, so not offered.
    assert parameter(spec, "/sample", "prior")["enum"] == ["standard"]
    # The example is a valid request: one latent of the model's length.
    assert body(spec, "/decode", "application/json")["properties"]["z"]["examples"] == [[EXAMPLE_Z]]
    # One model: the /models/{model}/ routes are the default model's, by name.
    assert parameter(spec, "/models/{model}/decode", "model")["enum"] == ["tiny"]
    assert body(spec, "/models/{model}/decode", "application/json") == body(
        spec, "/decode", "application/json"
    )


def test_interpolate_takes_exactly_two(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    files = body(spec, "/interpolate", "multipart/form-data")["properties"]["images"]
    assert (files["minItems"], files["maxItems"]) == (2, 2)
    pair = body(spec, "/interpolate", "application/json")
    assert [branch["required"] for branch in pair["oneOf"]] == [["images"], ["z"]]
    for name in ("images", "z"):
        listed = pair["properties"][name]["anyOf"][0]
        assert (listed["minItems"], listed["maxItems"]) == (2, 2)


def test_schema_has_no_marks_and_no_null_queries(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert LIVE not in json.dumps(spec)
    seed = parameter(spec, "/sample", "seed")
    assert "anyOf" not in seed and seed["type"] == "integer"


def test_before_the_model_loads_only_its_bounds_are_missing(api_settings: Settings) -> None:
    app = create_app(api_settings)  # no lifespan: the model is not loaded
    spec = TestClient(app).get("/openapi.json").json()
    assert parameter(spec, "/sample", "n")["maximum"] == 32
    row = latent_rows(body(spec, "/decode", "application/json")["properties"]["z"])
    assert row["minItems"] == 1 and "maxItems" not in row
    assert parameter(spec, "/sample", "prior")["enum"] == ["standard", "fitted"]  # any prior
    assert LIVE not in json.dumps(spec)


def test_schema_is_cached_per_model(api_settings: Settings) -> None:
    app = create_app(api_settings)
    with TestClient(app):
        loaded = app.openapi()
        assert app.openapi() is loaded
        version = app.state.repository.serving()
        served = version.runtime
        # Another model: other latent_dim, a fitted prior.
        version.runtime = SimpleNamespace(config=SimpleNamespace(latent_dim=7), prior=object())
        try:
            other = app.openapi()
        finally:
            version.runtime = served
        assert app.openapi() is not other
    assert (
        latent_rows(body(other, "/decode", "application/json")["properties"]["z"])["maxItems"] == 7
    )
    assert parameter(other, "/sample", "prior")["enum"] == ["standard", "fitted"]
    assert app.openapi() == TestClient(app).get("/openapi.json").json()  # unloaded again


def test_limits_in_the_schema_are_the_servers(client: TestClient) -> None:
    """Each bound, just inside and just outside."""
    assert client.get("/sample?n=32&format=npy").status_code == 200
    assert client.get("/sample?n=33").status_code == 422
    assert client.get("/sample?prior=fitted").status_code == 422
    assert client.post("/decode", json={"z": [[1e4, -1e4, 0, 0]]}).status_code == 200
    assert client.post("/decode", json={"z": [[1e4, -1e4, 0, 0]] * 9}).status_code == 422
    assert client.post("/decode", json={"z": [[0, 0, 0]]}).status_code == 422
    assert client.post("/decode", json={"z": [[10001.0, 0, 0, 0]]}).status_code == 422
    assert client.post("/interpolate?steps=16", json={"z": [[0] * 4] * 2}).status_code == 200
    assert client.post("/interpolate?steps=17", json={"z": [[0] * 4] * 2}).status_code == 422
    assert client.post("/interpolate", json={"z": [[0] * 4] * 2, "images": None}).status_code == 200
    assert client.post("/interpolate", json={"images": None}).status_code == 422
    no_images = {"files": {"other": ("a.png", b"x")}}
    assert client.post("/encode", **no_images).status_code == 422  # type: ignore[arg-type]


def test_decode_body_not_utf8_is_invalid_json(client: TestClient) -> None:
    """A 422, as for any JSON body that does not parse; /decode reads no image, so it
    documents no 400."""
    reply = client.post(
        "/decode", content=b"\x8c\xb5", headers={"content-type": "application/json"}
    )
    assert reply.status_code == 422
    assert reply.json()["detail"][0]["type"] == "json_invalid"
    spec = client.get("/openapi.json").json()
    assert "400" not in spec["paths"]["/decode"]["post"]["responses"]


def test_base64_check_is_the_schemas_pattern() -> None:
    """Every string over a small alphabet, up to 7 characters: the server's check and the
    document's pattern agree."""
    pattern = re.compile(BASE64_PATTERN)
    for length in range(8):
        for chars in itertools.product("Q/=-\n", repeat=length):
            text = "".join(chars)
            assert is_base64(text) == (pattern.fullmatch(text) is not None), text


def test_base64_that_b64decode_alone_lets_through_is_refused(client: TestClient) -> None:
    for text in ("AA==AA==", "AAAA====", "AA==\n"):
        reply = client.post("/encode", json={"images": [text]})
        assert reply.status_code == 422, text
        assert "not valid base64" in reply.json()["detail"]


@pytest.fixture(scope="module")
def repository_spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The document of a repository of models that differ: fashion-mnist (the default,
    latent_dim 4, no fitted prior), wide (latent_dim 6) and fitted (a fitted prior)."""
    folder = model_repository(tmp_path_factory.mktemp("models"))
    settings = settings_for(folder / "unused.safetensors").model_copy(update={"model_dir": folder})
    with TestClient(create_app(settings)) as client:
        spec: dict[str, Any] = client.get("/openapi.json").json()
    return spec


def test_routes_that_differ_by_model_are_written_out_for_each(
    repository_spec: dict[str, Any],
) -> None:
    """A path parameter cannot change a body's schema: /decode and /interpolate (the
    latent length) and /sample (the priors) get a path of their own per model."""
    spec, paths = repository_spec, repository_spec["paths"]
    for route in ("decode", "interpolate", "sample"):
        assert f"/models/{{model}}/{route}" not in paths
        assert {f"/models/{model}/{route}" for model in MODELS} <= set(paths)
    for model, latent_dim in (("fashion-mnist", 4), ("fitted", 4), ("wide", 6)):
        z = body(spec, f"/models/{model}/decode", "application/json")["properties"]["z"]
        assert (latent_rows(z)["minItems"], latent_rows(z)["maxItems"]) == (latent_dim,) * 2
        assert z["examples"] == [[example_latent(latent_dim)]]
        pair = body(spec, f"/models/{model}/interpolate", "application/json")["properties"]["z"]
        assert latent_rows(pair)["maxItems"] == latent_dim
        priors = ["standard", "fitted"] if model == "fitted" else ["standard"]
        assert parameter(spec, f"/models/{model}/sample", "prior")["enum"] == priors
        operation = paths[f"/models/{model}/decode"]["post"]
        assert "model" not in {p["name"] for p in operation["parameters"]}
    # The un-prefixed routes are the default model's.
    assert (
        latent_rows(body(spec, "/decode", "application/json")["properties"]["z"])["maxItems"] == 4
    )
    # What every model takes alike stays one path, for every model.
    for route in ("/models/{model}/encode", "/models/{model}/reconstruct", "/models/{model}"):
        assert parameter(spec, route, "model")["enum"] == MODELS
    ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(ids) == len(set(ids))
    assert LIVE not in json.dumps(spec)


def test_api_keys_are_declared(api_settings: Settings) -> None:
    """With VAE_API_KEYS, every operation but the health checks needs the bearer key and
    answers 401 without it (/model and /metrics too, which declare no 401 themselves)."""
    keyed = api_settings.model_copy(update={"api_keys": [SecretStr("key")]})
    client = TestClient(create_app(keyed))
    spec = client.get("/openapi.json", headers={"Authorization": "Bearer key"}).json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, item in spec["paths"].items():
        for operation in item.values():
            if path in ("/healthz", "/readyz"):
                assert "security" not in operation and "401" not in operation["responses"]
            else:
                assert operation["security"] == [{"bearer": []}], path
                assert "401" in operation["responses"], path
    assert client.get("/model").status_code == 401
    assert client.get("/metrics").status_code == 401
    plain = TestClient(create_app(api_settings)).get("/openapi.json").json()
    assert "securitySchemes" not in plain["components"]

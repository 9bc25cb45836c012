"""API keys (VAE_API_KEYS) and CORS (VAE_CORS_ORIGINS)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from vae_service.server.auth import bearer_token
from vae_service.server.main import create_app
from vae_service.server.settings import Settings

KEYS = ["first-key-0123456789", "second-key-abcdefghij"]
Z = {"z": [[0.1, 0.2, 0.3, 0.4]]}
ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def locked(served_settings: Settings) -> Iterator[TestClient]:
    """The app with two API keys."""
    settings = served_settings.model_copy(update={"api_keys": Settings(api_keys=KEYS).api_keys})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def unauthorized(reply: Response) -> None:
    assert reply.status_code == 401, reply.text
    assert reply.headers["www-authenticate"] == "Bearer"
    assert "API key" in reply.json()["detail"]


@pytest.mark.parametrize("path", ["/decode", "/model", "/metrics", "/sample", "/docs"])
def test_no_key_is_401(locked: TestClient, path: str) -> None:
    reply = locked.post(path, json=Z) if path == "/decode" else locked.get(path)
    unauthorized(reply)


@pytest.mark.parametrize(
    "authorization",
    ["Bearer wrong", f"Bearer {KEYS[0]}x", f"Bearer {KEYS[0][:-1]}", "Bearer ", "Bearer"],
)
def test_wrong_key_is_401(locked: TestClient, authorization: str) -> None:
    unauthorized(locked.post("/decode", json=Z, headers={"Authorization": authorization}))


@pytest.mark.parametrize("key", KEYS)
def test_right_key_is_served(locked: TestClient, key: str) -> None:
    reply = locked.post("/decode", json=Z, headers=bearer(key))
    assert reply.status_code == 200 and len(reply.json()["images"]) == 1
    assert locked.get("/metrics", headers=bearer(key)).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": KEYS[0]},
        {"Authorization": KEYS[0]},  # no scheme
        {"Authorization": f"Basic {KEYS[0]}"},
        {"Authorization": f"Token {KEYS[0]}"},
        {"Cookie": f"api_key={KEYS[0]}"},
    ],
)
def test_key_in_the_wrong_header_is_401(locked: TestClient, headers: dict[str, str]) -> None:
    unauthorized(locked.post("/decode", json=Z, headers=headers))


def test_key_in_the_query_is_401(locked: TestClient) -> None:
    unauthorized(locked.get(f"/sample?api_key={KEYS[0]}&key={KEYS[0]}"))


@pytest.mark.parametrize(("path", "body"), [("/healthz", "ok"), ("/readyz", "ready")])
def test_health_endpoints_need_no_key(locked: TestClient, path: str, body: str) -> None:
    assert locked.get(path).json() == {"status": body}


def test_scheme_is_case_insensitive() -> None:
    assert bearer_token(f"bearer {KEYS[0]}") == KEYS[0]
    assert bearer_token(f"BEARER  {KEYS[0]} ") == KEYS[0]
    assert bearer_token(KEYS[0]) is None


@pytest.mark.parametrize("value", [",".join(KEYS), f" {KEYS[0]} , {KEYS[1]} ", str(KEYS)])
def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("VAE_API_KEYS", value.replace("'", '"'))
    keys = Settings().api_keys
    assert [k.get_secret_value() for k in keys] == KEYS
    assert KEYS[0] not in repr(Settings())  # secrets stay out of logs and reprs


def test_no_keys_means_open(client: TestClient) -> None:
    assert client.post("/decode", json=Z).status_code == 200


# --- CORS ------------------------------------------------------------------------------


def preflight(client: TestClient) -> Response:
    headers = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    return client.options("/decode", headers=headers)


def test_cors_closed_by_default(client: TestClient) -> None:
    assert "access-control-allow-origin" not in preflight(client).headers
    reply = client.post("/decode", json=Z, headers={"Origin": ORIGIN})
    assert reply.status_code == 200
    assert "access-control-allow-origin" not in reply.headers


def test_cors_open_for_configured_origins(api_settings: Settings) -> None:
    settings = api_settings.model_copy(
        update={"cors_origins": [ORIGIN], "api_keys": Settings(api_keys=KEYS[:1]).api_keys}
    )
    with TestClient(create_app(settings)) as client:
        allowed = preflight(client)  # preflights carry no key and must pass
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        reply = client.post("/decode", json=Z, headers={"Origin": ORIGIN, **bearer(KEYS[0])})
        assert reply.headers["access-control-allow-origin"] == ORIGIN
        assert "x-request-id" in reply.headers["access-control-expose-headers"].lower()
        other = client.post("/decode", json=Z, headers={"Origin": "https://evil.example"})
        assert other.status_code == 401
        assert "access-control-allow-origin" not in other.headers

"""/metrics, request ids and the JSON log lines."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from vae_service.server.main import create_app
from vae_service.server.observability import JsonFormatter
from vae_service.server.settings import Settings

Z = {"z": [[0.1, 0.2, 0.3, 0.4]]}
MODEL = {"model": "tiny"}  # every metric is labelled with the model (served_weights' name)
ENCODE_200 = (
    "vae_http_requests_total",
    {"endpoint": "/encode", "method": "POST", "status": "200", **MODEL},
)


def scrape(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    reply = client.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_move_as_requests_are_served(
    client: TestClient, make_image: Callable[..., bytes]
) -> None:
    before = scrape(client)
    png = make_image()
    for _ in range(3):
        assert client.post("/encode", files={"images": ("a.png", png)}).status_code == 200
    assert client.post("/decode", json={"z": [[0.1]]}).status_code == 422
    after = scrape(client)
    name, labels = ENCODE_200
    assert value(after, name, **labels) - value(before, name, **labels) == 3
    refused = {"endpoint": "/decode", "method": "POST", "status": "422", **MODEL}
    assert value(after, name, **refused) - value(before, name, **refused) == 1
    timed = "vae_http_request_duration_seconds_count"
    encode = {"endpoint": "/encode", **MODEL}
    assert value(after, timed, **encode) - value(before, timed, **encode) == 3
    batches = "vae_batch_size_count"
    encodes = {"operation": "encode", **MODEL}
    assert value(after, batches, **encodes) - value(before, batches, **encodes) == 3
    assert value(after, "vae_batch_size_sum", **encodes) >= 3
    metrics_200 = {"endpoint": "/metrics", "method": "GET", "status": "200", "model": ""}
    assert value(after, "vae_http_requests_total", **metrics_200)


def test_model_identity_load_time_and_queue(client: TestClient, served_weights: Path) -> None:
    samples = scrape(client)
    info = next(dict(labels) for (name, labels) in samples if name == "vae_model_info")
    assert info["sha256"] == hashlib.sha256(served_weights.read_bytes()).hexdigest()
    assert info["name"] == served_weights.name and info["device"] == "cpu"
    assert info["model"] == "tiny"
    assert value(samples, "vae_model_load_seconds", **MODEL) > 0
    assert value(samples, "vae_model_warmup_seconds", **MODEL) > 0
    assert ("vae_queue_rows", frozenset(MODEL.items())) in samples
    assert value(samples, "vae_model_loads_total", outcome="success", **MODEL) == 1


def test_unknown_paths_share_one_label(client: TestClient) -> None:
    for path in ("/nope", "/admin/../etc/passwd", "/wp-login.php"):
        assert client.get(path).status_code == 404
    text = client.get("/metrics").text
    assert 'endpoint="<unmatched>",method="GET",model="",status="404"} 3.0' in text
    assert "wp-login" not in text and "passwd" not in text


def test_each_app_has_its_own_registry(api_settings: Settings) -> None:
    with TestClient(create_app(api_settings)) as one, TestClient(create_app(api_settings)) as two:
        one.get("/healthz")
        assert "/healthz" in one.get("/metrics").text
        assert 'endpoint="/healthz"' not in two.get("/metrics").text


# --- request ids ----------------------------------------------------------------------


@pytest.mark.parametrize("given", ["abc-123", "f81d4fae-7dec-11d0-a765-00a0c91e6bf6", "a.b:c_d"])
def test_request_id_is_echoed(client: TestClient, given: str) -> None:
    reply = client.post("/decode", json=Z, headers={"X-Request-ID": given})
    assert reply.headers["x-request-id"] == given


@pytest.mark.parametrize(
    "given", [b"", b"x" * 65, b"has space", b"new\\nline", b"<script>", "é".encode("latin-1")]
)
def test_unsafe_request_id_is_replaced(client: TestClient, given: bytes) -> None:
    reply = client.get("/healthz", headers={"X-Request-ID": given})
    assert re.fullmatch(r"[0-9a-f]{16}", reply.headers["x-request-id"])


def test_generated_ids_differ(client: TestClient) -> None:
    ids = {client.get("/healthz").headers["x-request-id"] for _ in range(20)}
    assert len(ids) == 20


def test_refusals_carry_the_id_too(client: TestClient) -> None:
    reply = client.get("/sample?n=0", headers={"X-Request-ID": "refused-1"})
    assert reply.status_code == 422 and reply.headers["x-request-id"] == "refused-1"


# --- JSON logs --------------------------------------------------------------------------


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """What the service's loggers write, through the service's JSON formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("service")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def parsed(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_line_per_request(client: TestClient, log_lines: io.StringIO) -> None:
    client.post("/decode", json=Z, headers={"X-Request-ID": "log-me-1"})
    (line,) = [e for e in parsed(log_lines) if e.get("request_id") == "log-me-1"]
    assert line["logger"] == "service.access" and line["level"] == "info"
    assert (line["method"], line["path"], line["status"]) == ("POST", "/decode", 200)
    assert 0 < line["duration_ms"] < 10_000 and re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]
    )


def test_5xx_is_logged_with_its_id_and_no_traceback_reaches_the_client(
    client: TestClient, log_lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(z: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(client.app.state.repository.serving().runtime, "decode", broken)  # type: ignore[attr-defined]
    reply = client.post("/decode", json=Z, headers={"X-Request-ID": "boom-1"})
    assert reply.status_code == 500 and reply.json() == {"detail": "internal server error"}
    assert reply.headers["x-request-id"] == "boom-1" and "secret" not in reply.text
    lines = [e for e in parsed(log_lines) if e.get("request_id") == "boom-1"]
    error = next(e for e in lines if e["message"] == "unhandled error")
    assert "secret internals" in error["error"]  # the traceback stays in the server log
    access = next(e for e in lines if e["message"] == "request")
    assert access["status"] == 500 and access["level"] == "error"
    samples = scrape(client)
    assert value(
        samples, "vae_http_requests_total", endpoint="/decode", method="POST", status="500", **MODEL
    )


def test_access_log_can_be_turned_off(api_settings: Settings, log_lines: io.StringIO) -> None:
    quiet = api_settings.model_copy(update={"access_log": False})
    with TestClient(create_app(quiet)) as client:
        client.get("/healthz", headers={"X-Request-ID": "quiet-1"})
        client.get("/sample?n=0", headers={"X-Request-ID": "quiet-2"})
    assert not [e for e in parsed(log_lines) if e.get("request_id", "").startswith("quiet")]

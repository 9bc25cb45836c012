"""vae-serve as deployed (a subprocess, tiny weights): one log format on stderr, and
keep-alive connections that the server does not close under a client's pool."""

from __future__ import annotations

import http.client
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from vae_service.server.settings import Settings

KEYS = ["time", "level", "logger", "message"]  # every line's first keys, in this order
UVICORN_LINES = (
    "Started server process",
    "Waiting for application startup.",
    "Application startup complete.",
    "Uvicorn running on",
    "Shutting down",
    "Waiting for application shutdown.",
    "Application shutdown complete.",
    "Finished server process",
)


def test_every_stderr_line_is_a_json_log_line(
    start_server: Callable[..., Any], tiny_weights: Path
) -> None:
    server = start_server("--weights", str(tiny_weights), "--device", "cpu")
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0

    entries = []
    for line in server.log.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            assert isinstance(entry, dict) and list(entry)[:4] == KEYS, line
            entries.append(entry)
    uvicorn = [e["message"] for e in entries if e["logger"].startswith("uvicorn")]
    for start in UVICORN_LINES:
        assert any(message.startswith(start) for message in uvicorn), (start, uvicorn)
    access = [e for e in entries if e["logger"] == "service.access"]
    assert [(e["path"], e["status"]) for e in access if e["path"] == "/healthz"] == [
        ("/healthz", 200)
    ]
    assert {e["level"] for e in entries} <= {"debug", "info", "warning", "error", "critical"}


def test_the_server_keeps_idle_connections_longer_than_clients_do() -> None:
    """httpx drops idle connections after 5 s; uvicorn's default was also 5 s, and a
    request sent on a connection as the server closed it failed (soak: ReadError)."""
    client_expiry = httpx.Limits().keepalive_expiry
    assert client_expiry is not None
    assert Settings.model_fields["keep_alive_s"].default > 2 * client_expiry


def test_keep_alive_flag_sets_the_idle_timeout(
    start_server: Callable[..., Any], tiny_weights: Path
) -> None:
    server = start_server("--weights", str(tiny_weights), "--device", "cpu", "--keep-alive-s", "1")
    url = urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        for pause in (0.0, 0.5):  # idle for less than the timeout: the same connection
            time.sleep(pause)
            conn.request("GET", "/healthz")
            reply = conn.getresponse()
            assert reply.status == 200 and reply.read()
            if pause == 0.0:
                sock = conn.sock
            assert conn.sock is sock
        idle_from = time.monotonic()
        assert sock.recv(1) == b""  # blocks until the server closes it
        assert 0.8 < time.monotonic() - idle_from < 3
    finally:
        conn.close()


def test_one_process_and_workers_run_on_asyncios_loop(monkeypatch: Any, tiny_weights: Path) -> None:
    """Not uvloop: libuv accepts one connection per loop turn, and under load a burst of
    new connections waited seconds in the listen backlog (client timeouts at c=1,000)."""
    from vae_service.server import cli

    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(cli.uvicorn, "run", lambda app, **options: seen.append(options))
    cli.main(["--weights", str(tiny_weights), "--device", "cpu"])
    settings = Settings(weights=tiny_weights, workers=2)
    assert seen[0] == cli.server_options(Settings(weights=tiny_weights, device="cpu"))
    assert seen[0]["loop"] == cli.server_options(settings)["loop"] == "asyncio"

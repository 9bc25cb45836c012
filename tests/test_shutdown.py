"""SIGTERM during load: vae-serve stops accepting, answers every request it accepted,
drains the batcher and exits 0."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow
CONCURRENCY = 32
LOAD_BEFORE_S = 1.5
# Errors that mean the request never reached the app: refused connections, and idle
# keep-alive connections closed by the server as the client reused them.
NOT_ACCEPTED = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)


async def load_until_gone(url: str, stop_at: float, keep_alive: bool = True) -> dict[str, Any]:
    """Mixed requests, each with its own X-Request-ID, until the server is gone
    (``keep_alive=False``: each on a new connection)."""
    answered: dict[str, tuple[int, float]] = {}
    refused: list[str] = []
    ids = itertools.count()
    idle = CONCURRENCY if keep_alive else 0
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=idle)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while time.monotonic() < stop_at:
            rid = f"req-{next(ids)}"
            n = 1 + int(rid[4:]) % 32
            try:
                reply = await client.get(f"/sample?n={n}", headers={"X-Request-ID": rid})
            except NOT_ACCEPTED as exc:
                refused.append(type(exc).__name__)
                if isinstance(exc, httpx.ConnectError):
                    return  # no longer listening
                continue
            answered[rid] = (reply.status_code, time.monotonic())

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(CONCURRENCY)))
    return {"answered": answered, "refused": refused}


def logged_requests(log: Path) -> dict[str, int]:
    """Request id -> status of the load's requests, from the server's JSON access lines."""
    logged = {}
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("message") == "request" and entry["request_id"].startswith("req-"):
                logged[entry["request_id"]] = entry["status"]
    return logged


def test_sigterm_during_load_answers_every_accepted_request(
    start_server: Callable[..., Any], tiny_weights: Path
) -> None:
    server = start_server("--weights", str(tiny_weights), "--device", "cpu")
    pid = server.process.pid

    async def scenario() -> tuple[dict[str, Any], float]:
        load = asyncio.create_task(load_until_gone(server.url, time.monotonic() + 30))
        await asyncio.sleep(LOAD_BEFORE_S)
        os.kill(pid, signal.SIGTERM)
        signalled = time.monotonic()
        return await load, signalled

    outcome, signalled = asyncio.run(scenario())
    assert server.process.wait(timeout=30) == 0
    answered, logged = outcome["answered"], logged_requests(server.log)
    assert logged, server.log.read_text()[-2000:]
    # Every request the server took in got its answer, with the status it logged.
    assert {rid: answered.get(rid, (None,))[0] for rid in logged} == logged
    assert set(answered) == set(logged)
    assert {status for status, _ in answered.values()} == {200}
    finished_after = sum(1 for _, at in answered.values() if at > signalled)
    assert finished_after > 0  # requests in flight at SIGTERM were finished, not dropped
    print(
        f"shutdown: {len(answered)} answered ({finished_after} after SIGTERM), "
        f"{len(outcome['refused'])} not accepted {sorted(set(outcome['refused']))}"
    )

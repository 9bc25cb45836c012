"""server/leases.py: a lease taken during a request is given back when it ends, however
it ends, and taking one where nothing would give it back fails loudly."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import Request
from starlette.types import Message

from vae_service.server.leases import ReleaseLeases, hold
from vae_service.server.model_entries import Version


def version() -> Version:
    return Version(runtime=SimpleNamespace())  # type: ignore[arg-type]


def scope() -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}


async def receive() -> Message:
    return {"type": "http.request", "body": b""}


async def send(message: Message) -> None:
    pass


@pytest.mark.parametrize("outcome", ["answered", "failed", "cancelled"])
def test_the_lease_is_given_back_when_the_request_ends(outcome: str) -> None:
    held, seen = version(), []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        hold(Request(scope), held)
        seen.append(held.leases)
        if outcome == "failed":
            raise ValueError("boom")
        if outcome == "cancelled":
            await asyncio.sleep(10)

    async def run() -> None:
        task = asyncio.ensure_future(ReleaseLeases(app)(scope(), receive, send))
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    held.retired = True
    asyncio.run(run())
    assert seen == [1] and held.leases == 0 and held.released.is_set()


def test_holding_without_the_middleware_fails_loudly() -> None:
    held = version()
    with pytest.raises(RuntimeError, match="ReleaseLeases"):
        hold(Request(scope()), held)
    assert held.leases == 0

"""server/serving.py's ``leased`` (a model route under its ``Lease``): the version a
request holds is given back when the request ends, however it ends (answered, refused,
failed, cancelled), and a refusal or a failure names the version that was serving."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import Request

from vae_service.server.errors import ModelFailure, Unprocessable
from vae_service.server.model_entries import Version
from vae_service.server.serving import Served, leased
from vae_service.server.settings import Settings

OUTCOMES = {"refused": Unprocessable("no"), "failed": ValueError("boom")}


def served(version: Version) -> Served:
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    return Served("tiny", version, request, Settings(), deadline=0.0)


@pytest.mark.parametrize("outcome", ["answered", "refused", "failed", "cancelled"])
def test_the_lease_is_given_back_when_the_request_ends(outcome: str) -> None:
    version = Version(runtime=SimpleNamespace(checkpoint=SimpleNamespace(sha256="ab" * 32)))  # type: ignore[arg-type]
    seen: list[int] = []
    raised: list[BaseException] = []

    @leased
    async def handler(model: Served) -> None:
        seen.append(version.leases)
        if outcome in OUTCOMES:
            raise OUTCOMES[outcome]
        if outcome == "cancelled":
            await asyncio.sleep(10)

    async def run() -> None:
        task = asyncio.ensure_future(handler(model=served(version)))
        await asyncio.sleep(0.01)
        task.cancel()
        raised.extend(e for e in await asyncio.gather(task, return_exceptions=True) if e)

    version.retired = True
    asyncio.run(run())
    assert seen == [1] and version.leases == 0 and version.released.is_set()
    if outcome in OUTCOMES:
        headers: Any = raised[0].headers  # type: ignore[attr-defined]
        assert headers["X-Model"] == "tiny" and headers["X-Model-SHA256"] == "ab" * 32
        assert isinstance(raised[0], ModelFailure) == (outcome == "failed")


def test_a_quick_answer_starts_no_disconnect_watch() -> None:
    """Served.wait watches for a disconnect only once a wait has lasted ClientWatch.AFTER_S:
    an answer sooner than that costs no task of its own."""
    received: list[int] = []

    async def receive() -> dict[str, Any]:
        received.append(1)
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def run() -> tuple[str, int]:
        request = Request({"type": "http", "method": "GET", "path": "/", "headers": []}, receive)
        version = Version(runtime=SimpleNamespace())  # type: ignore[arg-type]
        model = Served("tiny", version, request, Settings(), deadline=time.monotonic() + 5)
        answer = await model.wait(asyncio.sleep(0, "answer"))
        return answer, len(asyncio.all_tasks())

    assert asyncio.run(run()) == ("answer", 1) and received == []

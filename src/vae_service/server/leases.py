"""A request holds the model version that answers it until the request ends, so that a
swap meanwhile lets it finish there (server/repository.py).

The route dependency takes the lease (``hold``) and ``ReleaseLeases`` gives it back when
the request is over, however it ends (answered, failed, cancelled). A generator
dependency would do both in one place, but FastAPI runs each one through an exit stack
and a shielded cancel scope: measured at ~45 µs of event-loop CPU a request, against
~3 µs for this (benchmarks/request_cpu.py, BENCHMARKS.md "Per-request CPU").
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from vae_service.server.model_entries import Version

LEASES = "leases"  # scope["state"] key: the versions this request holds


def hold(request: Request, version: Version) -> None:
    """Hold ``version`` until the request ends."""
    held: list[Version] | None = request.scope.get("state", {}).get(LEASES)
    if held is None:  # loud: a lease nobody gives back would stall every swap
        raise RuntimeError("ReleaseLeases is not installed, so no lease would be given back")
    version.hold()
    held.append(version)


class ReleaseLeases:
    """Gives back, as each request ends, the leases its dependencies took."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: list[Version] = []
        scope.setdefault("state", {})[LEASES] = held
        try:
            await self.app(scope, receive, send)
        finally:
            for version in held:
                version.release()
            held.clear()  # the scope can outlive the request in garbage: keep no version alive

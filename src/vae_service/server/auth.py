"""API keys: ``Authorization: Bearer <key>`` on every endpoint but the health checks.

Keys are compared by their SHA-256 digests with ``hmac.compare_digest``, against every
key in turn, so neither a key's length nor which key matched shows in the timing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from vae_service.server.errors import error_response

# Probes (load balancers, Kubernetes) must reach these without a key.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
CHALLENGE = {"WWW-Authenticate": "Bearer"}


# Browsers must reach the playground's page and files without a key too
# (server/routes/playground.py): they hold no data, and the page's API calls send the
# key typed into it. Only that route serves under /playground/.
PAGE_PATHS = frozenset({"/", "/playground"})
PAGE_PREFIX = "/playground/"


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path in PAGE_PATHS or path.startswith(PAGE_PREFIX)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_matches(token: str | None, digests: list[bytes]) -> bool:
    """Whether ``token`` is one of the keys with these digests, in constant time."""
    presented = digest(token or "")
    matched = False
    for known in digests:  # no early exit: every key costs the same
        matched |= hmac.compare_digest(presented, known)
    return matched and token is not None


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (scheme in any case)."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class ApiKeyAuth:
    """401 with ``WWW-Authenticate: Bearer`` unless the request carries a valid key."""

    def __init__(self, app: ASGIApp, keys: Iterable[SecretStr]) -> None:
        self.app = app
        self.digests = [digest(key.get_secret_value()) for key in keys]
        if not self.digests:
            raise ValueError("ApiKeyAuth needs at least one key")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]) or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        detail = "missing or invalid API key (Authorization: Bearer <key>)"
        await error_response(scope["path"], 401, detail, CHALLENGE)(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        token = bearer_token(Headers(scope=scope).get("authorization", ""))
        return key_matches(token, self.digests)


def add_access_control(
    app: Starlette, keys: list[SecretStr], admin_keys: list[SecretStr], origins: list[str]
) -> None:
    """The key check when there are API keys (admin keys pass it too), and CORS around
    it when there are origins (outside: preflights carry no key); neither when unset."""
    if keys:
        app.add_middleware(ApiKeyAuth, keys=[*keys, *admin_keys])
    if origins:  # what browsers on those origins may send and read
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=("GET", "POST"),
            allow_headers=("Authorization", "Content-Type", "X-Request-ID"),
            expose_headers=("X-Request-ID", "X-Seed", "Retry-After"),
        )

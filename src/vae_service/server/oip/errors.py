"""Error bodies of the Open Inference Protocol (KServe v2) paths: ``{"error": "..."}``.

The rest of the service answers errors as ``{"detail": ...}`` (server/errors.py), and
several layers answer without reaching a route at all: the key check (401), the body
size limit (413), the time limit (504), the last-resort 500, and Starlette's 404 and 405
for paths and methods no route takes. ``ProtocolErrors`` wraps them all and, for paths
under ``/v2`` only, rewrites such an answer's body into the protocol's form, keeping its
status and headers. Other paths pass through untouched, at the cost of one prefix test.

It imports nothing of the service (and server/oip/__init__.py imports nothing), so
server/errors.py can install it.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "/v2"


def is_protocol_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_text(detail: Any) -> str:
    """One line from a ``detail``: a string as it is, FastAPI's validation list joined."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(part) for part in item.get("loc", ()))
                parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


def protocol_body(body: bytes) -> bytes:
    """``{"detail": X}`` as ``{"error": "X"}``; anything else unchanged."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(parsed, dict) or "error" in parsed or "detail" not in parsed:
        return body
    return orjson.dumps({"error": error_text(parsed["detail"])})


def _is_json(message: Message) -> bool:
    for name, value in message.get("headers", ()):
        if name.lower() == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return False


class ProtocolErrors:
    """``{"detail": ...}`` error answers on /v2 paths as ``{"error": ...}`` (see above)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_protocol_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        held: Message | None = None  # an error answer's start, until its body is whole
        chunks: list[bytes] = []

        async def rewriting(message: Message) -> None:
            nonlocal held
            kind = message["type"]
            if kind == "http.response.start" and message["status"] >= 400 and _is_json(message):
                held = message
                return
            if held is None or kind != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = protocol_body(b"".join(chunks))
            headers = [(k, v) for k, v in held.get("headers", ()) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**held, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewriting)

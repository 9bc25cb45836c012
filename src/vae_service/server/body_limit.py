"""The request body's size limit (VAE_MAX_BODY_BYTES), as pure ASGI middleware: enforced
before the body is read, from its declared length, and while it is read, for a chunked
one, so that no route ever holds more than the limit in memory."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vae_service.server.errors import PayloadTooLarge, error_response
from vae_service.server.settings import env_name


class BodySizeLimit:
    """413 for a declared Content-Length over the limit, before the app runs; for a
    chunked body, PayloadTooLarge as soon as the bytes read pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = f"request body is over {max_bytes} bytes ({env_name('max_body_bytes')})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(scope["path"], 413, self.message)(scope, receive, send)
            return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                # Raised inside the app, so FastAPI's exception handling answers 413.
                raise PayloadTooLarge(self.message)
            return message

        return counted

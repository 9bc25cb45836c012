"""Per-request limits as pure ASGI middleware: the body size, enforced before and while
the body is read, and the time a request may take, which also ends a request whose
client has gone away."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge
from service.settings import env_name


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
            await JSONResponse({"detail": self.message}, status_code=413)(scope, receive, send)
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


class RequestGuard:
    """504 for a request still unanswered after ``timeout_s``; a request whose client
    disconnects is cancelled at once. Either way the handler is cancelled where it
    waits, which cancels its batcher future, so the batcher drops its queued rows."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.message = f"request took over {timeout_s:g} s ({env_name('request_timeout_s')})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(receive, send)
        try:
            async with asyncio.timeout(self.timeout_s) as deadline:
                exchange.deadline = deadline
                if scope["method"] in ("GET", "HEAD"):  # no body: watch from the start
                    await exchange.prefetch()
                await self.app(scope, exchange.receive, exchange.send)
        except Exception as exc:
            if exchange.disconnected:  # the client left: nobody to answer
                return
            if not (isinstance(exc, TimeoutError) and deadline.expired()) or exchange.started:
                raise
            await JSONResponse({"detail": self.message}, status_code=504)(scope, receive, send)
        finally:
            exchange.close()


class _Exchange:
    """One request's receive and send, watched for a client disconnect once the app
    has the whole body (uvicorn does not cancel a handler whose client left)."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self.deadline: asyncio.Timeout | None = None
        self.started = self.complete = self.disconnected = False
        self._early: deque[Message] = deque()
        self._watcher: asyncio.Task[Message] | None = None

    async def prefetch(self) -> None:
        self._early.append(await self._receive())
        self._watch()

    async def receive(self) -> Message:
        if self._early:
            return self._early.popleft()
        if self._watcher is not None:  # the body is read: only a disconnect can come
            return await asyncio.shield(self._watcher)
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._abort()
        elif not message.get("more_body", False):
            self._watch()
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        elif not message.get("more_body", False):
            self.complete = True
        await self._send(message)

    def close(self) -> None:
        self.complete = True
        if self._watcher is not None:
            self._watcher.cancel()

    def _watch(self) -> None:
        self._watcher = asyncio.ensure_future(self._receive())
        self._watcher.add_done_callback(self._on_message)

    def _on_message(self, watcher: asyncio.Task[Message]) -> None:
        if watcher.cancelled() or watcher.exception() is not None:
            return
        if watcher.result()["type"] == "http.disconnect":
            self._abort()

    def _abort(self) -> None:
        if self.complete or self.deadline is None:
            return
        self.disconnected = True
        with contextlib.suppress(RuntimeError):  # the deadline is already past
            self.deadline.reschedule(asyncio.get_running_loop().time())

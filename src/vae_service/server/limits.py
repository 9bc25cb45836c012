"""Per-request limits as pure ASGI middleware: the body size, enforced before and while
the body is read, the time a request may take, which also ends a request whose client
has gone away, and load shedding: a request that would wait too long is refused at once."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vae_service.server.errors import PayloadTooLarge
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


class LoadShedder:
    """503 + Retry-After at once, before any work, for a request that would wait longer
    than ``max_wait_s`` (0: never), so that the requests taken keep a bounded latency.

    By Little's law a new request waits about (requests in flight) / (requests finished
    per second). The rate is measured over windows of ``WINDOW_S`` in which requests were
    in flight throughout (an idle window says nothing of capacity), and the requests in
    flight are capped at rate × ``max_wait_s``, never below ``FLOOR``. Until a busy window
    has been seen, nothing is refused. The batcher bounds the wait for the model the same
    way (``Batcher.max_queue_wait_s``); this bounds the wait for the event loop, which is
    where requests queue when they are small and many. Probes and /metrics pass always.
    """

    WINDOW_S = 0.1
    FLOOR = 64
    EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})

    def __init__(self, app: ASGIApp, max_wait_s: float) -> None:
        self.app = app
        self.max_wait_s = max_wait_s
        self.in_flight = 0
        self.limit = math.inf
        self.refused = 0
        self._finished = 0
        self._window_start = time.monotonic()
        self._busy = False  # requests were in flight when the window started
        self.response = JSONResponse(
            {
                "detail": "the service is overloaded: a request would wait over "
                f"{1000 * max_wait_s:g} ms ({env_name('max_queue_wait_ms')}); retry later"
            },
            status_code=503,
            headers={"Retry-After": "1"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.max_wait_s or scope["path"] in self.EXEMPT:
            await self.app(scope, receive, send)
            return
        now = time.monotonic()
        if now - self._window_start >= self.WINDOW_S:
            self._measure(now)
        if self.in_flight >= self.limit:
            self.refused += 1
            await self.response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self._finished += 1

    def _measure(self, now: float) -> None:
        if self._busy and self.in_flight:  # busy from start to end: the rate is capacity
            rate = self._finished / (now - self._window_start)
            self.limit = max(self.FLOOR, rate * self.max_wait_s)
        self._window_start, self._finished, self._busy = now, 0, self.in_flight > 0


class RequestGuard:
    """504 for a request still unanswered after ``timeout_s``; a request whose client
    disconnects is cancelled. Either way the handler is cancelled where it waits, which
    cancels its batcher future, so the batcher drops its queued rows.

    One sweeper task per event loop checks the requests in flight every ``tick_s``:
    a request pays for no timer and no task of its own unless it lasts past a sweep,
    when a watcher starts listening for its client's disconnect (uvicorn does not
    cancel a handler whose client left). Requests are assumed not to read a body on
    GET or HEAD, as none of this service's do.

    Not ``asyncio.timeout``: it would still need the sweep for disconnects, and alone it
    measured ~6.5 µs of event-loop CPU a request against ~3.5 µs for all of this guard.
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.tick_s = min(0.1, timeout_s / 5)
        self.message = f"request took over {timeout_s:g} s ({env_name('request_timeout_s')})"
        self._active: set[_Exchange] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        exchange = _Exchange(receive, send, loop.time() + self.timeout_s)
        exchange.body_read = scope["method"] in ("GET", "HEAD")
        self._active.add(exchange)
        if self._sweeper is None or self._sweeper.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep())
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except BaseException:
            if not exchange.aborted:
                raise
            exchange.close()
            if not (exchange.disconnected or exchange.started):
                await JSONResponse({"detail": self.message}, status_code=504)(scope, receive, send)
        finally:
            self._active.discard(exchange)
            exchange.close()

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while self._active:
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            for exchange in list(self._active):
                exchange.check(now)
        self._sweeper = None


class _Exchange:
    """One request in flight: its task, deadline, and its receive and send, watched."""

    __slots__ = (
        "_early",
        "_receive",
        "_send",
        "_watcher",
        "aborted",
        "body_read",
        "cancel_sent",
        "complete",
        "deadline",
        "disconnected",
        "started",
        "task",
    )

    def __init__(self, receive: Receive, send: Send, deadline: float) -> None:
        self._receive = receive
        self._send = send
        self.deadline = deadline
        self.task = asyncio.current_task()
        self.body_read = self.started = self.complete = False
        self.aborted = self.disconnected = self.cancel_sent = False
        self._early: deque[Message] = deque()
        self._watcher: asyncio.Task[None] | None = None

    async def receive(self) -> Message:
        if self._early:
            return self._early.popleft()
        if self._watcher is not None:  # the body is read: only a disconnect can come
            await asyncio.shield(self._watcher)
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._abort(disconnected=True)
        elif not message.get("more_body", False):
            self.body_read = True
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        elif not message.get("more_body", False):
            self.complete = True
        await self._send(message)

    def check(self, now: float) -> None:
        """On each sweep: time out, or start watching for a disconnect."""
        if self.aborted or self.started:
            return
        if now >= self.deadline:
            self._abort(disconnected=False)
        elif self._watcher is None and self.body_read:
            self._watcher = asyncio.ensure_future(self._watch())

    def close(self) -> None:
        """The request is over: stop watching, and take back our cancellation, if any."""
        self.complete = True
        if self._watcher is not None:
            self._watcher.cancel()
        if self.cancel_sent and self.task is not None:
            self.task.uncancel()
            self.cancel_sent = False

    async def _watch(self) -> None:
        while (message := await self._receive())["type"] != "http.disconnect":
            self._early.append(message)  # a GET's empty body, kept for the app
        self._abort(disconnected=True)

    def _abort(self, disconnected: bool) -> None:
        if self.complete or self.aborted or self.task is None:
            return
        self.aborted, self.disconnected = True, disconnected
        if self.task is not asyncio.current_task():  # else the app sees the disconnect itself
            self.cancel_sent = self.task.cancel()

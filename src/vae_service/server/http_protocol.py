"""uvicorn's httptools protocol, with each response's head and body sent in one write.

uvicorn writes a response's status line and headers as soon as the app sends
``http.response.start``, and its body at ``http.response.body``: two ``send`` system
calls for every small answer, and CPython lets go of the GIL around each. Here the
writes made within one turn of the event loop are gathered and sent together at its end,
as aiohttp does for small responses (aiohttp pull request 10991). Kept here because
uvicorn has no such option.
"""

from __future__ import annotations

import asyncio
import typing
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

JOIN_LIMIT = 64 * 1024  # bytes gathered at most; past it they go out at once, unjoined


class GatheredWrites:
    """A transport whose writes wait for the end of the loop's current turn, then go out
    in one ``write``. Everything else is the wrapped transport's."""

    __slots__ = ("_loop", "_pending", "_size", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))
        self._size += len(data)
        if self._size > JOIN_LIMIT:  # a large answer: the transport's flow control takes over
            self.flush()

    def flush(self) -> None:
        pending, size = self._pending, self._size
        if not pending:
            return
        self._pending, self._size = [], 0
        if len(pending) == 1 or size > JOIN_LIMIT:
            for data in pending:  # not joined: copying a large body costs more than a call
                self._transport.write(data)
        else:
            self._transport.write(b"".join(pending))

    def get_write_buffer_size(self) -> int:
        return self._size + self._transport.get_write_buffer_size()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending, self._size = [], 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatheringHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over ``GatheredWrites``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's transport, or uvloop's (not an asyncio.Transport subclass, same methods)
        writes = GatheredWrites(typing.cast(asyncio.Transport, transport), self.loop)
        super().connection_made(typing.cast(asyncio.Transport, writes))

"""Each response's head and body in one write (server/http_protocol.py): the writes of
one loop turn go out together, large ones at once, nothing is lost on close, and real
answers through uvicorn arrive whole: small, large, streamed, HEAD, and on a closing
connection."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from vae_service.server import cli
from vae_service.server.http_protocol import JOIN_LIMIT, GatheredWrites, GatheringHttpToolsProtocol


class Recorder:
    """A transport that records what it is asked to do."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def close(self) -> None:
        self.calls.append(("close", None))

    def abort(self) -> None:
        self.calls.append(("abort", None))

    def get_write_buffer_size(self) -> int:
        return 5

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


def gathered() -> tuple[GatheredWrites, Recorder]:
    recorder = Recorder()
    return GatheredWrites(recorder, asyncio.get_running_loop()), recorder  # type: ignore[arg-type]


def test_the_writes_of_one_turn_go_out_in_one_call() -> None:
    asyncio.run(one_turn())


async def one_turn() -> None:
    writes, recorder = gathered()
    writes.write(b"HTTP/1.1 200 OK\r\n\r\n")
    writes.write(b"")
    writes.write(b"body")
    assert recorder.calls == [] and writes.get_write_buffer_size() == 23 + 5
    await asyncio.sleep(0)  # the end of this turn
    assert recorder.calls == [("write", b"HTTP/1.1 200 OK\r\n\r\nbody")]
    writes.write(b"next")
    await asyncio.sleep(0)
    assert recorder.calls[1:] == [("write", b"next")]


def test_a_large_answer_goes_out_at_once_and_unjoined() -> None:
    asyncio.run(large_answer())


async def large_answer() -> None:
    writes, recorder = gathered()
    head, body = b"head", b"x" * (JOIN_LIMIT + 1)
    writes.write(head)
    writes.write(body)
    assert recorder.calls == [("write", head), ("write", body)]  # no wait for the turn's end
    await asyncio.sleep(0)
    assert len(recorder.calls) == 2


def test_close_sends_what_waits_first_and_abort_drops_it() -> None:
    asyncio.run(close_and_abort())


async def close_and_abort() -> None:
    writes, recorder = gathered()
    writes.write(b"last words")
    writes.close()
    assert recorder.calls == [("write", b"last words"), ("close", None)]
    writes, recorder = gathered()
    writes.write(b"never sent")
    writes.abort()
    await asyncio.sleep(0)
    assert recorder.calls == [("abort", None)]
    assert writes.get_extra_info("peername") == "info peername"  # the rest is the transport's


def test_vae_serve_runs_uvicorn_with_it(tiny_weights: Any) -> None:
    assert (
        cli.server_options(cli.Settings(weights=tiny_weights))["http"] is GatheringHttpToolsProtocol
    )


async def chunks() -> AsyncIterator[bytes]:
    for part in (b"one ", b"two ", b"three"):
        await asyncio.sleep(0.01)
        yield part


async def big(request: Request) -> Response:
    return Response(b"y" * (3 * JOIN_LIMIT + 7), media_type="application/octet-stream")


APP = Starlette(
    routes=[
        Route("/small", lambda request: PlainTextResponse("small"), methods=["GET", "HEAD"]),
        Route("/big", big),
        Route("/stream", lambda request: StreamingResponse(chunks())),
    ]
)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = {k: cli.server_options(cli.Settings())[k] for k in ("loop", "http")}  # as vae-serve
    config = uvicorn.Config(APP, port=port, log_level="warning", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_answers_through_uvicorn_arrive_whole(base_url: str) -> None:
    with httpx.Client(base_url=base_url) as client:
        for _ in range(3):  # one kept-alive connection
            assert client.get("/small").text == "small"
        assert client.head("/small").headers["content-length"] == "5"
        assert client.get("/big").content == b"y" * (3 * JOIN_LIMIT + 7)
        assert client.get("/stream").content == b"one two three"
        closing = client.get("/small", headers={"Connection": "close"})
        assert closing.text == "small" and closing.headers["connection"] == "close"


def test_the_head_and_body_of_a_small_answer_come_in_one_segment(base_url: str) -> None:
    """Read at once, as soon as anything arrives: one recv holds the whole answer."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(20):
            sock.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
            first = sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"\r\n\r\nsmall"), first

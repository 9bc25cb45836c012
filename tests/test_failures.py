"""Failure behaviour: out-of-memory batches, request timeouts, clients that leave."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
import torch
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Message
from torch import Tensor

from vae_service.server.batch_jobs import ModelOutOfMemory, Operation
from vae_service.server.batcher import Batcher
from vae_service.server.main import create_app
from vae_service.server.settings import Settings

Z = [0.1, 0.2, 0.3, 0.4]


class FakeGpu:
    """A batch function that runs out of memory on batches over ``capacity`` rows;
    it can also hold the worker until released, to keep requests queued."""

    def __init__(self, fn: Callable[[Tensor], Tensor], capacity: int = 1_000_000) -> None:
        self.fn = fn
        self.capacity = capacity
        self.sizes: list[int] = []
        self.seen: list[Tensor] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, batch: Tensor) -> Tensor:
        self.sizes.append(len(batch))
        if len(batch) > self.capacity:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.seen.append(batch.clone())
        self.started.set()
        self.release.wait(timeout=10)
        return self.fn(batch)


def doubled(batch: Tensor) -> Tensor:
    return batch * 2


@pytest.mark.parametrize("rows", [1, 5, 16, 33])
def test_oom_batch_is_split_in_halves(rows: int) -> None:
    fake = FakeGpu(doubled, capacity=4)
    batcher = Batcher({"op": Operation(fake, (3,))}, max_batch_size=64)
    x = torch.randn(rows, 3)

    async def run() -> Tensor:
        return (await batcher.submit("op", x))[0]

    try:
        assert torch.equal(asyncio.run(run()), x * 2)
    finally:
        batcher.close()
    assert sum(len(b) for b in fake.seen) == rows  # every row ran exactly once
    assert max(len(b) for b in fake.seen) <= 4


def test_oom_on_one_row_is_503_and_the_service_recovers(client: TestClient) -> None:
    runtime = client.app.state.repository.serving().runtime  # type: ignore[attr-defined]
    decode = runtime.batcher.operations["decode"]
    fake = FakeGpu(decode.fn, capacity=2)
    runtime.batcher.operations["decode"] = Operation(fake, decode.row_shape)
    z = [[i / 10, 0.0, -i / 10, 0.5] for i in range(7)]
    split = client.post("/decode", json={"z": z})  # 7 rows: run as 2 + 2 + 2 + 1
    assert split.status_code == 200 and len(split.json()["images"]) == 7
    fake.capacity = 0
    reply = client.post("/decode", json={"z": [Z]})
    assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
    assert "out of device memory" in reply.json()["detail"]
    fake.capacity = 64
    assert client.post("/decode", json={"z": z}).json() == split.json()


def test_oom_error_type() -> None:
    fake = FakeGpu(doubled, capacity=0)
    batcher = Batcher({"op": Operation(fake, (3,))})

    async def run() -> None:
        await batcher.submit("op", torch.zeros(4, 3))

    try:
        with pytest.raises(ModelOutOfMemory):
            asyncio.run(run())
    finally:
        batcher.close()
    assert fake.sizes == [4, 2, 1]  # halved down to one row, then given up


# --- timeouts and disconnects: the handler is cancelled, its queued rows dropped -------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def held_app(api_settings: Settings) -> AsyncIterator[tuple[FastAPI, FakeGpu]]:
    """The app, started, with a decode that can be held; a 0.5 s request timeout."""
    app = create_app(api_settings.model_copy(update={"request_timeout_s": 0.5}))
    async with LifespanManager(app):
        runtime = app.state.repository.serving().runtime
        decode = runtime.batcher.operations["decode"]
        fake = FakeGpu(decode.fn)
        runtime.batcher.operations["decode"] = Operation(fake, decode.row_shape)
        yield app, fake
        fake.release.set()


def rows_seen(fake: FakeGpu, value: float) -> int:
    return sum(int((batch[:, 0] == value).sum()) for batch in fake.seen)


def post_decode(client: httpx.AsyncClient, first: float) -> asyncio.Task[httpx.Response]:
    return asyncio.create_task(client.post("/decode", json={"z": [[first, 0, 0, 0]]}))


@asynccontextmanager
async def model_held(
    app: FastAPI, fake: FakeGpu
) -> AsyncIterator[tuple[httpx.AsyncClient, asyncio.Task[httpx.Response]]]:
    """A client, and its decode of z[0] = 1.0 that the model holds until ``fake.release``."""
    fake.release.clear()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        running = post_decode(client, 1.0)
        await asyncio.to_thread(fake.started.wait, 5)
        yield client, running


@pytest.mark.anyio
async def test_timeout_is_504_and_queued_work_is_dropped(
    held_app: tuple[FastAPI, FakeGpu],
) -> None:
    app, fake = held_app
    async with model_held(app, fake) as (client, running):
        queued = post_decode(client, 2.0)  # waits behind the held batch
        for reply in await asyncio.gather(running, queued):
            assert reply.status_code == 504
            assert "VAE_REQUEST_TIMEOUT_S" in reply.json()["detail"]
        fake.release.set()
        after = await client.post("/decode", json={"z": [[3.0, 0, 0, 0]]})
        assert after.status_code == 200
    assert rows_seen(fake, 1.0) == 1 and rows_seen(fake, 3.0) == 1
    assert rows_seen(fake, 2.0) == 0  # timed out while queued: never run


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("POST", "/decode", b'{"z": [[2.0, 0, 0, 0]]}'), ("GET", "/sample?n=1&prior=standard", b"")],
)
async def test_client_that_disconnects_leaves_nothing_behind(
    held_app: tuple[FastAPI, FakeGpu], method: str, path: str, body: bytes
) -> None:
    app, fake = held_app
    async with model_held(app, fake) as (client, running):
        left = asyncio.Event()
        sent: list[Message] = []
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> Message:
            if messages:
                return messages.pop()
            await left.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path.split("?")[0],
            "raw_path": path.split("?")[0].encode(),
            "query_string": path.partition("?")[2].encode(),
            "root_path": "",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1),
            "server": ("test", 80),
        }
        request = asyncio.create_task(app(scope, receive, send))
        await asyncio.sleep(0.05)
        assert app.state.repository.serving().runtime.batcher.queued_rows == 1
        left.set()
        await asyncio.wait_for(request, 1)  # ends at once, the worker still held
        assert (
            app.state.repository.serving().runtime.batcher.queued_rows == 1
        )  # dropped when reached
        assert sent == []  # nobody to answer
        fake.release.set()
        assert (await running).status_code == 200
        assert (await client.post("/decode", json={"z": [[3.0, 0, 0, 0]]})).status_code == 200
    assert rows_seen(fake, 2.0) == 0
    assert rows_seen(fake, 3.0) == 1
    assert len(fake.seen) == 2  # the held request and the last one: nothing of the leaver's
    labels = {"endpoint": path.split("?")[0], "method": method, "status": "499", "model": "tiny"}
    assert app.state.metrics.registry.get_sample_value("vae_http_requests_total", labels) == 1

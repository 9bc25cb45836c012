"""LoadShedder: a request that would wait past VAE_MAX_QUEUE_WAIT_MS gets 503 at once."""

from __future__ import annotations

import asyncio

from starlette.types import Message, Receive, Scope, Send

from vae_service.server.limits import LoadShedder


def scope(path: str = "/encode") -> Scope:
    return {"type": "http", "method": "POST", "path": path, "headers": []}


async def call(app: LoadShedder, path: str = "/encode") -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope(path), receive, send)
    return sent


def test_requests_over_the_limit_get_503_with_retry_after_at_once() -> None:
    release = asyncio.Event()

    async def held(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main() -> None:
        shedder = LoadShedder(held, max_wait_s=0.1)
        shedder.limit = 2  # as if measured: 20 requests/s x 0.1 s
        first = [asyncio.create_task(call(shedder)) for _ in range(2)]
        await asyncio.sleep(0)
        assert shedder.in_flight == 2
        # Answered without waiting for the held ones: the event is never set before.
        refused = await asyncio.wait_for(call(shedder), timeout=5)
        assert refused[0]["status"] == 503
        assert (b"retry-after", b"1") in refused[0]["headers"]
        assert shedder.refused == 1
        probe = asyncio.create_task(call(shedder, "/readyz"))  # probes always pass
        release.set()
        for answer in await asyncio.gather(*first, probe):
            assert answer[0]["status"] == 200
        assert shedder.in_flight == 0
        assert (await call(shedder))[0]["status"] == 200  # room again

    asyncio.run(main())


def test_limit_is_the_busy_rate_times_the_bound_and_idle_windows_say_nothing() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("not called")

    shedder = LoadShedder(app, max_wait_s=0.1)
    assert shedder.limit == float("inf")  # nothing measured: nothing refused
    start = shedder._window_start
    shedder._measure(start + 0.1)  # an idle window
    assert shedder.limit == float("inf")
    shedder.in_flight = 500  # busy from here on
    shedder._measure(start + 0.2)
    shedder._finished = 200  # 200 finished in 0.1 s: 2,000/s, so 200 may be in flight
    shedder._measure(start + 0.3)
    assert abs(shedder.limit - 200) < 1e-6
    shedder._finished = 10  # a slow window: never below the floor
    shedder._measure(start + 0.4)
    assert shedder.limit == LoadShedder.FLOOR


def test_zero_bound_never_refuses() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    shedder = LoadShedder(app, max_wait_s=0.0)
    shedder.limit = 0
    assert asyncio.run(call(shedder))[0]["status"] == 200

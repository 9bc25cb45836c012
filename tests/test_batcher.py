"""The dynamic batcher: right answers to the right callers, failure isolation, limits."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import Tensor

from vae_service.model import VAE
from vae_service.server.batch_jobs import (
    BatcherClosed,
    InvalidRows,
    Operation,
    Outputs,
    QueueFull,
    QueueTimeout,
)
from vae_service.server.batcher import Batcher


class Recorder:
    """Wraps a batch function: records each batch's rows; can hold the worker or fail."""

    def __init__(self, fn: Callable[[Tensor], Tensor | Outputs]) -> None:
        self.fn = fn
        self.batches: list[Tensor] = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()
        self.inference_mode: list[bool] = []

    def __call__(self, batch: Tensor) -> Tensor | Outputs:
        self.started.set()
        self.inference_mode.append(torch.is_inference_mode_enabled())
        self.release.wait(timeout=10)
        if torch.isnan(batch).any():
            raise RuntimeError("NaN in batch")
        self.batches.append(batch.clone())
        return self.fn(batch)


@pytest.fixture
def encode(tiny_model: VAE) -> Recorder:
    return Recorder(tiny_model.encode)


@pytest.fixture
def decode(tiny_model: VAE) -> Recorder:
    return Recorder(tiny_model.decode)


MakeBatcher = Callable[..., Batcher]


@pytest.fixture
def make_batcher(tiny_model: VAE, encode: Recorder, decode: Recorder) -> Iterator[MakeBatcher]:
    made: list[Batcher] = []
    cfg = tiny_model.cfg

    def make(**limits: Any) -> Batcher:
        ops = {
            "encode": Operation(encode, cfg.image_shape),
            "decode": Operation(decode, (cfg.latent_dim,)),
        }
        made.append(Batcher(ops, **limits))
        return made[-1]

    yield make
    encode.release.set()
    decode.release.set()
    for batcher in made:
        batcher.close()


def images(n: int, seed: int) -> Tensor:
    return torch.rand((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))


def test_concurrent_requests_get_their_own_answers(
    make_batcher: MakeBatcher, tiny_model: VAE, encode: Recorder
) -> None:
    batcher = make_batcher(max_batch_size=16, max_delay_s=0.005)
    inputs = [images(1 + i % 3, seed=i) for i in range(120)]
    latents = [
        torch.randn(1 + i % 2, 4, generator=torch.Generator().manual_seed(i)) for i in range(60)
    ]

    async def main() -> tuple[list[Outputs], list[Outputs]]:
        enc = [batcher.submit("encode", x) for x in inputs]
        dec = [batcher.submit("decode", z) for z in latents]
        return await asyncio.gather(*enc), await asyncio.gather(*dec)

    encoded, decoded = asyncio.run(main())
    with torch.inference_mode():
        for x, (mean, logvar) in zip(inputs, encoded, strict=True):
            want_mean, want_logvar = tiny_model.encode(x)
            torch.testing.assert_close(mean, want_mean, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(logvar, want_logvar, atol=1e-5, rtol=1e-4)
        for z, (image,) in zip(latents, decoded, strict=True):
            torch.testing.assert_close(image, tiny_model.decode(z), atol=1e-5, rtol=1e-4)
    assert max(len(b) for b in encode.batches) <= 16
    assert len(encode.batches) < len(inputs) / 4, "concurrent requests were not batched"


def test_bad_request_fails_alone(make_batcher: MakeBatcher, encode: Recorder) -> None:
    batcher = make_batcher(max_batch_size=64, max_delay_s=0.05)
    bad = images(2, seed=0)
    bad[1, 0, 3, 3] = float("nan")

    async def main() -> list[Outputs | BaseException]:
        futures = [batcher.submit("encode", images(1, seed=i)) for i in range(5)]
        futures.insert(2, batcher.submit("encode", bad))
        return await asyncio.gather(*futures, return_exceptions=True)

    answers = asyncio.run(main())
    assert isinstance(answers[2], RuntimeError) and "NaN" in str(answers[2])
    assert all(
        isinstance(a, tuple) and a[0].shape == (1, 4) for i, a in enumerate(answers) if i != 2
    )


def test_rows_of_the_wrong_shape_are_refused_before_queueing(make_batcher: MakeBatcher) -> None:
    batcher = make_batcher()

    async def main() -> None:
        with pytest.raises(InvalidRows, match="expected rows of shape"):
            batcher.submit("decode", torch.zeros(3, 5))
        with pytest.raises(InvalidRows, match="no rows"):
            batcher.submit("decode", torch.zeros(0, 4))
        with pytest.raises(InvalidRows, match="float32"):
            batcher.submit("decode", torch.zeros(1, 4, dtype=torch.int64))

    asyncio.run(main())
    assert batcher.queued_rows == 0


def test_full_queue_raises_queue_full(make_batcher: MakeBatcher, decode: Recorder) -> None:
    batcher = make_batcher(max_batch_size=4, max_delay_s=0, max_queue_rows=10)
    decode.release.clear()

    async def main() -> list[Outputs]:
        first = batcher.submit("decode", torch.zeros(4, 4))
        await asyncio.to_thread(decode.started.wait, 5)  # the worker holds the first batch
        queued = [batcher.submit("decode", torch.zeros(3, 4)) for _ in range(3)]
        with pytest.raises(QueueFull):
            batcher.submit("decode", torch.zeros(2, 4))
        decode.release.set()
        return await asyncio.gather(first, *queued)

    answers = asyncio.run(main())
    assert [a[0].shape[0] for a in answers] == [4, 3, 3, 3]


def test_zero_delay_answers_without_waiting(make_batcher: MakeBatcher, tiny_model: VAE) -> None:
    batcher = make_batcher(max_delay_s=0)
    z = torch.randn(3, 4)

    async def main() -> Outputs:
        return await asyncio.wait_for(batcher.submit("decode", z), timeout=5)

    (image,) = asyncio.run(main())
    with torch.inference_mode():
        torch.testing.assert_close(image, tiny_model.decode(z))


def test_oversize_request_is_split_and_joined_in_order(
    make_batcher: MakeBatcher, tiny_model: VAE, encode: Recorder
) -> None:
    batcher = make_batcher(max_batch_size=8, max_delay_s=0.01)
    big, small = images(21, seed=1), images(3, seed=2)

    async def main() -> list[Outputs]:
        return await asyncio.gather(batcher.submit("encode", big), batcher.submit("encode", small))

    (big_mean, _), (small_mean, _) = asyncio.run(main())
    assert max(len(b) for b in encode.batches) <= 8
    assert sum(len(b) for b in encode.batches) == 24
    with torch.inference_mode():
        torch.testing.assert_close(big_mean, tiny_model.encode(big)[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(small_mean, tiny_model.encode(small)[0], atol=1e-5, rtol=1e-4)


def test_cancelled_request_is_not_run(make_batcher: MakeBatcher, decode: Recorder) -> None:
    batcher = make_batcher(max_batch_size=4, max_delay_s=0)
    decode.release.clear()
    gone = torch.full((2, 4), 7.0)

    async def main() -> Outputs:
        first = batcher.submit("decode", torch.zeros(4, 4))
        await asyncio.to_thread(decode.started.wait, 5)
        batcher.submit("decode", gone).cancel()
        kept = batcher.submit("decode", torch.ones(1, 4))
        decode.release.set()
        await first
        return await kept

    (image,) = asyncio.run(main())
    assert image.shape == (1, 1, 28, 28)
    assert not any((b == 7.0).all(dim=1).any() for b in decode.batches)


def test_close_answers_every_queued_request(make_batcher: MakeBatcher, decode: Recorder) -> None:
    batcher = make_batcher(max_batch_size=2, max_delay_s=10.0)  # only close() can hurry them
    decode.release.clear()

    async def main() -> list[Outputs]:
        futures = [batcher.submit("decode", torch.randn(1 + i % 3, 4)) for i in range(9)]
        await asyncio.to_thread(decode.started.wait, 5)
        closing = asyncio.create_task(batcher.aclose())
        await asyncio.sleep(0.05)
        with pytest.raises(BatcherClosed):
            batcher.submit("decode", torch.zeros(1, 4))
        decode.release.set()
        answers = await asyncio.wait_for(asyncio.gather(*futures), timeout=10)
        await closing
        return answers

    answers = asyncio.run(main())
    assert [a[0].shape[0] for a in answers] == [1 + i % 3 for i in range(9)]


def test_batches_run_in_inference_mode(make_batcher: MakeBatcher, decode: Recorder) -> None:
    batcher = make_batcher(max_delay_s=0)

    async def main() -> Outputs:
        return await batcher.submit("decode", torch.zeros(2, 4))

    (image,) = asyncio.run(main())
    assert decode.inference_mode == [True] and image.is_inference()


def test_wait_starts_at_the_first_queued_request(
    make_batcher: MakeBatcher, decode: Recorder
) -> None:
    # Were the timer restarted by each arrival, the batch would run 1.5 s after the first;
    # the margins are wide so that a busy machine cannot blur 1.0 s into 1.5 s.
    batcher = make_batcher(max_batch_size=64, max_delay_s=1.0)

    async def main() -> float:
        started = time.monotonic()
        first = batcher.submit("decode", torch.zeros(1, 4))
        await asyncio.sleep(0.5)
        second = batcher.submit("decode", torch.ones(2, 4))
        await asyncio.gather(first, second)
        return time.monotonic() - started

    waited = asyncio.run(main())
    assert 0.99 <= waited < 1.4, waited
    assert [len(b) for b in decode.batches] == [3], "both requests belong in one batch"


def test_on_worker_runs_on_the_batch_thread_and_reports_errors(make_batcher: MakeBatcher) -> None:
    batcher = make_batcher(max_delay_s=0)
    threads: list[str] = []

    def broken() -> None:
        raise ValueError("warm-up failed")

    async def main() -> None:
        await batcher.submit("decode", torch.zeros(1, 4))
        done = await batcher.on_worker(lambda: threads.append(threading.current_thread().name))
        assert done == ()
        with pytest.raises(ValueError, match="warm-up failed"):
            await batcher.on_worker(broken)
        await batcher.aclose()
        with pytest.raises(BatcherClosed):
            batcher.on_worker(lambda: None)

    asyncio.run(main())
    assert threads == ["vae-batcher"]  # the thread that runs the batches


# --- scheduling policies: adaptive batches, round-robin, queue-wait shedding ----------


class Gate:
    """A batch function that holds each batch until the test lets exactly one through."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []  # the first value of each row, per batch
        self._cond = threading.Condition()
        self._entered = 0
        self._passes = 0

    def __call__(self, batch: Tensor) -> Tensor:
        with self._cond:
            self._entered += 1
            self._cond.notify_all()
            assert self._cond.wait_for(lambda: self._passes > 0, timeout=10), "never let through"
            self._passes -= 1
        self.batches.append(batch[:, 0].tolist())
        return batch * 2

    def wait_entered(self, n: int) -> None:
        """Block until the worker has started its n-th batch."""
        with self._cond:
            assert self._cond.wait_for(lambda: self._entered >= n, timeout=10)

    def let_through(self, n: int = 1) -> None:
        with self._cond:
            self._passes += n
            self._cond.notify_all()


@pytest.fixture
def gated() -> Iterator[tuple[Gate, Callable[..., Batcher]]]:
    gate, made = Gate(), []

    def make(**limits: Any) -> Batcher:
        made.append(Batcher({"double": Operation(gate, (2,))}, **limits))
        return made[-1]

    yield gate, make
    gate.let_through(1000)
    for batcher in made:
        batcher.close()


def rows(*values: float) -> Tensor:
    return torch.tensor([[v, 0.0] for v in values])


def test_adaptive_default_runs_an_idle_request_at_once(
    gated: tuple[Gate, Callable[..., Batcher]],
) -> None:
    gate, make = gated
    batcher = make()  # the defaults: no delay
    assert batcher.max_delay_s == 0
    gate.let_through(1)

    async def main() -> Outputs:
        # With any delay this would wait for company that never comes; 5 s is only a backstop.
        return await asyncio.wait_for(batcher.submit("double", rows(1)), timeout=5)

    (out,) = asyncio.run(main())
    assert out[:, 0].tolist() == [2.0] and gate.batches == [[1.0]]


def test_busy_model_takes_what_queued_as_the_next_batch(
    gated: tuple[Gate, Callable[..., Batcher]],
) -> None:
    gate, make = gated
    batcher = make(max_batch_size=4)

    async def main() -> list[Outputs]:
        first = batcher.submit("double", rows(0))
        await asyncio.to_thread(gate.wait_entered, 1)  # the model is busy with it
        queued = [batcher.submit("double", rows(i)) for i in range(1, 7)]
        gate.let_through(3)
        return await asyncio.gather(first, *queued)

    answers = asyncio.run(main())
    assert [a[0][0, 0].item() for a in answers] == [2.0 * i for i in range(7)]
    # Everything that queued while the first ran, up to the limit, then the rest.
    assert gate.batches == [[0.0], [1.0, 2.0, 3.0, 4.0], [5.0, 6.0]]


def test_large_request_is_interleaved_round_robin_with_small_ones(
    gated: tuple[Gate, Callable[..., Batcher]],
) -> None:
    gate, make = gated
    batcher = make(max_batch_size=4)
    batcher.SHORT_PASSES_S = 0.0  # full passes: this test is about the round-robin and room
    big = rows(*[10.0 + i for i in range(10)])

    async def main() -> list[Outputs]:
        first = batcher.submit("double", rows(0))
        await asyncio.to_thread(gate.wait_entered, 1)
        futures = [
            batcher.submit("double", big),
            batcher.submit("double", rows(1)),
            batcher.submit("double", rows(2, 2)),
        ]
        gate.let_through(1)
        await asyncio.to_thread(gate.wait_entered, 2)  # the big request's first slice runs
        futures.append(batcher.submit("double", rows(3)))  # arrives while it runs
        gate.let_through(100)
        return await asyncio.gather(first, *futures)

    answers = asyncio.run(main())
    assert gate.batches == [
        [0.0],
        [10.0, 11.0, 12.0, 1.0],  # others wait: the big request leaves them a quarter
        # of the batch, which the next small one takes; the big one goes to the back
        [2.0, 2.0, 13.0, 3.0],  # a small request is never split: it leads the next
        # batch; the big one leaves a row for the newcomer that queued behind it
        [14.0, 15.0, 16.0, 17.0],  # nobody else waits: the whole batch
        [18.0, 19.0],
    ]
    assert answers[1][0][:, 0].tolist() == [2.0 * (10 + i) for i in range(10)]  # joined in order


def big_beside_one_row(gate: Gate, batcher: Batcher) -> list[Outputs]:
    """While a single row runs: a 12-row request (10, 11, ...), then a single row (1)."""

    async def main() -> list[Outputs]:
        first = batcher.submit("double", rows(0))
        await asyncio.to_thread(gate.wait_entered, 1)
        futures = [
            batcher.submit("double", rows(*[10.0 + i for i in range(12)])),
            batcher.submit("double", rows(1)),
        ]
        gate.let_through(100)
        return await asyncio.gather(first, *futures)

    return asyncio.run(main())


def test_large_request_leaves_only_the_room_the_others_need(
    gated: tuple[Gate, Callable[..., Batcher]],
) -> None:
    gate, make = gated
    batcher = make(max_batch_size=8)
    batcher.SHORT_PASSES_S = 0.0  # full passes: this test is about the room left
    big_beside_one_row(gate, batcher)
    # One row waits besides it: the big request fills the other 7, and no room is lost.
    assert gate.batches == [
        [0.0],
        [*(10.0 + i for i in range(7)), 1.0],
        [17.0 + i for i in range(5)],
    ]


def test_while_small_requests_come_a_large_one_runs_in_short_passes(
    gated: tuple[Gate, Callable[..., Batcher]],
) -> None:
    gate, make = gated
    batcher = make(max_batch_size=8)
    batcher.SHORT_PASSES_S = 60.0  # "recently", however slow this machine is
    answers = big_beside_one_row(gate, batcher)
    # One slice of at most half a batch a pass, so no pass is long while small ones come.
    assert gate.batches == [
        [0.0],
        [10.0, 11.0, 12.0, 13.0, 1.0],
        [14.0, 15.0, 16.0, 17.0],
        [18.0, 19.0, 20.0, 21.0],
    ]
    assert answers[1][0][:, 0].tolist() == [2.0 * (10 + i) for i in range(12)]


def test_a_large_request_alone_runs_in_full_passes(
    gated: tuple[Gate, Callable[..., Batcher]],
) -> None:
    gate, make = gated
    batcher = make(max_batch_size=8)
    batcher.SHORT_PASSES_S = 60.0
    gate.let_through(100)

    async def main() -> Outputs:
        return await batcher.submit("double", rows(*[10.0 + i for i in range(12)]))

    asyncio.run(main())
    assert gate.batches == [[10.0 + i for i in range(8)], [18.0 + i for i in range(4)]]


def test_request_that_would_wait_past_the_bound_is_refused_at_once(
    gated: tuple[Gate, Callable[..., Batcher]],
) -> None:
    gate, make = gated
    batcher = make(max_batch_size=1, max_queue_wait_s=0.05)

    async def main() -> None:
        big = batcher.submit("double", rows(1, 2, 3))  # its first row runs at once
        await asyncio.to_thread(gate.wait_entered, 1)
        late = batcher.submit("double", rows(9))  # admitted: nobody has waited long yet
        await asyncio.sleep(0.1)  # twice the bound: any slowness only makes it later
        # The oldest request not yet started has waited past the bound, so a new one
        # would wait longer still: refused at once, not queued.
        with pytest.raises(QueueTimeout) as refused:
            batcher.submit("double", rows(5))
        assert refused.value.retry_after_s >= 1
        gate.let_through(100)
        with pytest.raises(QueueTimeout):  # reached past the bound: refused, not run
            await asyncio.wait_for(late, timeout=5)
        (out,) = await asyncio.wait_for(big, timeout=5)
        assert out[:, 0].tolist() == [2.0, 4.0, 6.0]  # a started request is finished
        # The queue drained: the model is idle, and a request is admitted again.
        (again,) = await asyncio.wait_for(batcher.submit("double", rows(6)), timeout=5)
        assert again[:, 0].tolist() == [12.0]

    asyncio.run(main())
    assert 9.0 not in [v for b in gate.batches for v in b]  # the refused request never ran
    assert batcher.shed == 2

"""Dynamic batching in the manner of Triton's dynamic batcher.

Requests for the same operation (encode, decode) queue up and run together in one
forward pass on ONE dedicated worker thread, so the event loop never blocks on torch:

- the batch limit counts rows (images or latents), not requests; a request with more
  rows than the limit is split into chunks of at most the limit, answered as one;
- the wait starts at the first queued request: the worker runs a batch as soon as it
  is full or the oldest request has waited ``max_delay_s`` (0 disables waiting);
- the queue is bounded in rows; ``submit`` raises ``QueueFull`` rather than grow it;
- shapes are checked per request before stacking, and a batch whose forward fails is
  retried one request at a time, so only the bad request fails;
- a forward pass that runs out of GPU memory is retried in halves, down to one row,
  whose OOM is ``ModelOutOfMemory`` (503); the service keeps running;
- cancelled requests (the client went away, or timed out) are dropped before they are run;
- ``close()`` stops new work and answers everything already queued;
- ``on_worker(fn)`` runs ``fn`` on the worker thread itself, between batches: CPU kernels
  are cached per thread, and the first pass of a shape on a new thread can differ from
  later ones in the last bit, so warming up elsewhere would break "same seed, same bytes".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor

logger = logging.getLogger("service")
Outputs = tuple[Tensor, ...]
# Runs on the worker thread on a stacked batch; every output has one row per input row.
BatchFn = Callable[[Tensor], Tensor | Outputs]
# Told (operation, rows) after each forward pass, on the worker thread: the metrics hook.
BatchHook = Callable[[str, int], None]


class BatcherUnavailable(Exception):
    """The batcher cannot take this request now; the service answers 503."""

    retry_after_s = 1


class QueueFull(BatcherUnavailable):
    """The bounded queue holds too many rows."""


class BatcherClosed(BatcherUnavailable):
    """The batcher is shutting down."""


class ModelOutOfMemory(BatcherUnavailable):
    """Even one row does not fit in the device's memory now."""


class InvalidRows(ValueError):
    """A request whose rows cannot be stacked with others for this operation."""


@dataclass(frozen=True)
class Operation:
    """One batchable model operation and the shape of one input row."""

    fn: BatchFn
    row_shape: tuple[int, ...]


@dataclass(eq=False)
class _Job:
    """One caller's request: its future, and the answers of its chunks so far."""

    future: asyncio.Future[Outputs]
    loop: asyncio.AbstractEventLoop
    pending: int
    answers: dict[int, Outputs] = field(default_factory=dict)
    error: BaseException | None = None

    def record(self, chunk: int, answer: Outputs | BaseException) -> bool:
        """Store one chunk's answer; True once every chunk has one."""
        if isinstance(answer, BaseException):
            self.error = self.error or answer
        else:
            self.answers[chunk] = answer
        self.pending -= 1
        return self.pending == 0

    def settle(self) -> None:
        """Resolve the future on its event loop (called there, via call_soon_threadsafe)."""
        if self.future.done():  # cancelled while its last chunk ran
            return
        if self.error is not None:
            self.future.set_exception(self.error)
            return
        parts = [self.answers[i] for i in range(len(self.answers))]
        if len(parts) == 1:
            outputs = parts[0]
        else:  # a split request: join its chunks' answers, output by output
            outputs = tuple(torch.cat(o) for o in zip(*parts, strict=True))
        self.future.set_result(outputs)


@dataclass(eq=False)
class _Chunk:
    job: _Job
    index: int
    rows: Tensor
    queued_at: float


class Batcher:
    """Queues per operation and one worker thread that runs them as batches."""

    def __init__(
        self,
        operations: dict[str, Operation],
        max_batch_size: int = 64,
        max_delay_s: float = 0.002,
        max_queue_rows: int = 4096,
    ) -> None:
        if max_batch_size < 1 or max_delay_s < 0 or max_queue_rows < 1:
            raise ValueError("max_batch_size and max_queue_rows must be >= 1, max_delay_s >= 0")
        self.operations = operations
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_rows = max_queue_rows
        self._queues: dict[str, deque[_Chunk]] = {op: deque() for op in operations}
        self._queued_rows = dict.fromkeys(operations, 0)
        self._cond = threading.Condition()
        self._closing = False
        self._calls: deque[tuple[Callable[[], None], _Job]] = deque()
        # Counters for metrics and tests: forward passes run, and rows they carried.
        self.batches_run = 0
        self.rows_run = 0
        self.on_batch: BatchHook | None = None
        self._worker = threading.Thread(target=self._run, name="vae-batcher", daemon=True)
        self._worker.start()

    @property
    def queued_rows(self) -> int:
        return sum(self._queued_rows.values())

    def submit(self, op: str, rows: Tensor) -> asyncio.Future[Outputs]:
        """Queue ``rows`` for ``op``; the future gives the op's outputs for exactly these rows.

        Must be called on the event loop that will await the future. Raises
        ``InvalidRows``, ``KeyError`` (unknown op), ``QueueFull`` or ``BatcherClosed``.
        """
        self._check_rows(op, rows)
        loop = asyncio.get_running_loop()
        # Most requests fit in one batch; torch.split costs more than the rest of submit.
        chunks = (rows,) if len(rows) <= self.max_batch_size else rows.split(self.max_batch_size)
        job = _Job(loop.create_future(), loop, pending=len(chunks))
        now = time.monotonic()
        with self._cond:
            self._admit(len(rows))
            self._queues[op].extend(_Chunk(job, i, c, now) for i, c in enumerate(chunks))
            self._queued_rows[op] += len(rows)
            self._cond.notify()
        return job.future

    def on_worker(self, fn: Callable[[], None]) -> asyncio.Future[Outputs]:
        """Run ``fn`` on the worker thread before the next batch; the future gives ``()``
        or ``fn``'s exception."""
        loop = asyncio.get_running_loop()
        job = _Job(loop.create_future(), loop, pending=1)
        with self._cond:
            if self._closing:
                raise BatcherClosed("the service is shutting down")
            self._calls.append((fn, job))
            self._cond.notify()
        return job.future

    def close(self) -> None:
        """Refuse new requests, answer every queued one, then stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._worker.join()

    async def aclose(self) -> None:
        """``close()`` without blocking the event loop that the answers are delivered on."""
        await asyncio.to_thread(self.close)

    def _check_rows(self, op: str, rows: Tensor) -> None:
        expected = self.operations[op].row_shape
        if rows.ndim != len(expected) + 1 or tuple(rows.shape[1:]) != expected:
            raise InvalidRows(f"{op}: expected rows of shape {expected}, got {tuple(rows.shape)}")
        if len(rows) == 0:
            raise InvalidRows(f"{op}: no rows")
        if rows.dtype != torch.float32:  # stacking mixed dtypes would promote the whole batch
            raise InvalidRows(f"{op}: expected float32 rows, got {rows.dtype}")

    def _admit(self, n_rows: int) -> None:
        if self._closing:
            raise BatcherClosed("the service is shutting down")
        # An empty queue admits any request, so that no request is refused forever.
        queued = self.queued_rows
        if queued and queued + n_rows > self.max_queue_rows:
            raise QueueFull(f"{queued} rows queued; the limit is {self.max_queue_rows}")

    def _run(self) -> None:
        with torch.inference_mode():
            while (work := self._next_work()) is not None:
                work()

    def _call(self, fn: Callable[[], None], job: _Job) -> None:
        try:
            fn()
            answer: Outputs | BaseException = ()
        except Exception as exc:
            answer = exc
        if job.record(0, answer):
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits
                job.loop.call_soon_threadsafe(job.settle)

    def _next_work(self) -> Callable[[], None] | None:
        """Block until a call or one operation's batch is due; None once closed and drained."""
        with self._cond:
            while True:
                if self._calls:
                    return partial(self._call, *self._calls.popleft())
                op = self._oldest_op()
                if op is None:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                wait = self._queues[op][0].queued_at + self.max_delay_s - time.monotonic()
                full = self._queued_rows[op] >= self.max_batch_size
                if full or wait <= 0 or self._closing:
                    return partial(self._execute, op, self._take(op))
                self._cond.wait(wait)

    def _oldest_op(self) -> str | None:
        # Serve operations in order of their oldest request, so none starves.
        waiting = [(q[0].queued_at, op) for op, q in self._queues.items() if q]
        return min(waiting)[1] if waiting else None

    def _take(self, op: str) -> list[_Chunk]:
        """Pop queued chunks of ``op`` up to the batch limit, dropping cancelled ones."""
        queue, taken, total = self._queues[op], [], 0
        while queue and total + len(queue[0].rows) <= self.max_batch_size:
            chunk = queue.popleft()
            self._queued_rows[op] -= len(chunk.rows)
            if not chunk.job.future.cancelled():
                taken.append(chunk)
                total += len(chunk.rows)
        return taken

    def _execute(self, op: str, chunks: Sequence[_Chunk]) -> None:
        if not chunks:
            return
        fn = self.operations[op].fn
        try:
            outputs = _forward(fn, [c.rows for c in chunks])
        except Exception as exc:
            if len(chunks) == 1 or isinstance(exc, ModelOutOfMemory):
                self._deliver([(chunks[0], exc)])
            else:  # find the culprit: each request alone, so only it fails
                for chunk in chunks:
                    self._execute(op, [chunk])
            return
        rows = sum(len(c.rows) for c in chunks)
        self.batches_run += 1
        self.rows_run += rows
        if self.on_batch is not None:
            self.on_batch(op, rows)
        self._deliver(list(zip(chunks, _slice(outputs, chunks), strict=True)))

    def _deliver(self, answers: list[tuple[_Chunk, Outputs | BaseException]]) -> None:
        # One wake-up per event loop per batch, not one per request.
        done: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        for chunk, answer in answers:
            if chunk.job.record(chunk.index, answer):
                done.setdefault(chunk.job.loop, []).append(chunk.job)
        for loop, jobs in done.items():
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits
                loop.call_soon_threadsafe(_settle_all, jobs)


def _forward(fn: BatchFn, inputs: list[Tensor]) -> Outputs:
    batch = inputs[0] if len(inputs) == 1 else torch.cat(inputs)
    outputs = _run_splitting(fn, batch)
    if any(len(o) != len(batch) for o in outputs):
        raise RuntimeError(
            f"batch function returned {[len(o) for o in outputs]} rows for {len(batch)}"
        )
    return outputs


def _run_splitting(fn: BatchFn, batch: Tensor) -> Outputs:
    """``fn(batch)``; on out-of-memory, each half on its own (recursively)."""
    try:
        out = fn(batch)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()  # give the failed pass's blocks back before retrying
        logger.warning("out of device memory on a batch of %d rows; retrying in halves", len(batch))
        if len(batch) == 1:
            raise ModelOutOfMemory("out of device memory; try fewer images") from None
        halves = [_run_splitting(fn, half) for half in batch.split((len(batch) + 1) // 2)]
        return tuple(torch.cat(parts) for parts in zip(*halves, strict=True))
    return out if isinstance(out, tuple) else (out,)


def _slice(outputs: Outputs, chunks: Sequence[_Chunk]) -> list[Outputs]:
    sliced, start = [], 0
    for chunk in chunks:
        end = start + len(chunk.rows)
        sliced.append(tuple(o[start:end] for o in outputs))
        start = end
    return sliced


def _settle_all(jobs: list[_Job]) -> None:
    for job in jobs:
        job.settle()

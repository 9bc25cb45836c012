"""Dynamic batching in the manner of Triton's dynamic batcher, scheduled fairly.

Requests for the same operation (encode, decode) queue up and run together in one
forward pass on ONE dedicated worker thread, so the event loop never blocks on torch:

- adaptive by default: when the model is idle a request runs at once; while it is busy,
  requests queue, and the next batch takes what has queued, up to the limit. An optional
  delay (``max_delay_s``, from the oldest queued request) waits for fuller batches;
- the batch limit counts rows (images or latents), not requests; an operation may lower
  it for large rows (``Operation.fits``: diffusers' VAEs count pixels). Requests are served
  round-robin: a batch takes queued requests in turn, and a request with more rows than
  fit gives a slice (leaving room for the rows others have queued, up to a quarter of a
  batch) and goes to the back of the queue, so one large request cannot hold the model
  for its whole length; a request that fits in one batch is never split. While requests
  that fit keep coming (one in the last ``SHORT_PASSES_S``), a split request gives one
  slice of at most half a batch per pass: a small request then waits for a short pass,
  not a full one;
- the queue is bounded in rows (``QueueFull``) and, optionally, in waiting time
  (``max_queue_wait_s``, like Triton's queue policy with a timeout and a reject action):
  while the oldest request not yet started has waited longer than the bound, a new one
  would wait longer still, so it is refused at once (``QueueTimeout``); a request still
  unstarted past the bound is refused when it is reached, not run;
- shapes are checked per request before stacking, and a batch whose forward fails is
  retried one slice at a time, so only the bad request fails;
- a forward pass that runs out of GPU memory is retried in halves, down to one row,
  whose OOM is ``ModelOutOfMemory`` (503); the service keeps running;
- cancelled requests (the client went away, or timed out) are dropped when reached;
- ``close()`` stops new work and answers everything already queued;
- ``on_worker(fn)`` runs ``fn`` on the worker thread itself, between batches: CPU kernels
  are cached per thread, and the first pass of a shape on a new thread can differ from
  later ones in the last bit, so warming up elsewhere would break "same seed, same bytes".
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor

from vae_service.server.batch_jobs import (
    BatcherClosed,
    BatchHook,
    InvalidRows,
    Job,
    ModelOutOfMemory,
    Operation,
    Outputs,
    QueueFull,
    QueueTimeout,
    Slice,
    forward,
    settle_all,
)


class Batcher:
    """Queues per operation and one worker thread that runs them as batches."""

    # Measured with a 1,024-image client beside 8 single-image ones (BENCHMARKS.md, "Short
    # passes"): half-batch slices kept the small ones' p50 within 1.8-2.6x of alone and
    # the big client at 72-75% of its speed; quarter-batch ones, 1.3-1.5x and 57-59%.
    SHORT_PASSES_S = 0.05

    def __init__(
        self,
        operations: dict[str, Operation],
        max_batch_size: int = 64,
        max_delay_s: float = 0.0,
        max_queue_rows: int = 4096,
        max_queue_wait_s: float = 0.0,
    ) -> None:
        if max_batch_size < 1 or max_delay_s < 0 or max_queue_rows < 1 or max_queue_wait_s < 0:
            raise ValueError(
                "max_batch_size and max_queue_rows must be >= 1, "
                "max_delay_s and max_queue_wait_s >= 0"
            )
        self.operations = operations
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_rows = max_queue_rows
        self.max_queue_wait_s = max_queue_wait_s  # 0: no bound
        self._queues: dict[str, deque[Job]] = {op: deque() for op in operations}
        self.queued_rows = 0  # rows not yet taken, cancelled ones included until reached
        self._unstarted: deque[Job] = deque()  # in arrival order; started ones leave lazily
        self._cond = threading.Condition()
        self._closing = False
        self._calls: deque[tuple[Callable[[], None], Job]] = deque()
        self._fitting_at = -math.inf  # when the last request that fits in a batch came
        # Counters for metrics and tests: forward passes run, rows they carried, refusals.
        self.batches_run = 0
        self.rows_run = 0
        self.shed = 0
        self.on_batch: BatchHook | None = None
        self._worker = threading.Thread(target=self._run, name="vae-batcher", daemon=True)
        self._worker.start()

    def submit(self, op: str, rows: Tensor) -> asyncio.Future[Outputs]:
        """Queue ``rows`` for ``op``; the future gives the op's outputs for exactly these rows.

        Must be called on the event loop that will await the future. Raises
        ``InvalidRows``, ``KeyError`` (unknown op), ``QueueFull``, ``QueueTimeout`` or
        ``BatcherClosed``.
        """
        self._check_rows(op, rows)
        loop = asyncio.get_running_loop()
        job = Job(loop.create_future(), loop, rows, time.monotonic(), self._limit(op, rows))
        with self._cond:
            self._admit(len(rows))
            if len(rows) <= job.limit:
                self._fitting_at = job.queued_at
            self._queues[op].append(job)
            self.queued_rows += len(rows)
            if self.max_queue_wait_s:
                self._unstarted.append(job)
            self._cond.notify()
        return job.future

    def on_worker(self, fn: Callable[[], None]) -> asyncio.Future[Outputs]:
        """Run ``fn`` on the worker thread before the next batch; the future gives ``()``
        or ``fn``'s exception."""
        loop = asyncio.get_running_loop()
        job = Job(loop.create_future(), loop, torch.empty(0), time.monotonic(), running=1)
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
        if expected is not None and (
            rows.ndim != len(expected) + 1 or tuple(rows.shape[1:]) != expected
        ):
            raise InvalidRows(f"{op}: expected rows of shape {expected}, got {tuple(rows.shape)}")
        if len(rows) == 0:
            raise InvalidRows(f"{op}: no rows")
        if rows.dtype != torch.float32:  # stacking mixed dtypes would promote the whole batch
            raise InvalidRows(f"{op}: expected float32 rows, got {rows.dtype}")

    def _limit(self, op: str, rows: Tensor) -> int:
        fits = self.operations[op].fits
        return self.max_batch_size if fits is None else max(1, min(self.max_batch_size, fits(rows)))

    def _admit(self, n_rows: int) -> None:
        if self._closing:
            raise BatcherClosed("the service is shutting down")
        # An empty queue admits any request, so that no request is refused forever.
        queued = self.queued_rows
        if not queued:
            return
        if queued + n_rows > self.max_queue_rows:
            raise QueueFull(f"{queued} rows queued; the limit is {self.max_queue_rows}")
        if self.max_queue_wait_s:
            waiting = self._unstarted
            while waiting and (waiting[0].taken or waiting[0].error or waiting[0].future.done()):
                waiting.popleft()
            waited = time.monotonic() - waiting[0].queued_at if waiting else 0.0
            if waited > self.max_queue_wait_s:
                self.shed += 1
                raise QueueTimeout(
                    f"requests wait over {1000 * waited:.0f} ms for the model; "
                    f"the limit is {1000 * self.max_queue_wait_s:g} ms"
                )

    def _run(self) -> None:
        with torch.inference_mode():
            while (work := self._next_work()) is not None:
                work()

    def _call(self, fn: Callable[[], None], job: Job) -> None:
        try:
            fn()
            answer: Outputs | BaseException = ()
        except Exception as exc:
            answer = exc
        if job.record(answer):
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
                    self._unstarted.clear()
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                now = time.monotonic()
                wait = self._queues[op][0].queued_at + self.max_delay_s - now
                if wait <= 0 or self._closing or self._full(op):
                    return partial(self._execute, op, self._take(op, now))
                self._cond.wait(wait)

    def _full(self, op: str) -> bool:
        total, queue = 0, self._queues[op]
        for job in queue:
            total += job.left
            if total >= queue[0].limit:
                return True
        return False

    def _oldest_op(self) -> str | None:
        # Serve operations in order of their oldest request, so none starves.
        waiting = [(q[0].queued_at, op) for op, q in self._queues.items() if q]
        return min(waiting)[1] if waiting else None

    def _take(self, op: str, now: float) -> list[Slice]:
        """Pop the next batch of ``op``, round-robin between requests, up to the limit.

        Cancelled requests are dropped, and so are requests not yet started that have
        waited past the queue-wait bound (refused with ``QueueTimeout``)."""
        queue, used = self._queues[op], 0
        taken: list[Slice] = []
        late = self.max_queue_wait_s and now - self.max_queue_wait_s
        short = now - self._fitting_at < self.SHORT_PASSES_S
        # Every row taken has one shape, so one limit: the first taken request's.
        while queue and (room := queue[0].limit - used) > 0:
            job = queue[0]
            if job.left <= job.limit and job.left > room:
                break  # a request that fits in a batch is not split: it leads the next one
            if short and any(j is job for j, _ in taken):
                break  # short passes: one slice of a split request a batch
            if taken and job.rows.shape[1:] != taken[0][1].shape[1:]:
                break  # rows of another shape cannot be stacked: it leads the next batch
            queue.popleft()
            if job.future.cancelled() or job.error is not None:
                self.queued_rows -= job.left
                continue
            if late and job.taken == 0 and job.queued_at < late and not self._closing:
                self.queued_rows -= job.left
                self.shed += 1
                job.error = QueueTimeout(
                    f"waited {1000 * (now - job.queued_at):.0f} ms for the model; "
                    f"the limit is {1000 * self.max_queue_wait_s:g} ms"
                )
                with contextlib.suppress(RuntimeError):  # that loop has closed
                    job.loop.call_soon_threadsafe(job.settle)
                continue
            n = min(job.left, room)
            if n < job.left and queue:  # others wait: leave room for them in this batch
                n = max(1, n - self._reserve(queue, job.limit))
            if short and len(job.rows) > job.limit:
                n = min(n, max(1, job.limit // 2))
            taken.append((job, job.rows[job.taken : job.taken + n]))
            job.taken += n
            job.running += 1
            used += n
            self.queued_rows -= n
            if job.left:
                queue.append(job)  # round-robin: the rest waits its turn behind the others
        return taken

    def _reserve(self, others: deque[Job], limit: int) -> int:
        """Rows of a batch a large request leaves to the others waiting: what they have
        queued, up to a quarter of a batch. Reserving a fixed quarter left batches short
        while only a few single rows waited (the large client kept 62% of its speed)."""
        quarter, need = limit // 4, 0
        for job in others:
            need += job.left
            if need >= quarter:
                return quarter
        return need

    def _execute(self, op: str, batch: Sequence[Slice]) -> None:
        if not batch:
            return
        fn = self.operations[op].fn
        try:
            outputs = forward(fn, [rows for _, rows in batch])
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, ModelOutOfMemory):
                self._deliver([(batch[0][0], exc)])
            else:  # find the culprit: each slice alone, so only its request fails
                for one in batch:
                    self._execute(op, [one])
            return
        total = sum(len(rows) for _, rows in batch)
        self.batches_run += 1
        self.rows_run += total
        if self.on_batch is not None:
            self.on_batch(op, total)
        answers: list[tuple[Job, Outputs | BaseException]] = []
        start = 0
        for job, rows in batch:
            end = start + len(rows)
            answers.append((job, tuple(o[start:end] for o in outputs)))
            start = end
        self._deliver(answers)

    def _deliver(self, answers: list[tuple[Job, Outputs | BaseException]]) -> None:
        # One wake-up per event loop per batch, not one per request.
        done: dict[asyncio.AbstractEventLoop, list[Job]] = {}
        for job, answer in answers:
            if job.record(answer):
                done.setdefault(job.loop, []).append(job)
        for loop, jobs in done.items():
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits
                loop.call_soon_threadsafe(settle_all, jobs)

"""What the batcher queues and runs: one caller's job, the operations it batches, the
errors it answers with, and the forward pass that splits a batch on out-of-memory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

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


class QueueTimeout(BatcherUnavailable):
    """The request would wait (or has waited) longer than the queue-wait bound."""


class BatcherClosed(BatcherUnavailable):
    """The batcher is shutting down."""


class ModelOutOfMemory(BatcherUnavailable):
    """Even one row does not fit in the device's memory now."""


class InvalidRows(ValueError):
    """A request whose rows cannot be stacked with others for this operation."""


# How many rows shaped like these one forward pass may hold (diffusers' VAEs: by pixels).
RowsPerBatch = Callable[[Tensor], int]


@dataclass(frozen=True)
class Operation:
    """One batchable model operation and the shape of one input row; None: any shape
    (diffusers' VAEs take any image size), and a batch only stacks rows of one shape.
    ``fits``, where given, lowers the batcher's row limit for large rows."""

    fn: BatchFn
    row_shape: tuple[int, ...] | None
    fits: RowsPerBatch | None = None


@dataclass(eq=False)
class Job:
    """One caller's request: its rows, how far the worker has taken them, its answers."""

    future: asyncio.Future[Outputs]
    loop: asyncio.AbstractEventLoop
    rows: Tensor
    queued_at: float
    limit: int = 1  # rows of this request's shape one batch may hold
    taken: int = 0  # rows handed to batches so far, in order
    running: int = 0  # slices taken and not yet answered
    parts: list[Outputs] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def left(self) -> int:
        return len(self.rows) - self.taken

    def record(self, answer: Outputs | BaseException) -> bool:
        """On the worker: store one slice's answer; True once the job can be settled."""
        self.running -= 1
        if isinstance(answer, BaseException):
            self.error = self.error or answer
        else:
            self.parts.append(answer)
        return self.running == 0 and (self.error is not None or self.left == 0)

    def settle(self) -> None:
        """Resolve the future on its event loop (called there, via call_soon_threadsafe)."""
        if self.future.done():  # cancelled while its last slice ran
            return
        if self.error is not None:
            self.future.set_exception(self.error)
        elif len(self.parts) == 1:
            self.future.set_result(self.parts[0])
        else:  # a sliced request: join its slices' answers, output by output
            self.future.set_result(tuple(torch.cat(o) for o in zip(*self.parts, strict=True)))


# One slice of a job in a batch: the job and its rows.
Slice = tuple[Job, Tensor]


def forward(fn: BatchFn, inputs: list[Tensor]) -> Outputs:
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


def settle_all(jobs: list[Job]) -> None:
    for job in jobs:
        job.settle()

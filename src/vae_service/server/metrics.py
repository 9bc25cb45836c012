"""The service's Prometheus metrics, every one labelled with the model it concerns
(``model``; empty for requests that reach no model, such as /healthz).

With several worker processes (``vae-serve --workers N``) the metrics are Prometheus
multiprocess metrics: each worker writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (set by vae-serve before the workers start), and /metrics,
whichever worker answers, reads them all: counters and histograms are summed over every
worker that ever ran, the queue depth over the live workers, load and warm-up times are
the slowest live worker's. Multiprocess mode has no ``set_function`` gauges and no Info
metrics, so there the queue depth is set by a thread every ``QUEUE_REFRESH_S`` (and by
the answering worker at each scrape), and ``vae_model_info`` is the answering worker's.
"""

from __future__ import annotations

import glob
import os
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
    multiprocess,
)

from vae_service.model import Checkpoint

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
QUEUE_REFRESH_S = 0.5  # how stale another worker's queue depth may be on /metrics


def multiprocess_dir() -> str | None:
    """The folder of the multiprocess metric files, when this process writes them."""
    return os.environ.get(MULTIPROC_DIR) or None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_workers(path: str) -> None:
    """Drop the live-gauge files of workers that are gone (a worker that crashed and was
    replaced), so that their last queue depth is not added to the live ones'."""
    pids = {
        Path(f).stem.rsplit("_", 1)[-1] for f in glob.glob(os.path.join(path, "gauge_live*_*.db"))
    }
    for pid in pids:
        if pid.isdigit() and not alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), path)


class Metrics:
    """The metrics, in a registry of their own (one per app, so several apps in one
    process, as in tests, do not collide)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "vae_http_requests",
            "Requests answered, by route template, method, status and model",
            ["endpoint", "method", "status", "model"],
            registry=registry,
        )
        self.latency = Histogram(
            "vae_http_request_duration_seconds",
            "Time from request to answer, by route template and model",
            ["endpoint", "model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_rows = Histogram(
            "vae_batch_size",
            "Rows (images or latents) per forward pass, by model and operation",
            ["model", "operation"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        # multiprocess_mode only matters with several workers (see the module docstring).
        self.queue_rows = Gauge(
            "vae_queue_rows", "Rows waiting for the model", ["model"], registry=registry,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.load_seconds = Gauge(
            "vae_model_load_seconds", "Time to read and check the weights", ["model"],
            registry=registry, multiprocess_mode="livemax",
        )  # fmt: skip
        self.warmup_seconds = Gauge(
            "vae_model_warmup_seconds", "Time to warm the model up", ["model"],
            registry=registry, multiprocess_mode="livemax",
        )  # fmt: skip
        self.model = Info("vae_model", "The weights being served", ["model"], registry=registry)
        self.loads = Counter(
            "vae_model_loads",
            "Attempts to load a weights file, by model and outcome (success, failure)",
            ["model", "outcome"],
            registry=registry,
        )
        self.swaps = Counter(
            "vae_model_swaps", "New versions swapped in while serving", ["model"],
            registry=registry,
        )  # fmt: skip
        self.unloads = Counter(
            "vae_model_unloads", "Models drained and unloaded", ["model"], registry=registry
        )
        self._children: dict[tuple[str, str, int, str], tuple[Any, Any]] = {}
        self.multiprocess_dir = multiprocess_dir()
        self._queues: dict[str, Callable[[], float]] = {}  # multiprocess: model -> depth
        self._queues_lock = threading.Lock()
        self._refresher: threading.Thread | None = None
        self._scrape_registry: CollectorRegistry | None = None  # multiprocess: at first use

    def exposition(self) -> bytes:
        """The Prometheus text for /metrics: this process's metrics, or with several
        workers every worker's, merged."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        if self._scrape_registry is None:  # the folder exists once a worker serves
            self._scrape_registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self._scrape_registry, self.multiprocess_dir)
            self._scrape_registry.register(self.model)  # this worker's, not in the files
        forget_dead_workers(self.multiprocess_dir)
        self.refresh_queues()
        return generate_latest(self._scrape_registry)

    def refresh_queues(self) -> None:
        """Multiprocess mode: write each model's queue depth to this worker's file."""
        with self._queues_lock:
            for name, queued in self._queues.items():
                self.queue_rows.labels(name).set(queued())

    def _refresh_forever(self) -> None:
        while True:
            time.sleep(QUEUE_REFRESH_S)
            try:
                self.refresh_queues()
            except Exception:  # never let a metrics thread die
                continue

    def observe_request(
        self, endpoint: str, method: str, status: int, model: str, seconds: float
    ) -> None:
        key = (endpoint, method, status, model)
        children = self._children.get(key)
        if children is None:  # labels() takes a lock and builds a tuple: once per series
            children = (
                self.requests.labels(endpoint, method, str(status), model),
                self.latency.labels(endpoint, model),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def batch_hook(self, model: str) -> Callable[[str, int], None]:
        """The batcher's per-batch callback for ``model``."""
        children = {op: self.batch_rows.labels(model, op) for op in ("encode", "decode")}

        def observe(operation: str, rows: int) -> None:
            # diffusers models add their tiled operations, labelled when first run.
            child = children.get(operation)
            if child is None:
                child = children[operation] = self.batch_rows.labels(model, operation)
            child.observe(rows)

        return observe

    def describe_model(self, name: str, info: dict[str, str], queued: Callable[[], float]) -> None:
        """The version now serving ``name``: its identity (``info``) and its queue depth."""
        self.model.labels(name).info(info)
        if self.multiprocess_dir is None:
            self.queue_rows.labels(name).set_function(queued)
            return
        with self._queues_lock:
            self._queues[name] = queued
        self.refresh_queues()
        if self._refresher is None:
            self._refresher = threading.Thread(
                target=self._refresh_forever, name="queue-metrics", daemon=True
            )
            self._refresher.start()

    def forget_model(self, name: str) -> None:
        """Drop an unloaded model's per-version series (its counters stay). With several
        workers the files keep every series: its queue depth is set to 0 instead."""
        if self.multiprocess_dir is not None:
            with self._queues_lock:
                self._queues.pop(name, None)
                self.queue_rows.labels(name).set(0)
            with warnings.catch_warnings():  # "not implemented in multi-process mode":
                warnings.simplefilter("ignore")  # the Info lives in this process only
                self.model.remove(name)
            return
        for metric in (self.queue_rows, self.load_seconds, self.warmup_seconds, self.model):
            metric.remove(name)
        for operation in ("encode", "decode"):
            self.batch_rows.remove(name, operation)


def checkpoint_info(checkpoint: Checkpoint, device: str) -> dict[str, str]:
    """One of our own weights files, as the model-info metric labels it."""
    cfg = checkpoint.config
    return {
        "name": Path(checkpoint.path).name,
        "sha256": checkpoint.sha256,
        "device": device,
        "latent_dim": str(cfg.latent_dim),
        "image_size": str(cfg.image_size),
        "channels": str(cfg.channels),
    }

"""The service's Prometheus metrics, every one labelled with the model it concerns
(``model``; empty for requests that reach no model, such as /healthz)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from model import Checkpoint

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


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
        self.queue_rows = Gauge(
            "vae_queue_rows", "Rows waiting for the model", ["model"], registry=registry
        )
        self.load_seconds = Gauge(
            "vae_model_load_seconds", "Time to read and check the weights", ["model"],
            registry=registry,
        )  # fmt: skip
        self.warmup_seconds = Gauge(
            "vae_model_warmup_seconds", "Time to warm the model up", ["model"], registry=registry
        )
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
        return lambda operation, rows: children[operation].observe(rows)

    def describe_model(
        self, name: str, checkpoint: Checkpoint, device: str, queued: Callable[[], float]
    ) -> None:
        """The version now serving ``name``: its identity and its queue depth."""
        cfg = checkpoint.config
        self.model.labels(name).info(
            {
                "name": Path(checkpoint.path).name,
                "sha256": checkpoint.sha256,
                "device": device,
                "latent_dim": str(cfg.latent_dim),
                "image_size": str(cfg.image_size),
                "channels": str(cfg.channels),
            }
        )
        self.queue_rows.labels(name).set_function(queued)

    def forget_model(self, name: str) -> None:
        """Drop an unloaded model's per-version series (its counters stay)."""
        for metric in (self.queue_rows, self.load_seconds, self.warmup_seconds, self.model):
            metric.remove(name)
        for operation in ("encode", "decode"):
            self.batch_rows.remove(name, operation)

"""What runs a model's forward passes: torch or onnxruntime (``VAE_BACKEND``; the default,
``auto``, is onnxruntime on the CPU when the ``onnx`` extra is installed, else torch).

Both take a CPU float32 batch (images N x C x H x W, or latents N x latent_dim) on the
batcher's thread and return tensors: ``encode`` -> (mean, logvar), ``decode`` ->
(images,). The runtime wraps them as it always did (device copy, ``run_guarded``), so
the batcher's contract does not change.

onnxruntime is chosen per model, at load: the model's ONNX graphs come from
``VAE_ONNX_CACHE_DIR/<sha256 of the weights>/`` (``vae-export``'s layout), exported
there first if they are missing or changed, and every load checks them against torch on
random input before the model serves. onnxruntime runs on the CPU only.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from vae_service.model import VAE, Checkpoint
from vae_service.model.onnx_export import (
    INSTALL_HINT,
    ExportError,
    OnnxExport,
    cached_export,
    check_export,
)
from vae_service.server.settings import BackendChoice, BackendName

Outputs = tuple[Tensor, ...]
logger = logging.getLogger("service")
LOAD_CHECK_BATCHES = (1, 3)  # at every load: cheap, and catches a stale or altered graph


class BackendError(Exception):
    """A backend this model or machine cannot run; the message says what to change."""


class Backend(Protocol):
    name: BackendName

    def encode(self, images: Tensor) -> Outputs: ...

    def decode(self, z: Tensor) -> Outputs: ...


class TorchBackend:
    """The checkpoint's own nn.Module, on its device."""

    name: BackendName = "torch"

    def __init__(self, model: VAE) -> None:
        self.model = model

    def encode(self, images: Tensor) -> Outputs:
        return self.model.encode(images)

    def decode(self, z: Tensor) -> Outputs:
        return (self.model.decode(z),)


class OnnxBackend:
    """The exported encoder and decoder in two onnxruntime CPU sessions."""

    name: BackendName = "onnxruntime"

    def __init__(self, export: OnnxExport, threads: int = 1) -> None:
        from vae_service.model.onnx_export import session

        self.export = export
        self.encoder: Any = session(export.encoder, threads)
        self.decoder: Any = session(export.decoder, threads)

    def encode(self, images: Tensor) -> Outputs:
        mean, logvar = self.encoder.run(None, {"images": _array(images)})
        return torch.from_numpy(mean), torch.from_numpy(logvar)

    def decode(self, z: Tensor) -> Outputs:
        (images,) = self.decoder.run(None, {"z": _array(z)})
        return (torch.from_numpy(images),)


def _array(batch: Tensor) -> np.ndarray:
    return np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/vae-service/onnx, else /tmp/vae-service-<uid>/onnx (the container's
    root file system is read-only; /tmp is writable)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "vae-service" / "onnx"
    return Path(tempfile.gettempdir()) / f"vae-service-{os.getuid()}" / "onnx"


def cache_dir(configured: Path | None) -> Path:
    """The configured cache, else the default one, created private to this user: in a
    shared /tmp another user must not be able to plant graphs for us to serve."""
    if configured is not None:
        return configured
    folder = default_cache_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    owner = folder.parent if folder.parent.name.startswith("vae-service-") else folder
    if owner.stat().st_uid != os.getuid():
        raise BackendError(f"ONNX cache {owner} belongs to another user; set VAE_ONNX_CACHE_DIR")
    return folder


def load_backend(
    checkpoint: Checkpoint, backend: BackendChoice, cache: Path | None, threads: int
) -> Backend:
    """The backend that will run ``checkpoint`` (blocking: call it off the event loop)."""
    if backend == "auto":
        return _automatic(checkpoint, cache, threads)
    if backend == "torch":
        return TorchBackend(checkpoint.model)
    if not onnxruntime_installed():
        raise BackendError(
            f"VAE_BACKEND=onnxruntime but onnxruntime is not installed: {INSTALL_HINT}"
        )
    device = next(checkpoint.model.parameters()).device
    if device.type != "cpu":
        raise BackendError(
            f"VAE_BACKEND=onnxruntime runs on the CPU only (VAE_DEVICE=cpu), not {device}"
        )
    try:
        export = cached_export(checkpoint, cache_dir(cache))
        runner = OnnxBackend(export, threads)
        check_export(
            checkpoint, export.folder, LOAD_CHECK_BATCHES, 1, runner.encoder, runner.decoder
        )
    except (ExportError, OSError) as exc:
        raise BackendError(f"onnxruntime backend: {exc}") from None
    return runner


def _automatic(checkpoint: Checkpoint, cache: Path | None, threads: int) -> Backend:
    """onnxruntime on the CPU when it is installed (served, it answered 1.2-3.4 times the
    images per second of torch, and 0.9 times at 32 single-image clients:
    BENCHMARKS.md), else torch; a model it cannot run falls back to torch, with the
    reason in the log."""
    on_cpu = next(checkpoint.model.parameters()).device.type == "cpu"
    if not (on_cpu and onnxruntime_installed()):
        return TorchBackend(checkpoint.model)
    try:
        return load_backend(checkpoint, "onnxruntime", cache, threads)
    except BackendError as exc:
        logger.warning("VAE_BACKEND=auto: serving with torch, because %s", exc)
        return TorchBackend(checkpoint.model)

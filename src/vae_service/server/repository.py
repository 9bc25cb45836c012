"""The model repository: every served model by name, each with its own runtime (its
own batcher, queue limit and worker thread), loaded, swapped and unloaded while
requests flow.

- Without ``VAE_MODEL_DIR`` it holds one model, ``VAE_WEIGHTS``, named after its file.
- With it, every ``NAME.safetensors`` directly in the folder is model NAME, and so is
  every folder ``NAME/`` that holds a diffusers VAE (server/diffusers_models.py). The folder
  is polled every ``VAE_MODEL_POLL_S``: polling, not inotify, because inotify misses
  changes on network volumes and on Kubernetes' symlink-swapped mounts.
- A new version is loaded and warmed up beside the old one, then swapped in. Requests
  hold the version that accepted them (``Version.held``), so they finish on it;
  the old version is closed once its last lease ends. A file that fails to load
  leaves the old version serving, with the error in ``/models``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from vae_service.model import Checkpoint
from vae_service.server.backends import load_backend
from vae_service.server.diffusers_models import is_diffusers_folder
from vae_service.server.diffusers_runtime import DiffusersRuntime, load_folder
from vae_service.server.metrics import Metrics, checkpoint_info
from vae_service.server.model_entries import (
    NAME,
    SUFFIX,
    Entry,
    ModelUnavailable,
    Runtime,
    Stamp,
    UnknownModel,
    Version,
    file_stamp,
    model_name,
)
from vae_service.server.process import release_memory
from vae_service.server.reload_notices import ReloadNotices
from vae_service.server.runtime import Batching, ModelRuntime, load_checkpoint, torch_threads
from vae_service.server.settings import Settings

logger = logging.getLogger("service")
FALLBACK_DEFAULT = "fashion-mnist"


class ModelRepository:
    """The models, by name; see the module docstring."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.entries: dict[str, Entry] = {}
        self.default = settings.default_model or FALLBACK_DEFAULT
        self._seen: dict[str, Stamp | None] = {}  # changes waiting one scan to settle
        self._watcher: asyncio.Task[None] | None = None
        self._ignored: set[str] = set()  # files logged as ignored: once each, not every scan
        self.notices = ReloadNotices.shared()  # other workers' reloads (--workers > 1)

    def discover(self) -> dict[str, Path]:
        """Model name -> weights file, as the settings and the folder say now."""
        folder = self.settings.model_dir
        if folder is None:
            return {model_name(self.settings.weights): self.settings.weights}
        found: dict[str, Path] = {}
        ignored: set[str] = set()
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix == SUFFIX and NAME.fullmatch(path.stem):
                found[path.stem] = path
            elif NAME.fullmatch(path.name) and is_diffusers_folder(path):
                found[path.name] = path
            elif not path.name.startswith("."):
                ignored.add(path.name)
                if path.name not in self._ignored:
                    logger.info(
                        "model repository: ignoring %s (not NAME%s, nor a diffusers folder)",
                        path,
                        SUFFIX,
                    )
        self._ignored = ignored
        return found

    async def start(self, preloaded: Checkpoint | None = None) -> None:
        """Load every model (``preloaded``: the single model, read already), then watch."""
        found = self.discover()
        if self.settings.default_model is None and len(found) == 1:
            self.default = next(iter(found))
        for name, path in found.items():
            self.entries[name] = Entry(name, path)
        if self.settings.model_dir is None:  # one model: weights that fail stop start-up
            ((name, path),) = found.items()
            await self.load(name, path, preloaded, strict=True)
        else:
            for name, path in found.items():
                await self.load(name, path)
        if self.settings.model_dir is not None or self.notices is not None:
            self._watcher = asyncio.create_task(self._watch(), name="model-repository-watch")

    def names(self) -> list[str]:
        return sorted(self.entries)

    def entry(self, name: str | None = None) -> Entry:
        entry = self.entries.get(name or self.default)
        if entry is None:
            raise UnknownModel(name or self.default, self.names())
        return entry

    def serving(self, name: str | None = None) -> Version:
        """The version answering ``name`` (default: the default model) now. Until the
        default model's file is in VAE_MODEL_DIR, the service is not ready (503)."""
        if name is None and self.default not in self.entries:
            raise ModelUnavailable(f"the default model {self.default!r} is not in the repository")
        entry = self.entry(name)
        if entry.live is None:
            raise ModelUnavailable(f"model {entry.name!r} is {entry.state}: {entry.error or ''}")
        return entry.live

    async def load(
        self, name: str, path: Path, checkpoint: Checkpoint | None = None, strict: bool = False
    ) -> Entry:
        """Load ``path`` as the new version of ``name`` and swap it in; on failure the
        old version (if any) keeps serving and the entry records the error (``strict``:
        and the error is raised)."""
        entry = self.entries.setdefault(name, Entry(name, path))
        async with entry.lock:
            entry.stamp, entry.loading = file_stamp(path), True
            try:
                runtime = await self._start_runtime(name, path, checkpoint)
            except Exception as exc:
                self._failed(entry, exc)
                if strict:
                    raise
                return entry
            finally:
                entry.loading = False
            old, entry.live, entry.error = entry.live, Version(runtime), None
            self.metrics.describe_model(
                name, model_info(runtime), lambda: runtime.batcher.queued_rows
            )
            logger.info("model %s: serving %s (%s)", name, path, runtime.checkpoint.sha256[:12])
        if old is not None:
            self.metrics.swaps.labels(name).inc()
            await self._retire(old)
            del old
        await asyncio.to_thread(release_memory)  # the warm-up's and any old version's pages
        return entry

    async def reload(self, name: str) -> Entry:
        """Load ``name``'s file again now, here and (``--workers``) in every other worker."""
        entry = self.entries.get(name)
        if entry is None or not entry.path.exists():
            raise UnknownModel(name, self.names())
        entry = await self.load(name, entry.path)
        if self.notices is not None:
            self.notices.announce(name)
        return entry

    async def _start_runtime(self, name: str, path: Path, checkpoint: Checkpoint | None) -> Runtime:
        started = time.perf_counter()
        if path.is_dir():
            device, precision = self.settings.device, self.settings.precision
            weights = await asyncio.to_thread(load_folder, path, device, precision)
            self.metrics.load_seconds.labels(name).set(time.perf_counter() - started)
            return await self._warmed_up(name, DiffusersRuntime(weights, batching(self.settings)))
        if checkpoint is None:
            checkpoint = await asyncio.to_thread(load_checkpoint, path, self.settings.device)
            self.metrics.load_seconds.labels(name).set(time.perf_counter() - started)
        backend = await asyncio.to_thread(  # onnxruntime: exported or read from the cache
            load_backend,
            checkpoint,
            self.settings.backend,
            self.settings.onnx_cache_dir,
            torch_threads(self.settings.torch_threads),
        )
        # On a worker thread too: reading the anomaly calibration hashes the model's
        # tensors (17 ms for the bundled model, more for larger ones), which would stall
        # every request on the event loop during a swap.
        runtime = await asyncio.to_thread(
            ModelRuntime, checkpoint, batching(self.settings), backend
        )
        return await self._warmed_up(name, runtime)

    async def _warmed_up(self, name: str, runtime: Runtime) -> Runtime:
        started = time.perf_counter()
        try:
            await runtime.start()
        except BaseException:
            await runtime.aclose()
            raise
        self.metrics.warmup_seconds.labels(name).set(time.perf_counter() - started)
        runtime.batcher.on_batch = self.metrics.batch_hook(name)  # clients' batches only
        self.metrics.loads.labels(name, "success").inc()
        return runtime

    def _failed(self, entry: Entry, exc: Exception) -> None:
        entry.error = f"{entry.path.name}: {exc}"
        self.metrics.loads.labels(entry.name, "failure").inc()
        keeps = f"; {entry.live.sha256[:12]} keeps serving" if entry.live else ""
        logger.error("model %s: cannot load %s%s", entry.name, entry.error, keeps)

    async def _retire(self, version: Version) -> None:
        """Close a version once no request holds it; its queued work is answered."""
        version.retired = True
        if version.leases:
            await version.released.wait()
        await version.runtime.aclose()
        # The batcher's operations are the runtime's bound methods: a cycle, which the
        # collector never frees for a version loaded at start-up (gc.freeze). Nothing
        # submits to a closed, released version, so break the cycle and free the weights.
        version.runtime.batcher.operations.clear()

    async def unload(self, name: str) -> None:
        """Stop routing to ``name``, drain its version, and release it."""
        entry = self.entries.pop(name)
        self._seen.pop(name, None)
        async with entry.lock:
            if entry.live is not None:
                await self._retire(entry.live)
                entry.live = None
        self.metrics.forget_model(name)
        await asyncio.to_thread(release_memory)
        self.metrics.unloads.labels(name).inc()
        logger.info("model %s: unloaded (%s is gone)", name, entry.path)

    async def sync(self) -> None:
        """One scan of the folder: load new and changed files, unload removed ones. A
        change must hold still for one scan first, so a file still being copied in is
        not read half-written."""
        found = self.discover()
        for name in [n for n in self.entries if n not in found]:
            await self.unload(name)
        for name, path in found.items():
            stamp = file_stamp(path)
            known = self.entries.get(name)
            if known is not None and known.stamp == stamp:
                continue
            if self._seen.get(name) != stamp:
                self._seen[name] = stamp
                continue
            await self.load(name, path)

    async def follow_peers(self) -> None:
        """Reload what another worker was asked to reload."""
        for name in self.notices.pending() if self.notices else []:
            if name in self.entries:
                logger.info("model %s: reloading, as another worker did", name)
                await self.load(name, self.entries[name].path)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.model_poll_s)
            try:
                if self.settings.model_dir is not None:
                    await self.sync()
                await self.follow_peers()
            except Exception:  # a scan that failed (folder gone?) is tried again
                logger.exception("model repository: scan of %s failed", self.settings.model_dir)

    async def aclose(self) -> None:
        """Stop watching; answer every queued request of every model."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for entry in self.entries.values():
            if entry.live is not None:
                await entry.live.runtime.aclose()


def model_info(runtime: Runtime) -> dict[str, str]:
    """The version's identity, as the model-info metric labels it."""
    if isinstance(runtime, DiffusersRuntime):
        return runtime.metric_info()
    return checkpoint_info(runtime.checkpoint, str(runtime.device))


def batching(settings: Settings) -> Batching:
    return Batching(
        settings.max_batch_size,
        settings.max_batch_delay_ms / 1000,
        settings.max_queue_images,
        settings.precision,
        settings.max_queue_wait_ms / 1000,
        settings.max_batch_pixels,
        settings.max_score_samples,
    )

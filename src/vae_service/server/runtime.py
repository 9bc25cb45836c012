"""The loaded model and the dynamic batcher that runs it.

Handlers reach the model only through the async methods of ModelRuntime (encode,
decode, reconstruct, sample, interpolate). Concurrent requests are stacked into
batches (server/batcher.py) and every forward pass runs on one dedicated thread under
``torch.inference_mode``, so the event loop never waits on torch and the model never
runs twice at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from vae_service.model import VAE, Checkpoint, VAEConfig, load_weights
from vae_service.model.anomaly import (
    DEFAULT_IWAE_SAMPLES,
    AnomalyScores,
    Calibration,
    image_statistics,
    score_of,
)
from vae_service.model.device import resolve_device
from vae_service.model.prior import FittedPrior
from vae_service.server.backends import Backend, TorchBackend
from vae_service.server.batch_jobs import Operation, Outputs
from vae_service.server.batcher import Batcher
from vae_service.server.cpus import usable_cpus

logger = logging.getLogger("service")
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The IWAE draws of /score are the same for every request (common random numbers): the
# same image always gets the same score, so a threshold never flips on chance.
SCORE_SEED = 0


def score_operation(k: int) -> str:
    return f"score-k{k}"


class DeviceError(Exception):
    """A device setting this machine cannot honour."""


@dataclass(frozen=True)
class Posterior:
    """q(z|x) per image: mean and natural log of the variance, CPU float32, N x latent_dim."""

    mean: Tensor
    logvar: Tensor


def load_checkpoint(weights: Path, device: str) -> Checkpoint:
    """Read and check the weights (and any fitted prior they carry) onto the chosen device;
    WeightsError or DeviceError if not."""
    try:
        target = resolve_device(device)
    except ValueError as exc:
        raise DeviceError(str(exc)) from None
    checkpoint = load_weights(weights, target)
    # A corrupt prior or calibration stops start-up, not a /sample or a /score.
    FittedPrior.from_checkpoint(checkpoint)
    Calibration.from_checkpoint(checkpoint)
    return checkpoint


def seeded(seed: int) -> torch.Generator:
    # Noise is drawn on the CPU so that a seed means the same latents on every device.
    return torch.Generator().manual_seed(seed)


def draw_prior(
    n: int, latent_dim: int, temperature: float, seed: int, fitted: FittedPrior | None = None
) -> Tensor:
    """n latents from N(0, temperature^2 I), or from the ``fitted`` mixture with each draw's
    deviation from its component mean scaled by ``temperature``."""
    if fitted is not None:
        return fitted.sample(n, temperature, seeded(seed))
    return torch.randn((n, latent_dim), generator=seeded(seed)) * temperature


def draw_posterior(posterior: Posterior, seed: int) -> Tensor:
    """One draw from each q(z|x), by the reparameterization the model was trained with."""
    return VAE.reparameterize(posterior.mean, posterior.logvar, seeded(seed))


def line_between(start: Tensor, end: Tensor, steps: int) -> Tensor:
    """``steps`` evenly spaced points from ``start`` to ``end``, both included (latents
    of any shape: the points are stacked on a new first axis)."""
    t = torch.linspace(0.0, 1.0, steps).view(-1, *([1] * start.ndim))
    return (1.0 - t) * start + t * end


def torch_threads(requested: int) -> int:
    """0 means one per CPU this process may use (affinity and cgroup quota, see
    server/cpus.py), less one for the event loop (which
    parses requests and decodes images while the model runs). Measured on 2 busy cores:
    two threads made torch's thread team wait on each other's time slices, 12 images/s
    one at a time against 800 with one thread (385 against 2,700 in batches of 64)."""
    return requested or max(1, usable_cpus() - 1)


def run_guarded(
    fn: Callable[[Tensor], Outputs],
    batch: Tensor,
    half: torch.dtype | None,
    fp32: Callable[[Tensor], Outputs] | None = None,
) -> Outputs:
    """``fn(batch)`` as CPU float32; under autocast to ``half`` when given, and again in
    fp32 when that gives NaN or inf, so half precision never reaches a client as NaN.
    The re-run is ``fp32`` where given: a model whose weights are half precision needs
    them upcast, which autocast alone does not do."""
    if half is not None:
        with torch.autocast(batch.device.type, dtype=half):
            outputs = fn(batch)
        if all(bool(torch.isfinite(o).all()) for o in outputs):
            return tuple(o.float().cpu().contiguous() for o in outputs)
        logger.warning("half precision gave NaN or inf; this batch ran again in fp32")
    return tuple(o.float().cpu().contiguous() for o in (fp32 or fn)(batch))


def forward_on(
    device: torch.device,
    half: torch.dtype | None,
    fn: Callable[[Tensor], Outputs],
    batch: Tensor,
    fp32: Callable[[Tensor], Outputs] | None = None,
) -> Outputs:
    """On the batcher's thread: to the device, through ``fn``, back as CPU float32."""
    if device.type == "cuda":  # pinned pages let the copy run asynchronously
        batch = batch.pin_memory().to(device, non_blocking=True)
    return run_guarded(fn, batch, half, fp32)


@dataclass(frozen=True)
class Batching:
    """How requests are stacked into forward passes (the VAE_MAX_BATCH_* settings)."""

    max_batch_size: int = 64
    max_delay_s: float = 0.0
    max_queue_images: int = 4096
    precision: str = "fp32"  # bf16 / fp16 apply on CUDA only
    max_queue_wait_s: float = 0.0  # 0: no bound
    max_batch_pixels: int = 4 * 1024 * 1024  # diffusers models only
    max_score_samples: int = 64  # our own VAEs: one batched operation per k of /score

    def batcher(self, operations: dict[str, Operation]) -> Batcher:
        """One model's batcher, for our own runtimes and diffusers' alike."""
        return Batcher(
            operations,
            self.max_batch_size,
            self.max_delay_s,
            self.max_queue_images,
            self.max_queue_wait_s,
        )


class ModelRuntime:
    """A checkpoint on its device, served through one dynamic batcher."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        batching: Batching | None = None,
        backend: Backend | None = None,
    ) -> None:
        batching = batching or Batching()
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        # What runs the forward passes: torch, or onnxruntime (server/backends.py).
        self.backend = backend or TorchBackend(self.model)
        # On the CPU (extra tensors load there), like every seeded draw: see seeded().
        self.prior = FittedPrior.from_checkpoint(checkpoint)
        self.calibration = Calibration.from_checkpoint(checkpoint)  # on the CPU: p-values
        self.device = next(self.model.parameters()).device
        self._scorer = self.calibration.to(self.device) if self.calibration else None
        self.score_parts: tuple[str, ...] = ()  # the parts' names, known from the warm-up
        # /score's k when a request names none: the calibration's, within the limit.
        own_k = self.calibration.k if self.calibration else DEFAULT_IWAE_SAMPLES
        self.default_score_k = min(own_k, batching.max_score_samples)
        cuda = self.device.type == "cuda"
        self.half = HALF.get(batching.precision) if cuda else None
        self.ready = False
        cfg = checkpoint.config
        operations = {
            "encode": Operation(self._encode_batch, cfg.image_shape),
            "decode": Operation(self._decode_batch, (cfg.latent_dim,)),
        }
        # One operation per k: a batch stacks only requests that asked for the same k.
        for k in range(1, batching.max_score_samples + 1):
            operations[score_operation(k)] = Operation(
                partial(self._score_batch, k), cfg.image_shape
            )
        self.batcher = batching.batcher(operations)

    @property
    def config(self) -> VAEConfig:
        return self.checkpoint.config

    async def start(self) -> None:
        """Encoder and decoder at every batch size the batcher can form: the CPU kernels
        are built and cached per input shape, so without this no request would pay the
        build, but resident memory would grow by ~190 MB over the first minute of traffic."""
        started = time.perf_counter()
        await self.batcher.on_worker(self._warm_up)
        self.ready = True
        logger.info(
            "model ready: %s on %s, warm-up %.0f ms",
            self.checkpoint.path,
            self.device,
            (time.perf_counter() - started) * 1000,
        )

    def _warm_up(self) -> None:
        # On the batcher's own thread (its kernel caches are per thread) and straight
        # through the batch functions, not the queue: a lone queued request waits out
        # the batching delay, which was most of the warm-up's time.
        for n in range(1, self.batcher.max_batch_size + 1):
            mean, _ = self._encode_batch(torch.zeros((n, *self.config.image_shape)))
            self._decode_batch(mean)
        self._score_batch(1, torch.zeros((1, *self.config.image_shape)))

    async def aclose(self) -> None:
        """Stop taking work and answer every request already queued."""
        self.ready = False
        await self.batcher.aclose()

    def _forward(self, fn: Callable[[Tensor], Outputs], batch: Tensor) -> Outputs:
        return forward_on(self.device, self.half, fn, batch)

    def _encode_batch(self, images: Tensor) -> Outputs:
        return self._forward(self.backend.encode, images)

    def _decode_batch(self, z: Tensor) -> Outputs:
        return self._forward(self.backend.decode, z)

    def _score_batch(self, k: int, images: Tensor) -> Outputs:
        # Always torch: the IWAE bound decodes k draws per image, which the ONNX graphs
        # of the other operations do not do.
        return self._forward(partial(self._scores, k), images)

    def _scores(self, k: int, images: Tensor) -> Outputs:
        # A calibrated score is computed as it was calibrated (its own k), so that its
        # p-values hold; the request's k is the parts' when it differs.
        # Its p-values are taken on the event loop, in float64 (score()).
        at = self._scorer.k if self._scorer else k
        parts = image_statistics(self.model, images, at, SCORE_SEED, self.prior)
        score = score_of(parts, self._scorer)
        if k != at:
            parts = image_statistics(self.model, images, k, SCORE_SEED, self.prior)
        self.score_parts = tuple(parts)
        return (score, *parts.values())

    async def encode(self, images: Tensor) -> Posterior:
        """Images N x C x H x W in [0, 1] -> q(z|x)."""
        mean, logvar = await self.batcher.submit("encode", images)
        return Posterior(mean, logvar)

    async def decode(self, z: Tensor) -> Tensor:
        """Latents N x latent_dim -> images N x C x H x W in [0, 1] (the mean of p(x|z))."""
        (images,) = await self.batcher.submit("decode", z)
        return images

    async def score(self, images: Tensor, k: int) -> AnomalyScores:
        """Images N x C x H x W in [0, 1] -> anomaly scores, their p-values where the
        weights are calibrated, and the statistics they are made of."""
        score, *parts = await self.batcher.submit(score_operation(k), images)
        p_value = self.calibration.p_values(score) if self.calibration else None
        return AnomalyScores(score, p_value, dict(zip(self.score_parts, parts, strict=True)))

    async def reconstruct(self, images: Tensor) -> Tensor:
        """Decoded posterior means."""
        return await self.decode((await self.encode(images)).mean)

    async def sample(
        self, n: int, temperature: float, seed: int, fitted: bool = False
    ) -> tuple[Tensor, Tensor]:
        """n draws from the standard prior, or the fitted one, and their images."""
        prior = self.prior if fitted else None
        if fitted and prior is None:
            raise ValueError("these weights carry no fitted prior")
        z = draw_prior(n, self.config.latent_dim, temperature, seed, prior)
        return z, await self.decode(z)

    async def interpolate(self, start: Tensor, end: Tensor, steps: int) -> tuple[Tensor, Tensor]:
        """The straight line between two latents, and its images."""
        z = line_between(start, end, steps)
        return z, await self.decode(z)

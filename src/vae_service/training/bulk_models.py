"""The models ``vae-encode-dataset`` runs, loaded and fed exactly as the service does.

- this service's own VAEs (a ``.safetensors`` file): images decoded and resized to the
  model's size and channels as ``/encode`` does (server/imaging.py's decode_image); each
  row gets the posterior's ``mean`` and ``logvar`` (fixed-size lists of float32);
- diffusers ``AutoencoderKL`` and ``AutoencoderTiny`` folders (server/diffusers_models.py):
  images at their own size, a multiple of the model's downsampling factor (as ``/encode``
  takes them: server/imaging.py's decode_image_as_is, then check_size); each row gets the
  ``latent`` flattened (the posterior's mode for AutoencoderKL, which is its mean; the
  latents for AutoencoderTiny) and its ``latent_shape`` (C, h, w). ``--scale`` applies the
  model's own normalisation, as its pipelines do: ``(z - shift_factor) * scaling_factor``,
  or per channel with ``latents_mean``/``latents_std``.

Forward passes run in float32 under ``torch.inference_mode`` through the service's own
``forward_on`` (the copy to the device, results back as CPU float32).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from vae_service.model.weights import WeightsError
from vae_service.server.diffusers_models import (
    DiffusersModelError,
    folder_sha256,
    is_diffusers_folder,
)
from vae_service.server.diffusers_runtime import encode_pass, load_folder
from vae_service.server.imaging import decode_image, decode_image_as_is, limit_pillow_pixels
from vae_service.server.remote_vae import check_size, model_scaling
from vae_service.server.runtime import DeviceError, forward_on, load_checkpoint
from vae_service.server.settings import Settings

DEFAULT_MAX_PIXELS: int = Settings.model_fields["max_pixels_per_image"].default


class ModelLoadError(ValueError):
    """A model that cannot be loaded; the message names it and the problem."""


class BulkModel(Protocol):
    name: str
    sha256: str
    family: str

    def fields(self) -> list[Any]:
        """The pyarrow fields of the latent columns."""

    def prepare(self, blob: bytes, index: int) -> np.ndarray:
        """An image file -> C x H x W float32 in [0, 1]; BadImage or Unprocessable."""

    def encode(self, images: list[np.ndarray]) -> dict[str, Any]:
        """Prepared images -> the latent columns (pyarrow arrays), one row per image."""


@dataclass(frozen=True)
class ModelSpec:
    """What loads the model: picklable, so that every Ray actor loads the same one."""

    path: Path
    device: str = "auto"
    scale: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS

    def load(self) -> BulkModel:
        limit_pillow_pixels(self.max_pixels)  # as the service sets it (server/process.py)
        try:
            if is_diffusers_folder(self.path):
                return DiffusersModel(self)
            return OwnModel(self)
        except (WeightsError, DiffusersModelError, DeviceError) as exc:
            raise ModelLoadError(f"cannot load the model {self.path}: {exc}") from None


def _fixed_lists(rows: np.ndarray, value_type: Any) -> Any:
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(rows).reshape(-1), type=value_type)
    return pa.FixedSizeListArray.from_arrays(flat, rows.shape[1])


class OwnModel:
    """A vae-service weights file: mean and log-variance of q(z|x)."""

    family = "VAE"

    def __init__(self, spec: ModelSpec) -> None:
        checkpoint = load_checkpoint(spec.path, spec.device)
        self.model = checkpoint.model
        self.config = checkpoint.config
        self.device = next(self.model.parameters()).device
        self.name, self.sha256 = spec.path.stem, checkpoint.sha256
        self.max_pixels = spec.max_pixels

    def fields(self) -> list[Any]:
        import pyarrow as pa

        row = pa.list_(pa.float32(), self.config.latent_dim)
        return [pa.field("mean", row), pa.field("logvar", row)]

    def prepare(self, blob: bytes, index: int) -> np.ndarray:
        cfg = self.config
        return decode_image(blob, cfg.image_size, cfg.channels, self.max_pixels, index)

    def encode(self, images: list[np.ndarray]) -> dict[str, Any]:
        batch = torch.from_numpy(np.stack(images))
        with torch.inference_mode():
            mean, logvar = forward_on(self.device, None, self.model.encode, batch)
        return {
            "mean": _fixed_lists(mean.numpy(), "float32"),
            "logvar": _fixed_lists(logvar.numpy(), "float32"),
        }


class DiffusersModel:
    """A diffusers folder: the latents, flattened, and their shape."""

    def __init__(self, spec: ModelSpec) -> None:
        weights = load_folder(spec.path, spec.device)
        # float32 whatever the stored dtype: the same rows on every device.
        self.model = torch.nn.Module.to(weights.model, torch.float32)
        self.space = weights.space
        self.family = self.space.family
        self.device = next(self.model.parameters()).device
        self.name, self.sha256 = spec.path.name, folder_sha256(spec.path)
        self.scaling = model_scaling(self.space) if spec.scale else None
        self.limits = Settings.model_construct(max_pixels_per_image=spec.max_pixels)

    def fields(self) -> list[Any]:
        import pyarrow as pa

        return [
            pa.field("latent", pa.list_(pa.float32())),
            pa.field("latent_shape", pa.list_(pa.int32(), 3)),
        ]

    def prepare(self, blob: bytes, index: int) -> np.ndarray:
        channels, limit = self.space.image_channels, self.limits.max_pixels_per_image
        array = decode_image_as_is(blob, channels, limit, index)
        check_size(array.shape[1], array.shape[2], self.space, self.limits)
        return array

    def encode(self, images: list[np.ndarray]) -> dict[str, Any]:
        latents: list[np.ndarray] = [np.empty(0)] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            by_shape[image.shape].append(i)
        for rows in by_shape.values():  # a batch stacks images of one size
            for i, z in zip(rows, self._latents(np.stack([images[i] for i in rows])), strict=True):
                latents[i] = z
        return _latent_columns(latents)

    def _latents(self, images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(images) * 2 - 1  # the model's [-1, 1], as DiffusersApi
        with torch.inference_mode():
            z = forward_on(self.device, None, partial(encode_pass, self.model), batch)[0]
            if self.scaling is not None:
                z = self.scaling.from_model(z)
        return z.numpy()


def _latent_columns(latents: list[np.ndarray]) -> dict[str, Any]:
    import pyarrow as pa

    sizes = np.array([0] + [z.size for z in latents], dtype=np.int64)
    flat = np.concatenate([z.reshape(-1) for z in latents]).astype(np.float32)
    values = pa.ListArray.from_arrays(pa.array(np.cumsum(sizes), pa.int32()), pa.array(flat))
    shapes = np.array([z.shape for z in latents], dtype=np.int32)
    return {"latent": values, "latent_shape": _fixed_lists(shapes, pa.int32())}

"""diffusers' VAEs from local folders: what ``save_pretrained`` writes (``config.json``
and ``diffusion_pytorch_model.safetensors``), as the ``vae/`` folder of a Stable
Diffusion, SDXL, SD3 or FLUX pipeline holds it.

Loading uses diffusers' own classes, from the folder only: nothing is downloaded. diffusers
is the optional ``diffusers`` extra, imported only when a folder is loaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
FAMILIES = ("AutoencoderKL", "AutoencoderTiny")
INSTALL_HINT = "pip install 'vae-service[diffusers]'"
CHUNK = 1 << 20
STORED_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class DiffusersModelError(Exception):
    """A folder that does not hold a VAE this service can serve; the message says why."""


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def folder_sha256(folder: Path) -> str:
    """SHA-256 over config.json then the weights: either changing makes a new version."""
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        with open(folder / name, "rb") as file:
            while chunk := file.read(CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class LatentSpace:
    """What a client must know of a model's latents: their channels, the image's channels,
    how many pixels one latent position covers per side, and the model's own normalisation
    (``latents * scaling_factor`` after ``- shift_factor``, or per channel by
    ``latents_mean``/``latents_std`` where the config has them, as SDXL pipelines do)."""

    family: str
    latent_channels: int
    image_channels: int
    factor: int
    scaling_factor: float
    shift_factor: float
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None

    @property
    def latent_dim(self) -> int:
        # The name the repository's shared views (the live OpenAPI values) read.
        return self.latent_channels

    def latent_shape(self, height: int, width: int) -> list[int]:
        return [self.latent_channels, height // self.factor, width // self.factor]


def latent_space(family: str, config: dict[str, Any]) -> LatentSpace:
    """The latent space a diffusers config describes."""
    blocks = config.get(
        "block_out_channels" if family == "AutoencoderKL" else "encoder_block_out_channels"
    )
    mean, std = config.get("latents_mean"), config.get("latents_std")
    return LatentSpace(
        family=family,
        latent_channels=int(config.get("latent_channels", 4)),
        image_channels=int(config.get("in_channels", 3)),
        factor=2 ** (len(blocks or (0,)) - 1),  # one stride-2 stage between blocks
        scaling_factor=float(config.get("scaling_factor") or 1.0),
        shift_factor=float(config.get("shift_factor") or 0.0),
        latents_mean=tuple(mean) if mean is not None and std is not None else None,
        latents_std=tuple(std) if mean is not None and std is not None else None,
    )


@dataclass
class DiffusersWeights:
    """A loaded folder: the diffusers module and what the service reports of it."""

    model: Any  # AutoencoderKL or AutoencoderTiny, in eval mode on its device
    space: LatentSpace
    path: str
    sha256: str
    config: dict[str, Any] = field(default_factory=dict)  # config.json, as read

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def read_config(folder: Path) -> tuple[str, dict[str, Any]]:
    """The folder's class name and config; DiffusersModelError for any other class."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise DiffusersModelError(f"{CONFIG_FILE}: {exc}") from None
    family = config.get("_class_name") if isinstance(config, dict) else None
    if family not in FAMILIES:
        raise DiffusersModelError(
            f"{CONFIG_FILE}: _class_name is {family!r}; served are {', '.join(FAMILIES)}"
        )
    return family, config


def stored_dtype(folder: Path) -> torch.dtype:
    """The weights' floating-point type, from the safetensors header (nothing is read into
    memory): float16 or bfloat16 where every float tensor has it, else float32."""
    from safetensors import safe_open  # a dependency of diffusers

    try:
        with safe_open(str(folder / WEIGHTS_FILE), "pt") as weights:
            kinds = {weights.get_slice(key).get_dtype() for key in weights.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several kinds on a damaged file
        raise DiffusersModelError(f"{WEIGHTS_FILE}: {exc}") from None
    floats = kinds & set(STORED_DTYPES)
    return STORED_DTYPES[floats.pop()] if len(floats) == 1 else torch.float32


def serving_dtype(
    family: str, config: dict[str, Any], stored: torch.dtype, half: torch.dtype | None
) -> torch.dtype:
    """The weights' own dtype, or ``half`` (VAE_PRECISION on CUDA); float16 is upcast to
    float32 where the config says ``force_upcast``, as diffusers' pipelines do before
    decoding: the SD and SDXL VAEs overflow in float16. bfloat16 has float32's range."""
    dtype = half or stored
    upcast = config.get("force_upcast", family == "AutoencoderKL")  # diffusers' defaults
    return torch.float32 if dtype == torch.float16 and upcast else dtype


def load_diffusers(
    folder: Path, device: torch.device, half: torch.dtype | None = None
) -> DiffusersWeights:
    """The folder's VAE on ``device``, in its serving_dtype (blocking: call it off the
    event loop)."""
    family, config = read_config(folder)
    try:
        import diffusers
    except ImportError:
        raise DiffusersModelError(f"diffusers is not installed: {INSTALL_HINT}") from None
    sha256 = folder_sha256(folder)
    dtype = serving_dtype(family, config, stored_dtype(folder), half)
    try:
        # low_cpu_mem_usage=False: the same load with or without accelerate installed.
        model, info = getattr(diffusers, family).from_pretrained(
            folder,
            local_files_only=True,
            torch_dtype=dtype,
            low_cpu_mem_usage=False,
            output_loading_info=True,
        )
    except Exception as exc:  # diffusers and safetensors raise many kinds on a bad folder
        raise DiffusersModelError(f"diffusers cannot load it: {exc}") from None
    _check_complete(info)
    space = latent_space(family, dict(model.config))
    return DiffusersWeights(model.to(device).eval(), space, str(folder), sha256, config)


def _check_complete(info: dict[str, Any]) -> None:
    # diffusers fills missing weights with random ones and only warns: refuse instead.
    for kind in ("missing_keys", "mismatched_keys", "unexpected_keys"):
        if info.get(kind):
            keys = ", ".join(str(k) for k in list(info[kind])[:3])
            raise DiffusersModelError(f"{WEIGHTS_FILE}: {kind.replace('_', ' ')}: {keys}")

"""Self-describing safetensors weights: tensors plus JSON metadata, never pickle.

Layout: model parameters under ``model.``, any extra tensors (a fitted prior, say)
under their own prefix; metadata values are JSON strings: ``config``, ``data``,
``training`` and anything else the writer adds, beside ``format_version``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from vae_service.model.config import VAEConfig
from vae_service.model.vae import VAE

FORMAT_NAME = "vae-service"
FORMAT_VERSION = 1
MODEL_PREFIX = "model."


class WeightsError(Exception):
    """A weights file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass
class Checkpoint:
    """A loaded weights file: the model, its config, and everything else it describes."""

    model: VAE
    config: VAEConfig
    metadata: dict[str, Any]
    extra_tensors: dict[str, Tensor] = field(default_factory=dict)
    path: str = ""
    sha256: str = ""


def encode_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    out = {key: json.dumps(value, sort_keys=True) for key, value in metadata.items()}
    out["format"] = FORMAT_NAME
    out["format_version"] = str(FORMAT_VERSION)
    return out


def save_weights(
    path: str | Path,
    model: VAE,
    metadata: dict[str, Any] | None = None,
    extra_tensors: dict[str, Tensor] | None = None,
) -> Path:
    """Write ``model`` and its config, plus ``metadata`` (data, training summary, ...).

    ``metadata["storage"]`` (``float32`` unless given) is the dtype the model's floating
    tensors are stored in: ``float16`` halves the file, and loading casts back to float32.
    Extra tensors (a fitted prior's Cholesky factors) always stay float32."""
    meta = dict(metadata or {})
    meta["config"] = model.cfg.to_dict()
    dtype = storage_dtype(meta.setdefault("storage", "float32"))
    tensors = {MODEL_PREFIX + k: _stored(v, dtype) for k, v in model.state_dict().items()}
    for key, value in (extra_tensors or {}).items():
        if key.startswith(MODEL_PREFIX):
            raise ValueError(f"extra tensor name {key!r} clashes with the model prefix")
        tensors[key] = value.detach().cpu().contiguous()
    return write_atomic(path, canonical_header(st_save(tensors, metadata=encode_metadata(meta))))


STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def storage_dtype(name: str) -> torch.dtype:
    if name not in STORAGE_DTYPES:
        raise ValueError(f"storage must be one of {sorted(STORAGE_DTYPES)}, got {name!r}")
    return STORAGE_DTYPES[name]


def _stored(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    cast = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return cast.detach().cpu().contiguous()


def canonical_header(payload: bytes) -> bytes:
    """safetensors writes metadata in hash-map order, which changes from call to call
    (safetensors issue #584); sorting the header's keys makes equal tensors and metadata
    give equal bytes, so a file's SHA-256 identifies its content. Data offsets are
    relative to the end of the header, so the tensor bytes stay as they are."""
    size = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8 : 8 + size])
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes with spaces
    return len(raw).to_bytes(8, "little") + raw + payload[8 + size :]


def write_atomic(path: str | Path, payload: bytes) -> Path:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    tmp.replace(path)
    return path


def read_safetensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any], str]:
    """Tensors, decoded metadata and SHA-256 of a file in this project's format."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(path, "file not found" if not path.exists() else "not a regular file")
    payload = path.read_bytes()
    try:
        tensors = st_load(payload)
        raw_meta = _raw_metadata(payload)
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        reason = "truncated or corrupt" if len(payload) >= 8 else "too short"
        raise WeightsError(path, f"not a valid safetensors file ({reason}: {exc})") from None
    return tensors, _decode_metadata(path, raw_meta), hashlib.sha256(payload).hexdigest()


def _raw_metadata(payload: bytes) -> dict[str, str]:
    header_len = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8 : 8 + header_len])
    return dict(header.get("__metadata__") or {})


def _decode_metadata(path: Path, raw: dict[str, str]) -> dict[str, Any]:
    if raw.get("format") != FORMAT_NAME:
        raise WeightsError(path, f"safetensors file is not a {FORMAT_NAME} weights file")
    try:
        version = int(raw.get("format_version", ""))
    except ValueError:
        raise WeightsError(path, "format_version is missing or not an integer") from None
    if version > FORMAT_VERSION:
        raise WeightsError(
            path, f"format version {version} is newer than this code reads ({FORMAT_VERSION})"
        )
    meta: dict[str, Any] = {"format_version": version}
    for key, value in raw.items():
        if key in ("format", "format_version"):
            continue
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            raise WeightsError(path, f"metadata {key!r} is not valid JSON") from None
    return meta


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a weights file into an eval-mode VAE on ``device``."""
    tensors, meta, digest = read_safetensors(path)
    if "config" not in meta:
        raise WeightsError(path, "metadata has no model config")
    try:
        cfg = VAEConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as exc:
        raise WeightsError(path, f"invalid model config: {exc}") from None
    model = VAE(cfg)
    state = {
        k.removeprefix(MODEL_PREFIX): v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)
    }
    _check_state(path, model, state)
    model.load_state_dict(state)
    model.to(device).eval()
    extra = {k: v for k, v in tensors.items() if not k.startswith(MODEL_PREFIX)}
    return Checkpoint(model, cfg, meta, extra, str(path), digest)


def _check_state(path: str | Path, model: VAE, state: dict[str, Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            path,
            f"tensors do not match the config: missing {missing[:3]}, unexpected {unexpected[:3]}",
        )
    for key, ref in expected.items():
        if state[key].shape != ref.shape:
            raise WeightsError(
                path,
                f"tensor {key!r} has shape {tuple(state[key].shape)}, "
                f"config expects {tuple(ref.shape)}",
            )

"""Resumable training checkpoints: model, Adam state and progress in one safetensors file.

Optimizer tensors are flattened to ``optim.<param index>.<name>``; its hyper-parameters
and the training progress go in the JSON metadata, so nothing is pickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vae_service.model.vae import VAE
from vae_service.model.weights import WeightsError, read_safetensors, save_weights

OPTIM_PREFIX = "optim."


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.stem + ".ckpt.safetensors")


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[Any]]:
    state = optimizer.state_dict()
    tensors = {
        f"{OPTIM_PREFIX}{idx}.{name}": value
        for idx, per_param in state["state"].items()
        for name, value in per_param.items()
    }
    return tensors, state["param_groups"]


def save_checkpoint(
    path: Path, model: VAE, optimizer: torch.optim.Optimizer, progress: dict[str, Any]
) -> None:
    tensors, groups = _flatten_optimizer(optimizer)
    save_weights(path, model, {"progress": progress, "optim_groups": groups}, tensors)


def load_checkpoint(path: Path, model: VAE, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore ``model`` and ``optimizer`` in place; return the saved progress."""
    tensors, meta, _ = read_safetensors(path)
    if "progress" not in meta or "optim_groups" not in meta:
        raise WeightsError(path, "not a training checkpoint (no progress or optimizer state)")
    if meta.get("config") != model.cfg.to_dict():
        raise WeightsError(path, "checkpoint config differs from the requested model config")
    model.load_state_dict(
        {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    )
    per_param: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(OPTIM_PREFIX):
            idx, name = key.removeprefix(OPTIM_PREFIX).split(".", 1)
            per_param.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": meta["optim_groups"]})
    progress: dict[str, Any] = meta["progress"]
    return progress

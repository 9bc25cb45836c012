"""Which torch device runs a model: for training, evaluation and serving alike."""

from __future__ import annotations

import torch


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present (one GPU per local rank under torchrun), else CPU.
    ValueError names the problem when the machine has no such device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.index >= count:
            raise ValueError(f"device {name!r} requested; this machine has {count} CUDA devices")
    return device

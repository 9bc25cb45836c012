"""What the model repository keeps of each model: the weights file's model name and
stamp, the model's entry (its state, its last error), the loaded version serving it and
the requests that hold that version, and the lookup errors (unknown model, none serving).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path

from vae_service.server.diffusers_runtime import DiffusersRuntime
from vae_service.server.runtime import ModelRuntime

NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
SUFFIX = ".safetensors"
Stamp = tuple[int, int, int]  # inode, size, mtime: a rename or a rewrite changes it
Runtime = ModelRuntime | DiffusersRuntime  # our own VAE, or a diffusers folder's


class UnknownModel(LookupError):
    """No model of that name; the answer lists the known ones (404)."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no model named {name!r}; known models: {', '.join(known) or 'none'}")


class ModelUnavailable(Exception):
    """The model exists but no version of it serves yet, or loading it failed (503)."""


def model_name(path: Path) -> str:
    """A weights file's model name: its stem, lower-cased, other characters as '-'."""
    name = re.sub(r"[^a-z0-9._-]", "-", path.stem.lower())
    return name if NAME.fullmatch(name) else f"m{name}"


def file_stamp(path: Path) -> Stamp | None:
    """A file's stamp; a folder's covers its files too, which change in place unseen by
    the folder's own mtime."""
    try:
        stat = path.stat()
        if not path.is_dir():
            return stat.st_ino, stat.st_size, stat.st_mtime_ns
        files = tuple(file_stamp(f) for f in sorted(path.iterdir()) if f.is_file())
    except OSError:
        return None
    return stat.st_ino, sum(s[1] for s in files if s), hash(files)


@dataclass(eq=False)
class Version:
    """One loaded weights file, and how many requests hold it."""

    runtime: Runtime
    leases: int = 0
    retired: bool = False
    released: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def sha256(self) -> str:
        return self.runtime.checkpoint.sha256

    def hold(self) -> None:
        """A request uses this version: a swap closes it only once none does."""
        self.leases += 1

    def release(self) -> None:
        self.leases -= 1
        if self.retired and not self.leases:
            self.released.set()


@dataclass(eq=False)
class Entry:
    """One model: the file it comes from, its state, and the version serving it."""

    name: str
    path: Path
    live: Version | None = None
    error: str | None = None  # the last failed load, even while an older version serves
    loading: bool = True
    stamp: Stamp | None = None  # of the file as last loaded (or tried)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def state(self) -> str:
        if self.live is not None:
            return "ready"
        return "loading" if self.loading else "failed"

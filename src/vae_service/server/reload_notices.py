"""Reloads asked of one worker, passed on to the others (``vae-serve --workers N``).

``POST /models/NAME/reload`` reaches the one worker that accepted the connection. That
worker writes a notice, a file named after the model holding a fresh token, to a folder
every worker shares (beside the Prometheus multiprocess files). Each worker's repository
watcher reads the folder every ``VAE_MODEL_POLL_S`` and reloads a model whose token it
has not seen. A folder of small files is enough here: the workers share a host, not a
network, and the metrics already rely on the same folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from vae_service.server.metrics import multiprocess_dir

FOLDER = "reloads"


class ReloadNotices:
    """The shared folder of reload notices, and the tokens this worker has acted on."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        # Notices older than this worker describe files it has loaded already.
        self.seen: dict[str, str] = dict(self._read())

    @classmethod
    def shared(cls) -> ReloadNotices | None:
        """The notices of this process's worker group; None for a single process."""
        metrics = multiprocess_dir()
        return cls(Path(metrics) / FOLDER) if metrics else None

    def announce(self, name: str) -> None:
        """Tell the other workers that ``name`` was reloaded here."""
        token = f"{os.getpid()}-{time.time_ns()}"
        partial = self.folder / f".{name}.{os.getpid()}"
        partial.write_text(token)
        os.replace(partial, self.folder / name)  # atomic: a reader never sees half a token
        self.seen[name] = token

    def pending(self) -> list[str]:
        """Models reloaded by another worker since this one last looked."""
        fresh = [(name, token) for name, token in self._read() if self.seen.get(name) != token]
        self.seen.update(fresh)
        return [name for name, _ in fresh]

    def _read(self) -> list[tuple[str, str]]:
        notices = []
        for path in self.folder.iterdir():
            if path.name.startswith("."):
                continue
            try:
                notices.append((path.name, path.read_text()))
            except FileNotFoundError:  # replaced between listing and reading
                continue
        return notices

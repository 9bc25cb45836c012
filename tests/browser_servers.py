"""The ``vae-serve`` processes the playground's browser tests drive (the browser and the
page helpers: tests/browser_support.py): the bundled weights, tiny weights with API keys,
and a repository with a grey and two colour models, each with the small limits (``n``,
body size) that the tests provoke errors against.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import Server, spawn_server
from vae_service.model import VAE, VAEConfig, save_weights
from vae_service.model.pretrained import DEFAULT_WEIGHTS

KEY = "browser-key-0123456789"
MAX_SAMPLE_N = 64  # the servers' limit: n above it is the 422 the page must show
MAX_BODY_BYTES = 256 * 1024  # and a larger upload the 413
BUNDLED_SHA = "aa27c7d58087"  # prefix of the bundled weights' SHA-256 (README)


# ---------------------------------------------------------------- servers


TINY_ARCHITECTURE = {"latent_dim": 4, "widths": (4, 8), "hidden_dim": 16}
# The shapes model's architecture (64x64 RGB, issue 17), randomly initialised.
SHAPES_ARCHITECTURE = {"latent_dim": 10, "widths": (16, 32, 64, 64), "hidden_dim": 256}


def tiny_weights(
    folder: Path,
    name: str,
    channels: int,
    image_size: int,
    seed: int,
    architecture: dict[str, Any] = TINY_ARCHITECTURE,
) -> Path:
    config = VAEConfig(image_size=image_size, channels=channels, **architecture)
    torch.manual_seed(seed)
    meta = {
        "data": {"name": "synthetic", "shape": [channels, image_size, image_size]},
        "training": {"epochs": 0, "note": "random init for tests"},
    }
    return save_weights(folder / f"{name}.safetensors", VAE(config).eval(), meta)


def launch(folder: Path, name: str, flags: list[str], env: dict[str, str] | None = None) -> Server:
    """``vae-serve`` on a free loopback port, its log ``folder/name.log``; not waited for yet."""
    # small batches: start-up warms up eight batch sizes, not 64
    small = ["--device", "cpu", "--max-batch-size", "8", "--max-sample-n", str(MAX_SAMPLE_N)]
    small += ["--max-body-bytes", str(MAX_BODY_BYTES)]
    unset = {"VAE_API_KEYS": "", "VAE_MODEL_DIR": "", "VAE_CORS_ORIGINS": ""}  # empty: unset
    return spawn_server(
        folder, [*small, *flags], {**os.environ, **unset, **(env or {})}, f"{name}.log"
    )


@contextlib.contextmanager
def started(folder: Path) -> Iterator[dict[str, Server]]:
    """Three servers, started together: ``bundled`` (the default weights), ``keyed``
    (tiny weights, with VAE_API_KEYS) and ``repo`` (a grey and two colour models)."""
    models = folder / "models"
    models.mkdir()
    grey = tiny_weights(models, "grey", channels=1, image_size=28, seed=0)
    tiny_weights(models, "colour", channels=3, image_size=32, seed=1)
    tiny_weights(models, "shapes", 3, 64, seed=2, architecture=SHAPES_ARCHITECTURE)
    launched = {
        "bundled": launch(folder, "bundled", ["--weights", str(DEFAULT_WEIGHTS)]),
        "keyed": launch(folder, "keyed", ["--weights", str(grey)], {"VAE_API_KEYS": KEY}),
        "repo": launch(folder, "repo", ["--model-dir", str(models), "--default-model", "grey"]),
    }
    try:
        for server in launched.values():
            server.wait_ready(timeout_s=120)
        yield launched
    finally:
        for server in launched.values():
            if server.process.poll() is None:
                server.process.kill()
                server.process.wait()


@pytest.fixture(scope="module")
def servers(playground_servers: dict[str, Server]) -> dict[str, Server]:
    """The three servers, started once for both browser modules (``playground_servers``,
    tests/conftest.py): the tests change nothing on them."""
    return playground_servers

"""Shared fixtures: tiny CPU configs and weights files made on the fly."""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from vae_service.model import VAE, VAEConfig, save_weights
from vae_service.server import cli
from vae_service.server.main import create_app
from vae_service.server.settings import Settings

# Tests share two cores with everything else; one thread each keeps them predictable.
torch.set_num_threads(1)
# An app started in this process sets Pillow's decompression-bomb limit for the whole
# process (VAE_MAX_PIXELS_PER_IMAGE; server/process.py): see pillow_limit_per_module.
PILLOW_MAX_PIXELS = Image.MAX_IMAGE_PIXELS

TINY = VAEConfig(image_size=28, channels=1, latent_dim=4, widths=(4, 8), hidden_dim=16)
# The onnx extra (onnxruntime to run, onnxscript to export): with it, VAE_BACKEND=auto
# serves CPU models with onnxruntime; without it, with torch.
HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnxscript"))
AUTO_BACKEND = "onnxruntime" if HAS_ONNX else "torch"


@pytest.fixture(autouse=True, scope="module")
def pillow_limit_per_module() -> None:
    """Each test module starts with Pillow's own limit, not the one an app of an earlier
    module left (tests/diffusers_vaes.py's 128 x 128 made Pillow refuse the traversal
    grids and report figures that later modules write and read back). An app a module
    starts sets its own limit as before: module-scoped fixtures run after this one."""
    Image.MAX_IMAGE_PIXELS = PILLOW_MAX_PIXELS


@pytest.fixture
def tiny_config() -> VAEConfig:
    return TINY


def make_tiny_model() -> VAE:
    torch.manual_seed(0)
    return VAE(TINY).eval()


def save_tiny_weights(folder: Path, model: VAE) -> Path:
    """A randomly initialised, self-describing weights file."""
    meta = {
        "data": {"name": "synthetic", "shape": [1, 28, 28]},
        "training": {"epochs": 0, "note": "random init for tests"},
    }
    return save_weights(folder / "tiny.safetensors", model, meta)


@pytest.fixture
def tiny_model(tiny_config: VAEConfig) -> VAE:
    return make_tiny_model()


@pytest.fixture
def tiny_weights(tmp_path: Path, tiny_model: VAE) -> Path:
    """The tiny weights in this test's own folder: a test may change or break them."""
    return save_tiny_weights(tmp_path, tiny_model)


@pytest.fixture(scope="session")
def served_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny weights, shared by every test's app: never written to."""
    return save_tiny_weights(tmp_path_factory.mktemp("served"), make_tiny_model())


def _write_idx(path: Path, array: np.ndarray) -> None:
    """LeCun's IDX format: zero, zero, type 0x08 (ubyte), rank, big-endian dims, data."""
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = bytes([0, 0, 8, array.ndim]) + dims + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    return write_idx_dir(tmp_path)


def write_idx_dir(parent: Path) -> Path:
    """A tiny Fashion-MNIST-like IDX directory: 64 train and 32 test 28 x 28 images,
    the train files gzipped as in the Debian package, the test files plain."""
    rng = np.random.default_rng(0)
    directory = parent / "idx"
    directory.mkdir()
    for split, n, suffix in (("train", 64, ".gz"), ("t10k", 32, "")):
        _write_idx(
            directory / f"{split}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28))
        )
        _write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, (n,)))
    return directory


def settings_for(weights: Path) -> Settings:
    """Service settings serving ``weights`` on the CPU, with small limits to hit, and
    small batches so that start-up warms up only eight batch sizes."""
    return Settings(
        weights=weights,
        device="cpu",
        max_body_bytes=256 * 1024,
        max_images_per_request=8,
        max_pixels_per_image=512 * 512,
        max_sample_n=32,
        max_interpolation_steps=16,
        max_batch_size=8,
    )


@pytest.fixture(scope="session")
def served_settings(served_weights: Path) -> Settings:
    return settings_for(served_weights)


@pytest.fixture
def api_settings(served_settings: Settings) -> Settings:
    return served_settings


@pytest.fixture(scope="module")
def client(served_settings: Settings) -> Iterator[TestClient]:
    """A client of the app through its real lifespan (weights loaded and warmed up),
    shared by a test module's tests; a test that changes its app's settings or state
    builds its own from ``api_settings``."""
    with TestClient(create_app(served_settings), raise_server_exceptions=False) as test_client:
        yield test_client


def image_file(
    width: int = 28, height: int = 28, mode: str = "L", fmt: str = "PNG", seed: int = 0
) -> bytes:
    """An image file of random pixels, encoded by Pillow."""
    rng = np.random.default_rng(seed)
    bands = len(Image.new(mode, (1, 1)).getbands())
    pixels = rng.integers(0, 256, (height, width, bands), dtype=np.uint8)
    img = Image.fromarray(pixels[..., 0] if bands == 1 else pixels).convert(mode)
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


@pytest.fixture
def make_image() -> Callable[..., bytes]:
    """``make_image(width, height, mode, fmt, seed)`` -> image file bytes."""
    return image_file


@contextlib.contextmanager
def uvicorn_thread(settings: Settings) -> Iterator[str]:
    """The app on uvicorn, on a free loopback port, in a thread of this process; yields
    its ``host:port``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = {"loop": cli.server_options(settings)["loop"]}  # as vae-serve
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), port=port, log_level="warning", **options)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def serve_in_thread() -> Callable[[Settings], contextlib.AbstractContextManager[str]]:
    """``with serve_in_thread(settings) as host_port:`` the app served in a thread."""
    return uvicorn_thread


@dataclass
class Server:
    """``vae-serve`` running in a subprocess on a free loopback port."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path  # its stderr: the JSON log lines

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS for the server process")

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                httpx.get(f"{self.url}/readyz", timeout=2).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError(
            f"server not ready (exit {self.process.poll()}): {self.log.read_text()}"
        )


def spawn_server(
    folder: Path, flags: Sequence[str], env: Mapping[str, str], log_name: str | None = None
) -> Server:
    """``vae-serve`` with these flags and this environment (PYTHONPATH: this checkout) on a
    free loopback port, its log in ``folder``; not waited for yet."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = folder / (log_name or f"server-{port}.log")
    command = [sys.executable, "-m", "vae_service.server.cli", "--host", "127.0.0.1"]
    command += ["--port", str(port), *flags]
    repo = Path(__file__).resolve().parents[1]
    environment = {**env, "PYTHONPATH": str(repo)}
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            command, env=environment, cwd=repo, stdout=subprocess.DEVNULL, stderr=stderr
        )
    return Server(f"http://127.0.0.1:{port}", process, log)


def launch_server(folder: Path, *flags: str, env: dict[str, str] | None = None) -> Server:
    """``vae-serve`` with these flags on a free loopback port, its log in ``folder``
    (``env``: its environment, else this process's), once it is ready."""
    server = spawn_server(folder, flags, os.environ if env is None else env)
    process = server.process
    try:
        server.wait_ready()
    except BaseException:
        process.kill()
        process.wait()
        raise
    return server


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """``start_server(*flags)`` -> a ready Server (``vae-serve`` with those flags)."""
    servers: list[Server] = []

    def start(*flags: str) -> Server:
        servers.append(launch_server(tmp_path, *flags))
        return servers[-1]

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


@pytest.fixture
def spread_model() -> VAE:
    """A tiny VAE whose posterior sits well away from the prior (KL of about 5 nats),
    so the IWAE bound has a gap to close."""
    torch.manual_seed(0)
    model = VAE(VAEConfig(latent_dim=4, widths=(4, 8), hidden_dim=16)).eval()
    with torch.no_grad():
        model.encoder.to_stats.weight.mul_(0.1)
        model.encoder.to_stats.bias.copy_(torch.tensor([2.0, -1, 1, 0, -2, -1, 0, -3]))
    return model


@pytest.fixture
def binary_images() -> torch.Tensor:
    return torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)).round()


@pytest.fixture(scope="session")
def playground_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """The playground's browser tests' three ``vae-serve`` processes (tests/browser_servers.py),
    started once for both browser modules rather than once for each."""
    from tests.browser_servers import started  # it imports this module: not at the top

    with started(tmp_path_factory.mktemp("playground")) as servers:
        yield servers

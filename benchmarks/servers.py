"""The servers under test, each started in its own subprocess on a free local port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from vae_service.model import VAE, VAEConfig, save_weights
from vae_service.model.pretrained import DEFAULT_WEIGHTS

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    log: Path

    def rss_mib(self) -> float:
        """Resident memory of the server process (not its children)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
        return int(kib) / 1024

    def stop(self) -> None:
        # LitServe runs worker processes: signal the whole process group.
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def weights_or_random(weights: Path | None) -> tuple[Path, str]:
    """The weights to serve, and how to describe them. Throughput does not depend on
    trained values, so without the default weights a random-init model of the default
    config stands in (and the report says so)."""
    if weights is not None:
        return weights, str(weights)
    if DEFAULT_WEIGHTS.is_file():
        return DEFAULT_WEIGHTS, f"default ({DEFAULT_WEIGHTS.name})"
    path = Path(tempfile.mkdtemp()) / "random-default-config.safetensors"
    save_weights(path, VAE(VAEConfig()).eval(), {"data": {"name": "none"}, "training": {}})
    return path, "random init, default config (default weights not trained yet)"


def command(name: str, weights: Path, port: int, threads: int) -> list[str]:
    if name == "ours":
        return [sys.executable, "-m", "vae_service.server.cli", "--weights", str(weights),
                "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    module = {"litserve": "benchmarks.litserve_server", "naive": "benchmarks.naive_server"}[name]
    return [sys.executable, "-m", module, "--weights", str(weights),
            "--port", str(port), "--threads", str(threads)]  # fmt: skip


READY_PATH = {"ours": "/readyz", "litserve": "/health", "naive": "/healthz"}


def start(name: str, weights: Path, threads: int, env: dict[str, str]) -> Server:
    """Start one server and wait until it answers its readiness check."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
    process = subprocess.Popen(
        command(name, weights, port, threads),
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(name, process, f"http://127.0.0.1:{port}", log)
    _wait_ready(server, READY_PATH[name])
    if name == "ours" and int(env.get("VAE_WORKERS", "1")) > 1:
        wait_for_workers(server, int(env["VAE_WORKERS"]))
    return server


def wait_for_workers(server: Server, count: int, timeout_s: float = 300) -> None:
    """Until every worker has loaded its model (/metrics counts the loads of all of
    them): a load generator's connections would otherwise all go to the first ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
        loads = sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "vae_model_loads_total" and sample.labels["outcome"] == "success"
        )
        if loads >= count:
            time.sleep(2.0)  # the last one's warm-up
            return
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"{count} workers not ready in {timeout_s} s")


def _wait_ready(server: Server, path: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited: {server.log.read_text()[-2000:]}")
        try:
            if httpx.get(server.base_url + path, timeout=2).is_success:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"{server.name} not ready after {timeout_s:.0f} s; log: {server.log}")

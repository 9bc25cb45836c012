"""Memory per model in the model repository: ``vae-serve`` with VAE_MODEL_DIR holding
1, 4 and 16 copies of the bundled weights (distinct names, so distinct models), and,
for comparison, one model without a repository (VAE_WEIGHTS).

For each count: the time from starting the process to /models showing every model
ready (each loaded and warmed up), the resident memory (RSS) once it has answered one
/sample per model and settled, the per-model increment over one model, and the
process's thread count (/proc/PID/status). Run::

    python -m benchmarks.repository_memory                # 1, 4 and 16 models
    python -m benchmarks.repository_memory --counts 1 2 8
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from benchmarks.servers import ROOT, free_port
from vae_service.model.pretrained import DEFAULT_WEIGHTS
from vae_service.server.cpus import usable_cpus


@dataclass
class Measurement:
    label: str
    models: int
    start_up_s: float
    rss_mib: float
    threads: int


def proc_status(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return line.split()[1]
    raise KeyError(key)


def serve(flags: list[str], expected: int, timeout_s: float, settle_s: float) -> Measurement:
    """Start vae-serve with ``flags``; wait until /models lists ``expected`` ready
    models; ask each for one sample; settle; measure; stop it."""
    port = free_port()
    command = [sys.executable, "-m", "vae_service.server.cli",
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
               "--log-level", "warning", "--access-log", "false",
               *flags]  # fmt: skip
    log = Path(tempfile.mkstemp(prefix="repository-memory-", suffix=".log")[1])
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=os.environ.copy(), stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        names = wait_ready(url, process, expected, timeout_s, log)
        start_up_s = time.monotonic() - started
        with httpx.Client(base_url=url, timeout=60) as client:
            for name in names:
                client.get(f"/models/{name}/sample?n=8&seed=1").raise_for_status()
        time.sleep(settle_s)
        rss_mib = int(proc_status(process.pid, "VmRSS")) / 1024
        threads = int(proc_status(process.pid, "Threads"))
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return Measurement("", expected, start_up_s, rss_mib, threads)


def wait_ready(
    url: str, process: subprocess.Popen[bytes], expected: int, timeout_s: float, log: Path
) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vae-serve exited: {log.read_text()[-2000:]}")
        try:
            models = httpx.get(f"{url}/models", timeout=2).json()["models"]
        except (httpx.HTTPError, ValueError, KeyError):
            models = []
        ready = [m["name"] for m in models if m["state"] == "ready"]
        if len(ready) == expected:
            return ready
        time.sleep(0.1)
    raise RuntimeError(f"not {expected} models ready after {timeout_s:.0f} s; log: {log}")


def repository_of(folder: Path, weights: Path, count: int) -> None:
    """``count`` copies of ``weights``: fashion-mnist (the default) and copy-01, ..."""
    for stale in folder.glob("*.safetensors"):
        stale.unlink()
    for i in range(count):
        name = "fashion-mnist" if i == 0 else f"copy-{i:02d}"
        shutil.copyfile(weights, folder / f"{name}.safetensors")


def report(results: list[Measurement], weights: Path) -> str:
    base = next((r for r in results if r.label.startswith("VAE_MODEL_DIR") and r.models == 1), None)
    lines = [
        f"Weights: `{weights.name}` ({weights.stat().st_size / 2**20:.1f} MiB on disk), "
        f"{usable_cpus()} usable CPUs, {platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}.",
        "",
        "| setup | models | start-up to all ready (s) | RSS (MiB) | per model over 1 (MiB) "
        "| threads |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        increment = "–"
        if base is not None and r.label == base.label and r.models > 1:
            increment = f"{(r.rss_mib - base.rss_mib) / (r.models - 1):.1f}"
        lines.append(
            f"| {r.label} | {r.models} | {r.start_up_s:.1f} | {r.rss_mib:.0f} | {increment} "
            f"| {r.threads} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--settle-s", type=float, default=2.0)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    args = parser.parse_args()

    results = []
    single = serve(["--weights", str(args.weights)], 1, args.timeout_s, args.settle_s)
    single.label = "VAE_WEIGHTS (no repository)"
    results.append(single)
    print(f"single model: {single}", flush=True)
    with tempfile.TemporaryDirectory(prefix="repository-memory-") as scratch:
        folder = Path(scratch)
        for count in args.counts:
            repository_of(folder, args.weights, count)
            result = serve(["--model-dir", str(folder)], count, args.timeout_s, args.settle_s)
            result.label = "VAE_MODEL_DIR"
            results.append(result)
            print(f"{count} models: {result}", flush=True)
    print()
    print(report(results, args.weights))


if __name__ == "__main__":
    main()

"""torch against onnxruntime, in-process, one thread, the same weights.

    python -m benchmarks.backends [--weights FILE] [--seconds 2] [--batches 1 256] [--served]

Each row runs one batch function (the service's batch functions: what the batcher calls)
over and over for ``--seconds`` after a warm-up, and prints images (or latents) per
second for each backend and their ratio. ``--served`` then starts ``vae-serve`` once per
backend (one after the other, default settings but VAE_BACKEND) and drives it with wrk
(else httpx): single-image and 256-image ``.npy`` /encode, 256-latent JSON /decode, at
the concurrencies given. Needs the onnx extra.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.load import Request, drive
from benchmarks.servers import start
from vae_service.model.onnx_export import cached_export
from vae_service.model.pretrained import DEFAULT_WEIGHTS
from vae_service.server.backends import Backend, OnnxBackend, TorchBackend
from vae_service.server.runtime import load_checkpoint


def rate(fn: Callable[[torch.Tensor], object], batch: torch.Tensor, seconds: float) -> float:
    for _ in range(3):
        fn(batch)
    runs, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        fn(batch)
        runs += 1
    return runs * batch.shape[0] / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--served", action="store_true", help="also through vae-serve")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    checkpoint = load_checkpoint(args.weights, "cpu")
    with tempfile.TemporaryDirectory() as cache:
        export = cached_export(checkpoint, cache)
        backends: dict[str, Backend] = {
            "torch": TorchBackend(checkpoint.model),
            "onnxruntime": OnnxBackend(export, threads=1),
        }
        cfg = checkpoint.config
        print(f"torch {torch.__version__}, weights {args.weights.name}, one thread, img/s")
        print(f"{'op':<7} {'batch':>5} {'torch':>10} {'onnxruntime':>12} {'ratio':>6}")
        for op in ("encode", "decode"):
            for n in args.batches:
                shape = (n, *cfg.image_shape) if op == "encode" else (n, cfg.latent_dim)
                batch = torch.rand(shape)
                rates = {}
                for name, backend in backends.items():
                    fn = backend.encode if op == "encode" else backend.decode
                    with torch.inference_mode():
                        rates[name] = rate(fn, batch, args.seconds)
                ratio = rates["onnxruntime"] / rates["torch"]
                print(
                    f"{op:<7} {n:>5} {rates['torch']:>10,.0f} "
                    f"{rates['onnxruntime']:>12,.0f} {ratio:>5.2f}x"
                )
        if args.served:
            served(args.weights, cache, args.concurrency, max(args.seconds, 3.0))
    return 0


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def served(weights: Path, cache: str, concurrency: list[int], seconds: float) -> None:
    """Each backend behind vae-serve, one at a time, so they never share the CPUs."""
    rng = np.random.default_rng(0)
    npy_type = "application/x-npy"
    one = npy(rng.integers(0, 256, (1, 28, 28), np.uint8))
    many = npy(rng.integers(0, 256, (256, 28, 28), np.uint8))
    latents = json.dumps({"z": rng.standard_normal((256, 32)).round(4).tolist()}).encode()
    requests = {
        "encode 1 img": (Request("POST", "/encode", one, npy_type), 1),
        "encode 256 img": (Request("POST", "/encode", many, npy_type), 256),
        "decode 256 z": (Request("POST", "/decode?format=npy", latents), 256),
    }
    results: dict[tuple[str, int], dict[str, tuple[float, float, int]]] = {}
    for backend in ("torch", "onnxruntime"):
        env = {"VAE_BACKEND": backend, "VAE_ONNX_CACHE_DIR": cache, "VAE_DEVICE": "cpu"}
        server = start("ours", weights, 1, env)
        try:
            for label, (request, images) in requests.items():
                for c in concurrency:
                    drive(server.base_url, request, c, 1.0)  # warm the connections
                    load = drive(server.base_url, request, c, seconds)
                    figures = (load.rate * images, load.p50_ms, load.errors)
                    results.setdefault((label, c), {})[backend] = figures
        finally:
            server.stop()
    print("served (vae-serve, default settings): images/s of answered requests, p50, errors")
    print(f"{'request':<15} {'c':>3} {'torch':>22} {'onnxruntime':>22} {'ratio':>6}")
    for (label, c), row in results.items():
        cells = [f"{r:>9,.0f} {p50:>6.1f}ms {e:>4}" for r, p50, e in row.values()]
        ratio = row["onnxruntime"][0] / row["torch"][0] if row["torch"][0] else float("nan")
        print(f"{label:<15} {c:>3} {cells[0]:>22} {cells[1]:>22} {ratio:>5.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())

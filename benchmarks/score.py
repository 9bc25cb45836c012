"""/score's throughput against /encode's on the bundled Fashion-MNIST model, served and
in process, in paired rounds that alternate the two on one machine (BENCHMARKS.md,
"Anomaly scores"). A score costs one encode plus k decodes per image (the IWAE bound's
draws), so its per-image cost is reported against /encode's, served and in process.

    python -m benchmarks.score                  # 3 rounds of 4 s per workload
    python -m benchmarks.score --quick          # a dry run: 1 round of 0.5 s
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import httpx
import numpy as np
import torch

from benchmarks import servers, workloads
from vae_service.model import load_weights
from vae_service.model.anomaly import Calibration, score_images
from vae_service.model.pretrained import DEFAULT_WEIGHTS
from vae_service.model.prior import FittedPrior

NPY = {"content-type": "application/x-npy"}
Work = Callable[[], None]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="images per request")
    p.add_argument("--k", type=int, nargs="+", default=[16], help="/score k (16: calibrated)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4.0, help="per workload per round")
    p.add_argument("--quick", action="store_true", help="1 round of 0.5 s: a dry run")
    return p.parse_args(argv)


def rate(work: Work, images: int, seconds: float) -> float:
    """Images per second of ``work`` (one call: ``images`` images) run for ``seconds``."""
    work()  # the first call of a shape builds its kernels
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        work()
        done += images
    return done / elapsed


def served(http: httpx.Client, route: str, body: bytes) -> Work:
    def post() -> None:
        http.post(route, content=body, headers=NPY).raise_for_status()

    return post


def in_process(batch: torch.Tensor, k: int | None) -> Work:
    ckpt = load_weights(DEFAULT_WEIGHTS)
    prior, calibration = FittedPrior.from_checkpoint(ckpt), Calibration.from_checkpoint(ckpt)

    def run() -> None:
        with torch.inference_mode():
            if k is None:
                ckpt.model.encode(batch)
            else:
                score_images(ckpt.model, batch, calibration, k=k, seed=0, prior=prior)

    return run


def workloads_for(http: httpx.Client, n: int, ks: list[int]) -> dict[str, Work]:
    pixels = workloads.test_images(n, load_weights(DEFAULT_WEIGHTS).config)
    body = workloads.npy_body(pixels)
    batch = torch.from_numpy(pixels).float().div(255).unsqueeze(1)
    works = {"served /encode": served(http, "/encode?format=npy", body)}
    works |= {f"served /score k={k}": served(http, f"/score?k={k}", body) for k in ks}
    works["in-process encode"] = in_process(batch, None)
    works |= {f"in-process score k={k}": in_process(batch, k) for k in ks}
    return works


def measure(works: dict[str, Work], n: int, rounds: int, seconds: float) -> dict[str, float]:
    """Median images/s over rounds that run every workload in turn (paired on time)."""
    runs: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(rounds):
        for name, work in works.items():
            runs[name].append(rate(work, n, seconds))
    return {name: statistics.median(r) for name, r in runs.items()}


def report(n: int, rates: dict[str, float]) -> None:
    print(f"\n{n} image(s) per request: images/s (median), and cost per image vs encode")
    for name, value in rates.items():
        base = rates["served /encode" if name.startswith("served") else "in-process encode"]
        print(f"  {name:24s} {value:9.0f} img/s   {base / value:6.1f}x encode's cost")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rounds, seconds = (1, 0.5) if args.quick else (args.rounds, args.seconds)
    torch.set_num_threads(1)  # as the served model's one thread on 2 cores (runtime.py)
    server = servers.start("ours", DEFAULT_WEIGHTS, 1, {})
    try:
        with httpx.Client(base_url=server.base_url, timeout=120) as http:
            for n in args.batches:
                report(n, measure(workloads_for(http, n, args.k), n, rounds, seconds))
    finally:
        server.stop()
    print(f"\n{np.__name__} {np.__version__}, torch {torch.__version__}, {rounds} rounds")


if __name__ == "__main__":
    main()

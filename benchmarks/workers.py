"""vae-serve with 1 and with N worker processes, one run: single-image /encode (base64-PNG
JSON) at c=32 and 256-image npy /encode at c=4, with the machine's load average.

    python -m benchmarks.workers --workers 1,2 --seconds 10

Each worker gets the service's default torch threads (its share of the CPUs less one,
at least one); wrk when installed, else the async httpx client (benchmarks/load.py).
"""

from __future__ import annotations

import argparse
import os

from benchmarks import servers, workloads
from benchmarks.load import drive, have_wrk
from vae_service.model import load_weights

SINGLE = "encode 1 image, JSON"
BATCHED = f"encode {workloads.BATCH} images, npy"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--single-concurrency", type=int, default=32)
    parser.add_argument("--batch-concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    weights, described = servers.weights_or_random(None)
    work = {w.name: w for w in workloads.build(load_weights(weights, "cpu").model)}
    rows = ((SINGLE, args.single_concurrency), (BATCHED, args.batch_concurrency))
    head = [
        f"weights: {described}; {os.cpu_count()} CPUs; {args.device}; load generator: "
        f"{'wrk -t1' if have_wrk() else 'httpx'}; {args.seconds:.0f} s per row",
        "",
        "| workers | workload | c | req/s | images/s | p50 ms | p99 ms | errors | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(head), flush=True)  # each row as it is measured: a cut run keeps them
    for count in (int(n) for n in args.workers.split(",")):
        env = {"VAE_WORKERS": str(count), "VAE_DEVICE": args.device, "VAE_ACCESS_LOG": "false"}
        server = servers.start("ours", weights, 1, env)
        try:
            for name, concurrency in rows:
                request = work[name].requests["ours"]
                drive(server.base_url, request, concurrency, 1.0)  # warm-up
                load = drive(server.base_url, request, concurrency, args.seconds)
                images = load.rate * work[name].images
                row = (
                    f"| {count} | {name} | {concurrency} | {load.rate:,.0f} | {images:,.0f} | "
                    f"{load.p50_ms:.1f} | {load.p99_ms:.1f} | {load.errors} | "
                    f"{os.getloadavg()[0]:.2f} |"
                )
                print(row, flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()

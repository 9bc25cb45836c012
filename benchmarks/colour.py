"""Encode and decode throughput of a 64x64 RGB model, the ``shapes`` architecture
(issue 17): the same work in-process and over HTTP against our server, one image (or
latent) a request and 256 a request.

    python -m benchmarks.colour                             # about 3 minutes on 2 cores
    python -m benchmarks.colour --write BENCHMARKS.md       # into its own marked section

Weights: --weights, else the bundled shapes model (model/pretrained/models/shapes.safetensors);
the report says which weights ran. Input
images are random RGB pixels (benchmarks/workloads.py): noise makes larger PNGs than
flat-coloured shapes, so the JSON encode rows include a pessimistic PNG decoding cost.
CPU only, and no peers: bench.py compares with LitServe and a naive server.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import orjson
import torch

from benchmarks import bench, servers, workloads
from benchmarks.load import Load, Request, drive
from vae_service.model import VAE, load_weights
from vae_service.model.pretrained import BUNDLED_MODELS
from vae_service.server.imaging import encode_base64_pngs
from vae_service.server.runtime import torch_threads

BUNDLED = BUNDLED_MODELS / "shapes.safetensors"
B = workloads.BATCH
# The rows, by the names benchmarks/workloads.py gives them, and the one added here.
KEPT = (
    "encode 1 image, JSON",
    f"encode {B} images, JSON",
    f"encode {B} images, npy",
    f"decode {B} latents, JSON",
    f"decode {B} latents, npy",
)
DECODE_ONE = "decode 1 latent, JSON"
WRITE_START = "<!-- benchmarks.colour: start of its report; the run rewrites what follows -->"
WRITE_END = "<!-- benchmarks.colour: end of its report -->"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, help="a 64x64 RGB weights file (see above)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    parser.add_argument(
        "--concurrency", default="1,8,32", help="levels for the one-image rows, comma-separated"
    )
    parser.add_argument("--batch-concurrency", type=int, default=4)
    parser.add_argument(
        "--threads", type=int, default=torch_threads(0), help="torch threads, server and in-process"
    )
    parser.add_argument("--write", type=Path, help="also write the report into this file")
    args = parser.parse_args(argv)
    args.levels = tuple(int(c) for c in args.concurrency.split(","))
    # what bench.ours_env and bench.measure_server read
    args.device, args.precision = "cpu", "fp32"
    return args


def shapes_weights(given: Path | None) -> tuple[Path, str]:
    """The weights to run, and how the report describes them."""
    if given is not None:
        return given, str(given)
    return BUNDLED, f"the bundled shapes model ({BUNDLED.name})"


def decode_one(model: VAE) -> workloads.Workload:
    """One latent a request, answered as one base64 PNG, as /decode does."""
    generator = torch.Generator().manual_seed(workloads.SEED)
    z = torch.randn((1, model.cfg.latent_dim), generator=generator)
    forward = workloads.forward_on(workloads.CPU, None)
    body = orjson.dumps({"z": z.tolist()})
    return workloads.Workload(
        DECODE_ONE,
        1,
        {"ours": Request("POST", "/decode", body)},
        lambda: encode_base64_pngs(forward(lambda x: (model.decode(x),), z)[0].numpy()),
    )


def build(weights: Path) -> list[workloads.Workload]:
    model = load_weights(weights, workloads.CPU).model
    cfg = model.cfg
    if (cfg.image_size, cfg.channels) != (64, 3):
        raise SystemExit(f"{weights} is {cfg.channels}x{cfg.image_size}², not a 64x64 RGB model")
    by_name = {w.name: w for w in workloads.build(model)}
    work = [by_name[name] for name in KEPT]
    return [work[0], decode_one(model), *work[1:]]


def measure_http(
    weights: Path, all_work: list[workloads.Workload], args: argparse.Namespace
) -> dict[tuple[str, int], Load]:
    server = servers.start("ours", weights, args.threads, bench.ours_env(args))
    try:
        loads = {}
        for work in all_work:
            levels = args.levels if work.images == 1 else (args.batch_concurrency,)
            drive(server.base_url, work.requests["ours"], levels[-1], 1.0)  # warm-up
            for concurrency in levels:
                load = drive(server.base_url, work.requests["ours"], concurrency, args.seconds)
                loads[work.name, concurrency] = load
                print(f"{work.name:26} c={concurrency:<3} {bench.describe(load)}", file=sys.stderr)
        return loads
    finally:
        server.stop()


def table(
    all_work: list[workloads.Workload],
    in_process: dict[str, float],
    loads: dict[tuple[str, int], Load],
) -> str:
    lines = [
        "| workload | conc. | HTTP req/s | HTTP img/s | p50 ms | p99 ms | in-process img/s "
        "| HTTP / in-process | errors |",
        "|" + "---|" * 9,
    ]
    for work in all_work:
        for (name, c), load in loads.items():
            if name != work.name:
                continue
            rate = load.rate * work.images
            lines.append(
                f"| {name} | {c} | {load.rate:,.1f} | {rate:,.0f} | {load.p50_ms:.1f} "
                f"| {load.p99_ms:.1f} | {in_process[name]:,.0f} "
                f"| {rate / in_process[name]:.2f} | {load.errors} |"
            )
    return "\n".join(lines)


def report(table_text: str, described: str, load: float, args: argparse.Namespace) -> str:
    command = shlex.join(["python", "-m", "benchmarks.colour", *sys.argv[1:]])
    return "\n\n".join(
        [
            f"Machine: {bench.machine()}. 1-minute load average when the run started: {load:.2f}.",
            f"Weights: {described}. Device: cpu, fp32. Torch threads, in the server and "
            f"in-process: {args.threads}. Each figure: {args.seconds:g} s of load after a "
            "1 s warm-up.",
            table_text,
            f"Command: `{command}` ({time.strftime('%Y-%m-%d')}).",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load = os.getloadavg()[0]
    weights, described = shapes_weights(args.weights)
    all_work = build(weights)
    in_process = bench.measure_in_process(all_work, args.seconds, args.threads)
    loads = measure_http(weights, all_work, args)
    text = report(table(all_work, in_process, loads), described, load, args)
    print(text)
    if args.write:
        bench.write_section(args.write, text, WRITE_START, WRITE_END)


if __name__ == "__main__":
    main()

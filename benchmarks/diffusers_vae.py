"""diffusers VAEs served (vae-serve with VAE_MODEL_DIR holding the folders, through
/remote-decode and /remote-encode, raw float32 tensors) against the same model run by
diffusers in process with the same torch thread count, and against a naive FastAPI
wrapper around diffusers (benchmarks/diffusers_naive.py: one request, one forward pass).

The models are built here with random weights and written with save_pretrained: an
SD-1.5-shaped AutoencoderKL (its real architecture) and a TAESD-shaped AutoencoderTiny
(diffusers' defaults). Speed does not depend on trained values. One client sends its
requests one after another, so each figure is one request's full path.

    python -m benchmarks.diffusers_vae              # 256², 1 and 4 images a request
    python -m benchmarks.diffusers_vae --quick      # tiny configs, 64²: a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import httpx
import torch

from benchmarks import servers
from benchmarks.servers import ROOT, Server, free_port
from vae_service.server.runtime import torch_threads

SD15 = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
}
QUICK_KL = {**SD15, "block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 8}
QUICK_KL.update(
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2
)
QUICK_TINY = {"encoder_block_out_channels": (8,) * 4, "decoder_block_out_channels": (8,) * 4}
TARGET = 0.9  # served ÷ in process


@dataclass(frozen=True)
class Case:
    model: str  # the folder's name
    op: str  # decode or encode
    images: int  # a request's
    shape: tuple[int, ...]  # the request tensor's


@dataclass(frozen=True)
class Row:
    case: Case
    in_process: float  # images/s
    served: float
    naive: float

    @property
    def ratio(self) -> float:
        return self.served / self.in_process


def build_models(folder: Path, quick: bool) -> dict[str, Any]:
    """The two models, saved under ``folder``, by name, in eval mode."""
    torch.manual_seed(0)
    models = {
        "sd15": diffusers.AutoencoderKL(**(QUICK_KL if quick else SD15)),
        "taesd": diffusers.AutoencoderTiny(**(QUICK_TINY if quick else {})),
    }
    for name, model in models.items():
        model.eval().save_pretrained(folder / name)
    return models


def cases(models: dict[str, Any], side: int, batches: tuple[int, ...]) -> list[Case]:
    out = []
    for name, model in models.items():
        factor = 2 ** (len(model.config.get("block_out_channels")) - 1)
        latent = (model.config.latent_channels, side // factor, side // factor)
        for n in batches:
            out.append(Case(name, "decode", n, (n, *latent)))
            out.append(Case(name, "encode", n, (n, 3, side, side)))
    return out


def rate(fn: Callable[[], object], images: int, repeats: int) -> float:
    """Images/s from the median of ``repeats`` timed calls, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return images / statistics.median(times)


def tensor_for(case: Case) -> torch.Tensor:
    tensor = torch.randn(case.shape, generator=torch.Generator().manual_seed(0))
    return tensor.clamp(-1, 1) if case.op == "encode" else tensor


def in_process(model: Any, case: Case) -> Callable[[], object]:
    x = tensor_for(case)

    def run() -> object:
        with torch.inference_mode():
            return model.decode(x).sample if case.op == "decode" else model.encode(x)

    return run


def over_http(client: httpx.Client, url: str, case: Case) -> Callable[[], object]:
    body = tensor_for(case).numpy().tobytes()
    params = {"shape": list(case.shape), "dtype": "float32", "output_type": "pt"}

    def run() -> object:
        reply = client.post(f"{url}/remote-{case.op}", content=body, params=params)
        reply.raise_for_status()
        return reply.content

    return run


def spawn(name: str, module: str, args: list[str], ready_path: str) -> Server:
    """``python -m module args --port P`` on a free port, once it answers ``ready_path``."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix=f"bench-diffusers-{name}-", suffix=".log")[1])
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args, "--port", str(port)],
        cwd=ROOT,
        env=os.environ,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(name, process, f"http://127.0.0.1:{port}", log)
    servers._wait_ready(server, ready_path)
    return server


def start_served(folder: Path, threads: int) -> Server:
    # A 20 s request timeout (the default) is less than one SD-1.5 batch of four on 2 cores.
    args = ["--model-dir", str(folder), "--default-model", "sd15",
            "--torch-threads", str(threads), "--request-timeout-s", "600",
            "--host", "127.0.0.1", "--log-level", "warning"]  # fmt: skip
    return spawn("ours", "vae_service.server.cli", args, "/readyz")


def start_naive(folder: Path, threads: int) -> Server:
    args = ["--folder", str(folder), "--threads", str(threads)]
    return spawn("naive", "benchmarks.diffusers_naive", args, "/healthz")


def measure(models: dict[str, Any], folder: Path, all_cases: list[Case], repeats: int) -> list[Row]:
    threads = torch_threads(0)  # what vae-serve picks on this machine
    torch.set_num_threads(threads)
    local = {
        case: rate(in_process(models[case.model], case), case.images, repeats) for case in all_cases
    }
    served: dict[Case, float] = {}
    naive: dict[Case, float] = {}
    ours = start_served(folder, threads)
    try:
        with httpx.Client(timeout=600) as client:
            for case in all_cases:
                url = f"{ours.base_url}/models/{case.model}"
                served[case] = rate(over_http(client, url, case), case.images, repeats)
    finally:
        ours.stop()
    for name in models:
        server = start_naive(folder / name, threads)
        try:
            with httpx.Client(timeout=600) as client:
                for case in (c for c in all_cases if c.model == name):
                    naive[case] = rate(
                        over_http(client, server.base_url, case), case.images, repeats
                    )
        finally:
            server.stop()
    return [Row(c, local[c], served[c], naive[c]) for c in all_cases]


def table(rows: list[Row], side: int) -> str:
    lines = [
        f"| model | op | {side}² images a request | in process (img/s) | served (img/s) "
        "| naive FastAPI (img/s) | served ÷ in process | served ÷ naive |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        c = row.case
        mark = "" if row.ratio >= TARGET else " (below 0.9)"
        lines.append(
            f"| {c.model} | {c.op} | {c.images} | {row.in_process:.2f} | {row.served:.2f} "
            f"| {row.naive:.2f} | {row.ratio:.2f}{mark} | {row.served / row.naive:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny configs at 64², a smoke run")
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    side = 64 if args.quick else args.side
    with tempfile.TemporaryDirectory(prefix="diffusers-bench-") as tmp:
        models = build_models(Path(tmp), args.quick)
        rows = measure(models, Path(tmp), cases(models, side, (1, 4)), args.repeats)
    report = table(rows, side)
    print(report)
    return report


if __name__ == "__main__":
    main()

"""diffusers VAEs on a GPU, served against in process: SD-1.5- and SDXL-shaped
AutoencoderKL (the real architecture, random weights written with save_pretrained)
decoding one latent to a 512² and a 1024² image, in fp32, fp16 and bf16, tiled and
untiled. Each row: the median latency of one request (served: /remote-decode, raw float32
latents in, a raw float32 image out; in process: diffusers' own model, as a pipeline
holds it), images/s, the peak GPU memory in process, and served ÷ in process (target
0.9). The served figure includes the HTTP round trip and the tensor's bytes both ways.

In process follows what diffusers' pipelines do with these dtypes, as the service does:
fp16 weights of a config with force_upcast (both of these) decode in float32, bf16 is
not upcast. vae-serve runs with --precision for that dtype. Tiled: diffusers'
enable_tiling on both sides (an AutoencoderKL tiles only images larger than its config's
sample_size: 512 for SD 1.5, 1024 for SDXL, so those rows match their untiled twins).
Hugging Face's published local figures are the anchor: SDXL 1024² 0.256 s on an RTX 4090;
SD 1.5 1024² 0.148 s, or 0.301 s tiled.

    python -m benchmarks.diffusers_gpu                          # on CUDA, every row
    python -m benchmarks.diffusers_gpu --device cpu --quick     # a dry run: tiny configs,
                                                                # 64² and 128², fp32
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import httpx
import torch

from benchmarks.diffusers_vae import QUICK_KL, SD15, TARGET, spawn
from benchmarks.servers import Server
from vae_service.server.runtime import torch_threads

MODELS = {
    "sd15": {**SD15, "scaling_factor": 0.18215},
    "sdxl": {**SD15, "sample_size": 1024, "scaling_factor": 0.13025},
}
QUICK_MODELS = {"sd15": {**QUICK_KL, "sample_size": 64}, "sdxl": {**QUICK_KL, "sample_size": 128}}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MIB = 2**20


@dataclass(frozen=True)
class Case:
    model: str
    side: int  # the decoded image's, in pixels
    precision: str
    tile: bool


@dataclass(frozen=True)
class Row:
    case: Case
    in_process_s: float  # median latency of one decode
    served_s: float
    peak_mib: float | None  # in process, torch.cuda.max_memory_allocated; None on the CPU

    @property
    def ratio(self) -> float:
        """Served ÷ in process, in images/s."""
        return self.in_process_s / self.served_s


def build_models(folder: Path, quick: bool) -> None:
    """Both models, saved in float32 under ``folder``."""
    for name, config in (QUICK_MODELS if quick else MODELS).items():
        torch.manual_seed(0)
        diffusers.AutoencoderKL(**config).eval().save_pretrained(folder / name)


def latents(folder: Path, case: Case) -> torch.Tensor:
    blocks = len(diffusers.AutoencoderKL.load_config(folder / case.model)["block_out_channels"])
    side = case.side // 2 ** (blocks - 1)
    return torch.randn((1, 4, side, side), generator=torch.Generator().manual_seed(0))


def median_s(fn: Callable[[], object], repeats: int, device: str) -> float:
    """The median of ``repeats`` timed calls, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def pipeline_vae(folder: Path, precision: str, device: str) -> Any:
    """The VAE as a diffusers pipeline holds it in that dtype (force_upcast honoured)."""
    model = diffusers.AutoencoderKL.from_pretrained(folder, torch_dtype=DTYPES[precision])
    if model.dtype == torch.float16 and model.config.force_upcast:
        model = model.to(torch.float32)
    return model.to(device).eval()


def in_process(folder: Path, case: Case, device: str, repeats: int) -> tuple[float, float | None]:
    model = pipeline_vae(folder / case.model, case.precision, device)
    (model.enable_tiling if case.tile else model.disable_tiling)()
    z = latents(folder, case).to(device, model.dtype)

    def run() -> object:
        with torch.inference_mode():
            return model.decode(z).sample.float().cpu()

    if device != "cuda":
        return median_s(run, repeats, device), None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    latency = median_s(run, repeats, device)
    return latency, torch.cuda.max_memory_allocated() / MIB


def over_http(client: httpx.Client, url: str, z: torch.Tensor, tile: bool) -> Callable[[], object]:
    params = {"shape": list(z.shape), "output_type": "pt", "tile": str(tile).lower()}
    body = z.numpy().tobytes()

    def run() -> object:
        reply = client.post(f"{url}/remote-decode", content=body, params=params)
        reply.raise_for_status()
        return reply.content

    return run


def start_served(folder: Path, device: str, precision: str) -> Server:
    args = ["--model-dir", str(folder), "--default-model", "sd15", "--device", device,
            "--precision", precision, "--request-timeout-s", "600",
            "--host", "127.0.0.1", "--log-level", "warning"]  # fmt: skip
    return spawn(f"ours-{precision}", "vae_service.server.cli", args, "/readyz")


def server_gpu_mib(server: Server) -> str:
    """The server process's GPU memory as nvidia-smi sees it (the caching allocator's)."""
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    try:
        listed = subprocess.run(query, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "n/a"
    used = {int(p): m.strip() for p, m in (line.split(",") for line in listed.splitlines())}
    return f"{used[server.process.pid]} MiB" if server.process.pid in used else "n/a"


def served_latencies(
    folder: Path, cases: list[Case], device: str, repeats: int
) -> tuple[dict[Case, float], str]:
    """One server in the cases' precision: each case's latency, and its GPU memory."""
    server = start_served(folder, device, cases[0].precision)
    try:
        with httpx.Client(timeout=600) as client:
            latency = {
                c: median_s(
                    over_http(
                        client, f"{server.base_url}/models/{c.model}", latents(folder, c), c.tile
                    ),
                    repeats,
                    "cpu",  # the answer is read whole: nothing left to wait for
                )
                for c in cases
            }
        return latency, server_gpu_mib(server)
    finally:
        server.stop()


def measure(
    folder: Path, cases: list[Case], device: str, repeats: int
) -> tuple[list[Row], dict[str, str]]:
    """Every case, served and in process; and per precision the server's GPU memory."""
    rows, memory = [], {}
    for precision in dict.fromkeys(c.precision for c in cases):
        mine = [c for c in cases if c.precision == precision]
        served, memory[precision] = served_latencies(folder, mine, device, repeats)
        for c in mine:
            latency, peak = in_process(folder, c, device, repeats)
            rows.append(Row(c, latency, served[c], peak))
    return rows, memory


def cases(sides: tuple[int, ...], precisions: tuple[str, ...]) -> list[Case]:
    return [
        Case(model, side, precision, tile)
        for precision in precisions
        for model in MODELS
        for side in sides
        for tile in (False, True)
    ]


def table(rows: list[Row], memory: dict[str, str]) -> str:
    lines = [
        "| model | image | dtype | tiled | in process (s) | served (s) | served (img/s) "
        "| peak GPU memory in process | served ÷ in process |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        c = row.case
        peak = "n/a" if row.peak_mib is None else f"{row.peak_mib:,.0f} MiB"
        mark = "" if row.ratio >= TARGET else " (below 0.9)"
        lines.append(
            f"| {c.model} | {c.side}² | {c.precision} | {'yes' if c.tile else 'no'} "
            f"| {row.in_process_s:.3f} | {row.served_s:.3f} | {1 / row.served_s:.2f} "
            f"| {peak} | {row.ratio:.2f}{mark} |"
        )
    servers = ", ".join(f"{p}: {m}" for p, m in memory.items())
    lines += ["", f"vae-serve's GPU memory after its rows (nvidia-smi): {servers}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="tiny configs at 64² and 128²")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: use --device cpu for a dry run")
    sides = (64, 128) if args.quick else (512, 1024)
    torch.set_num_threads(torch_threads(0))  # vae-serve's own count, for a fair CPU run
    precisions = ("fp32",) if args.device == "cpu" else tuple(DTYPES)
    with tempfile.TemporaryDirectory(prefix="diffusers-gpu-") as tmp:
        build_models(Path(tmp), args.quick)
        rows, memory = measure(Path(tmp), cases(sides, precisions), args.device, args.repeats)
    report = f"# diffusers VAEs, {args.device}\n\n{table(rows, memory)}\n"
    print(report)
    if args.write:
        args.write.write_text(report)
    return report


if __name__ == "__main__":
    main()

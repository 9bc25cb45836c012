"""vae-encode-dataset's throughput and memory (issue 29), against the same model in process
and behind the service's /encode.

Two workloads: the Fashion-MNIST test set as 10,000 PNG files with the bundled model, and
256² RGB PNGs with a TAESD-shaped AutoencoderTiny (diffusers' defaults, random weights:
speed does not depend on trained values). For each, in images/s over the whole input:

- in process, model only: the model's encoder on images already decoded, in the same
  batches (torch, this process);
- in process, decode + model: the same, plus reading and decoding the files exactly as
  the tool does (server/imaging.py) — the work the tool cannot skip;
- local: ``vae-encode-dataset`` (main(), in a subprocess: model load, listing, decoding,
  encoding, Parquet writing; the interpreter's start and imports not counted);
- ray: the same with ``--ray`` on a local Ray of as many CPUs, one actor per CPU (Ray's
  own start, ``ray.init``, reported apart and not counted);
- served: ``vae-serve`` /encode with ``application/x-npy`` bodies of a batch of decoded
  images (256 Fashion-MNIST images), one request after another (the client's decoding not counted).

Every torch runs with the thread count vae-serve picks (usable CPUs - 1; the server with
``--torch-threads`` set to it and the torch backend); Ray with one actor per usable CPU,
one torch thread each. Peak RSS of the local run is
measured at 1x and 10x the input (the test set, then ten times over: 100,000 files), and
the 10x run gives the rates without fixed costs (start-up of actors, model loads): the 9x
more images over the extra seconds.

    python -m benchmarks.encode_dataset              # both workloads
    python -m benchmarks.encode_dataset --quick      # 500 images, 32 TAESD images: a smoke run

TAESD's encoder takes about 0.4 s an image on one thread at 256², so its workload is 200
images in batches of 16 (its activations at 256² are ~1 GB a batch of 32).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from benchmarks.diffusers_vae import spawn
from benchmarks.workloads import npy_body
from vae_service.model.pretrained import DEFAULT_WEIGHTS
from vae_service.server.cpus import usable_cpus
from vae_service.server.diffusers_runtime import encode_pass
from vae_service.server.runtime import torch_threads
from vae_service.training.bulk_models import ModelSpec
from vae_service.training.data import IDX_DIRS, load_idx_split

RUNNER = """
import json, sys, time
if sys.argv[1] != "local":
    import ray
    started = time.perf_counter()
    ray.init(num_cpus=int(sys.argv[1]), include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - started
else:
    init_s = 0.0
from vae_service.training.encode_dataset import main
started = time.perf_counter()
assert main(sys.argv[2:]) == 0
seconds = time.perf_counter() - started
# VmHWM, not ru_maxrss: exec keeps the parent's peak in ru_maxrss.
status = open("/proc/self/status").read().split("VmHWM:")[1]
rss = int(status.split()[0]) / 1024
print(json.dumps({"seconds": seconds, "rss_mib": rss, "init_s": init_s}))
"""


@dataclass
class Workload:
    name: str
    src: Path
    model: Path
    batch: int
    count: int


def png(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(pixels).save(path, format="PNG")


def fashion_folder(root: Path, n: int) -> Path:
    images = load_idx_split(IDX_DIRS["fashion-mnist"], "test").images[:n]
    pixels = (images[:, 0] * 255).round().to(torch.uint8).numpy()
    root.mkdir(parents=True)
    for i, image in enumerate(pixels):
        png(image, root / f"{i:05d}.png")
    return root


def taesd_setup(root: Path, n: int, quick: bool) -> tuple[Path, Path]:
    """A TAESD-shaped model folder, and n smooth random 256² RGB images."""
    import diffusers

    torch.manual_seed(0)
    config = {"encoder_block_out_channels": (8,) * 4} if quick else {}
    diffusers.AutoencoderTiny(**config).eval().save_pretrained(root / "taesd")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(n):
        small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        png(np.asarray(Image.fromarray(small).resize((256, 256))), root / "images" / f"{i:04d}.png")
    return root / "taesd", root / "images"


def in_process(work: Workload) -> tuple[float, float]:
    """(model only, decode + model) images/s, in the tool's batches."""
    model = ModelSpec(work.model, "cpu").load()
    files = sorted(work.src.iterdir())
    started = time.perf_counter()
    images = [model.prepare(f.read_bytes(), i) for i, f in enumerate(files)]
    decoding = time.perf_counter() - started
    diffusers = hasattr(model, "space")

    def encode(batch: torch.Tensor) -> object:
        if diffusers:
            return encode_pass(model.model, batch * 2 - 1)  # type: ignore[attr-defined]
        return model.model.encode(batch)  # type: ignore[attr-defined]

    batches = [images[k : k + work.batch] for k in range(0, len(images), work.batch)]
    with torch.inference_mode():
        encode(torch.from_numpy(np.stack(batches[0])))  # warm-up, as the server's
        started = time.perf_counter()
        for batch in batches:
            encode(torch.from_numpy(np.stack(batch)))
    encoding = time.perf_counter() - started
    return len(files) / encoding, len(files) / (decoding + encoding)


def tool(work: Workload, dst: Path, ray_cpus: int | None) -> dict[str, float]:
    argv = [str(work.src), str(dst), "--model", str(work.model), "--no-progress"]
    argv += ["--batch-size", str(work.batch), "--device", "cpu"]
    if ray_cpus:
        argv += ["--ray", "--ray-concurrency", str(ray_cpus)]
    command = [sys.executable, "-c", RUNNER, str(ray_cpus or "local"), *argv]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def served(work: Workload, threads: int) -> float:
    model = ModelSpec(work.model, "cpu").load()
    files = sorted(work.src.iterdir())
    arrays = np.stack([model.prepare(f.read_bytes(), i) for i, f in enumerate(files)])
    flag = ["--model-dir", str(work.model.parent)] if hasattr(model, "space") else []
    flag = flag or ["--weights", str(work.model)]
    args = [*flag, "--torch-threads", str(threads), "--backend", "torch"]
    args += ["--host", "127.0.0.1", "--log-level", "warning", "--request-timeout-s", "600"]
    args += ["--max-body-bytes", str(512 * 1024 * 1024)]
    server = spawn("ours", "vae_service.server.cli", args, "/readyz")
    path = f"/models/{work.model.name}/encode" if flag[0] == "--model-dir" else "/encode"
    headers = {"content-type": "application/x-npy"}
    bodies = [npy_body(arrays[k : k + work.batch]) for k in range(0, len(arrays), work.batch)]
    try:
        with httpx.Client(base_url=server.base_url, timeout=600) as client:
            client.post(path, content=bodies[0], headers=headers).raise_for_status()  # warm
            started = time.perf_counter()
            for body in bodies:
                client.post(path, content=body, headers=headers).raise_for_status()
            return len(arrays) / (time.perf_counter() - started)
    finally:
        server.stop()


def measure(work: Workload, scratch: Path, threads: int, cpus: int) -> dict[str, float]:
    model_only, decode_model = in_process(work)
    local = tool(work, scratch / f"{work.name}-local", None)
    ray = tool(work, scratch / f"{work.name}-ray", cpus)
    return {
        "model only": model_only,
        "decode + model": decode_model,
        "local": work.count / local["seconds"],
        "ray": work.count / ray["seconds"],
        "ray init s": ray["init_s"],
        "served": served(work, threads),
        "local rss": local["rss_mib"],
        "local s": local["seconds"],
        "ray s": ray["seconds"],
    }


def report(work: Workload, figures: dict[str, float]) -> str:
    local = figures["local"]
    lines = [
        f"### {work.name}: {work.count} images, batches of {work.batch}",
        "| what | images/s |",
        "|---|---|",
        *(
            f"| {k} | {figures[k]:,.{0 if figures[k] >= 100 else 2}f} |"
            for k in ("model only", "decode + model", "local", "ray", "served")
        ),
        f"\nlocal ÷ in process (decode + model): {local / figures['decode + model']:.2f} "
        f"(target ≥ 0.8); local ÷ model only: {local / figures['model only']:.2f}; "
        f"ray ÷ local: {figures['ray'] / local:.2f} (target ≥ 0.6); ray.init "
        f"{figures['ray init s']:.1f} s not counted; served ÷ local: "
        f"{figures['served'] / local:.2f}; peak RSS of the local run "
        f"{figures['local rss']:.0f} MiB",
    ]
    return "\n".join(lines)


def ten_times(scratch: Path, folder: Path) -> Path:
    """The folder's files ten times over, as hard links in ten subfolders."""
    big = scratch / "fashion-10x"
    for copy in range(10):
        (big / f"{copy}").mkdir(parents=True)
        for f in folder.iterdir():
            os.link(f, big / f"{copy}" / f.name)
    return big


def scaling(scratch: Path, work: Workload, one: dict[str, float], cpus: int) -> str:
    """10x the input: peak RSS, and the rates of the 9x more images (no fixed costs)."""
    big = Workload("10x", ten_times(scratch, work.src), work.model, work.batch, 10 * work.count)
    local = tool(big, scratch / "local-10x", None)
    ray = tool(big, scratch / "ray-10x", cpus)
    extra = 9 * work.count
    local_rate = extra / (local["seconds"] - one["local s"])
    ray_rate = extra / (ray["seconds"] - one["ray s"])
    growth = local["rss_mib"] / one["local rss"] - 1
    return (
        f"10x ({big.count} images): local {big.count / local['seconds']:,.0f} images/s, "
        f"ray {big.count / ray['seconds']:,.0f} images/s; the 9x more images alone (10x run "
        f"- 1x run): local {local_rate:,.0f}, ray {ray_rate:,.0f} images/s, ray ÷ local "
        f"{ray_rate / local_rate:.2f}; local ÷ decode + model "
        f"{local_rate / one['decode + model']:.2f}\npeak RSS, local: "
        f"{one['local rss']:.0f} MiB at 1x, {local['rss_mib']:.0f} MiB at 10x: "
        f"{growth:+.1%} (target ≤ +20%); Ray's driver at 10x: {ray['rss_mib']:.0f} MiB"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    threads = torch_threads(0)  # what vae-serve and vae-encode-dataset pick here
    torch.set_num_threads(threads)
    scratch = Path(tempfile.mkdtemp(prefix="bench-encode-dataset-"))
    n, m = (500, 32) if args.quick else (10_000, 200)
    fashion = fashion_folder(scratch / "fashion", n)
    taesd, images = taesd_setup(scratch / "taesd", m, args.quick)
    works = [
        Workload("Fashion-MNIST, bundled model", fashion, DEFAULT_WEIGHTS, 256, n),
        Workload("256² RGB, TAESD-shaped AutoencoderTiny", images, taesd, 16, m),
    ]
    print(f"{threads} torch threads; scratch {scratch}", flush=True)
    results = [measure(work, scratch, threads, usable_cpus()) for work in works]
    for work, figures in zip(works, results, strict=True):
        print(report(work, figures), flush=True)
    print(scaling(scratch, works[0], results[0], usable_cpus()), flush=True)


if __name__ == "__main__":
    main()

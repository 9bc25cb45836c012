"""Throughput of the service against the same work in-process, LitServe and a naive
FastAPI endpoint, all measured in one run on this machine.

    python -m benchmarks.bench --quick                      # a few minutes
    python -m benchmarks.bench --write BENCHMARKS.md        # the full run, into its own section
    python -m benchmarks.bench --device cuda --precision bf16 --peers ''   # on a GPU

Each server runs in its own subprocess with the same weights and torch thread count;
wrk (or, without it, an async httpx client) drives it. Single-image /encode runs at
concurrency 1, 8, 32 and 64; the batch workloads (256 images or latents a request) at
--batch-concurrency. Ours is also soaked with --soak requests to check that resident
memory stays flat. Then, on a fresh server of ours, fair batching and load shedding
(benchmarks/scheduling.py; --no-scheduling leaves them out). With --device cuda, ours and
the in-process baseline run on the GPU in --precision (the peers run on the CPU only, so
they are left out).

--write FILE writes the report between the markers WRITE_START and WRITE_END in FILE
(appended at its end the first time), so text around them stays as it is.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from benchmarks import scheduling, servers, workloads
from benchmarks.load import Load, drive, have_wrk
from vae_service.model import load_weights
from vae_service.model.device import resolve_device
from vae_service.server.backends import load_backend
from vae_service.server.model_entries import model_name
from vae_service.server.runtime import HALF, torch_threads
from vae_service.server.settings import Settings, env_name

SINGLE_CONCURRENCY = (1, 8, 32, 64)
WRITE_START = "<!-- benchmarks.bench: start of its report; the run rewrites what follows -->"
WRITE_END = "<!-- benchmarks.bench: end of its report -->"
PEERS = ("litserve", "naive")


@dataclass(frozen=True)
class Row:
    workload: workloads.Workload
    concurrency: int
    in_process: float  # images/s
    loads: dict[str, Load]  # server name -> what it measured

    def images_per_s(self, server: str) -> float | None:
        load = self.loads.get(server)
        return load.rate * self.workload.images if load else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, help="weights file (default: the bundled ones)")
    parser.add_argument(
        "--quick", action="store_true", help="2 s a measurement, 5,000-request soak"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    parser.add_argument("--soak", type=int, default=100_000, help="requests in the memory soak")
    parser.add_argument("--batch-concurrency", type=int, default=4)
    parser.add_argument(
        "--threads",
        type=int,
        default=torch_threads(0),
        help="torch threads in every server and in-process (default: the service's own choice)",
    )
    parser.add_argument("--peers", default=",".join(PEERS), help="peers to compare, or ''")
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda", "auto"],
        help="where ours and the in-process baseline run (auto: CUDA if present)",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", *HALF],
        help="forward-pass precision on CUDA (VAE_PRECISION); the CPU runs fp32 only",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes of ours (VAE_WORKERS), in every run of ours; the soak needs 1",
    )
    parser.add_argument(
        "--no-scheduling",
        dest="scheduling",
        action="store_false",
        help="leave out the fairness and shedding runs",
    )
    parser.add_argument(
        "--write", type=Path, help="also write the report into its own section of this file"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.soak = 2.0, 5_000
    check_device(parser, args)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1 and args.soak:
        parser.error("the memory soak reads one process's memory: add --soak 0 with --workers")
    return args


def check_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Resolve --device to cpu or cuda:N, or stop with why it cannot be used."""
    try:
        args.device = str(resolve_device(args.device))
    except (ValueError, RuntimeError) as exc:
        parser.error(f"--device: {exc}")
    cuda = args.device.startswith("cuda")
    if not cuda and args.precision != "fp32":
        parser.error(f"--precision {args.precision} needs CUDA: the service runs the CPU in fp32")
    if cuda and args.peers:
        parser.error("the peers run on the CPU only: add --peers '' with --device cuda")


def device_name(device: str) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3, CUDA 13.0)``, or ``cpu``."""
    if not device.startswith("cuda"):
        return device
    return f"{device} ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})"


def measure_in_process(
    all_work: list[workloads.Workload], seconds: float, threads: int
) -> dict[str, float]:
    torch.set_num_threads(threads)
    rates = {w.name: workloads.images_per_second(w, seconds) for w in all_work}
    device = all_work[0].device
    print(f"in-process ({torch.get_num_threads()} threads, {device}): {rates}", file=sys.stderr)
    return rates


def in_process_work(weights: Path, args: argparse.Namespace) -> list[workloads.Workload]:
    """The workloads, with the model in-process on --device in --precision, run by the
    backend our server picks for it (VAE_BACKEND's default, or as set in the environment)."""
    device = torch.device(args.device)
    half = HALF.get(args.precision) if device.type == "cuda" else None
    checkpoint = load_weights(weights, device)
    backend = load_backend(checkpoint, Settings().backend, None, args.threads)
    args.backend = backend.name
    return workloads.build(checkpoint.model, device, half, model_name(weights), backend)


def measure_server(
    server: servers.Server, all_work: list[workloads.Workload], args: argparse.Namespace
) -> dict[tuple[str, int], Load]:
    loads = {}
    for work in all_work:
        request = work.requests.get(server.name)
        if request is None:
            continue
        levels = SINGLE_CONCURRENCY if work.images == 1 else (args.batch_concurrency,)
        drive(server.base_url, request, levels[-1], 1.0)  # warm-up: connections, allocator
        for concurrency in levels:
            load = drive(server.base_url, request, concurrency, args.seconds)
            loads[work.name, concurrency] = load
            print(
                f"{server.name:9} {work.name:28} c={concurrency:<3} {describe(load)}",
                file=sys.stderr,
            )
    return loads


def describe(load: Load) -> str:
    return (
        f"{load.rate:9,.0f} req/s  p50 {load.p50_ms:7.1f} ms  p99 {load.p99_ms:7.1f} ms"
        f"  errors {load.errors}"
    )


@dataclass(frozen=True)
class Soak:
    """Resident memory of our server before and after many single-image requests."""

    before_mib: float
    after_mib: float
    requests: int
    errors: int

    @property
    def growth(self) -> float:
        return (self.after_mib - self.before_mib) / self.before_mib

    def describe(self) -> str:
        return (
            f"Resident memory of our server: {self.before_mib:.1f} MiB after the measurements "
            f"above, {self.after_mib:.1f} MiB after {self.requests:,} more single-image /encode "
            f"requests at concurrency 32 ({100 * self.growth:+.1f}%; {self.errors} errors)."
        )


def soak(server: servers.Server, work: workloads.Workload, requests: int, rate: float) -> Soak:
    """Drive at least ``requests`` single-image requests, in runs sized by ``rate``."""
    before, sent, errors = server.rss_mib(), 0, 0
    while sent < requests:
        load = drive(server.base_url, work.requests["ours"], 32, max(1.0, (requests - sent) / rate))
        sent, errors = sent + load.requests, errors + load.errors
    return Soak(before, server.rss_mib(), sent, errors)


def ours_env(args: argparse.Namespace) -> dict[str, str]:
    return {
        "VAE_TORCH_THREADS": str(args.threads),
        "VAE_LOG_LEVEL": "warning",
        "VAE_DEVICE": args.device,
        "VAE_PRECISION": args.precision,
        "VAE_WORKERS": str(args.workers),
    }


def check_served_device(server: servers.Server, device: str) -> None:
    """Ours must serve where it was asked to: its /model says where it runs."""
    served = httpx.get(server.base_url + "/model", timeout=10).json()["device"]
    if torch.device(served) != torch.device(device):
        raise RuntimeError(f"ours serves on {served}, not on {device}")


def run_server(
    name: str, weights: Path, all_work: list[workloads.Workload], args: argparse.Namespace
) -> tuple[dict[tuple[str, int], Load], Soak | None]:
    server = servers.start(name, weights, args.threads, ours_env(args))
    try:
        if name == "ours":
            check_served_device(server, args.device)
        loads = measure_server(server, all_work, args)
        if name != "ours" or not args.soak:
            return loads, None
        single = all_work[0]
        return loads, soak(server, single, args.soak, loads[single.name, 32].rate)
    finally:
        server.stop()


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "—"


def figure(value: float | None) -> str:
    return f"{value:,.0f}" if value else "—"


def errors(row: Row) -> str:
    return ", ".join(
        str(row.loads[s].errors) if s in row.loads else "—" for s in ("ours", "litserve", "naive")
    )


def table(rows: list[Row]) -> str:
    head = (
        "| workload | conc. | ours req/s | ours img/s | p50 ms | p99 ms | in-process img/s "
        "| ours / in-process | LitServe img/s | ours / LitServe | naive img/s | ours / naive "
        "| errors: ours, LitServe, naive |"
    )
    lines = [head, "|" + "---|" * 13]
    for row in rows:
        ours = row.loads["ours"]
        mine, lit, naive = (row.images_per_s(s) for s in ("ours", "litserve", "naive"))
        lines.append(
            f"| {row.workload.name} | {row.concurrency} | {ours.rate:,.0f} | {figure(mine)} "
            f"| {ours.p50_ms:.1f} | {ours.p99_ms:.1f} | {figure(row.in_process)} "
            f"| {ratio(mine, row.in_process)} | {figure(lit)} | {ratio(mine, lit)} "
            f"| {figure(naive)} | {ratio(mine, naive)} | {errors(row)} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    return (
        f"{os.cpu_count()} CPU cores ({names[0] if names else platform.processor()}), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, load generator: {'wrk' if have_wrk() else 'httpx'}"
    )


Scheduled = tuple[scheduling.Fairness, scheduling.Shedding] | None


def collect(args: argparse.Namespace) -> tuple[list[Row], str, Soak | None, Scheduled]:
    weights, described = servers.weights_or_random(args.weights)
    all_work = in_process_work(weights, args)
    in_process = measure_in_process(all_work, args.seconds, args.threads)
    by_server, memory = {}, None
    for name in ("ours", *[p for p in args.peers.split(",") if p]):
        by_server[name], soaked = run_server(name, weights, all_work, args)
        memory = memory or soaked
    rows = []
    for work in all_work:
        levels = SINGLE_CONCURRENCY if work.images == 1 else (args.batch_concurrency,)
        for c in levels:
            loads = {
                s: by_server[s][work.name, c] for s in by_server if (work.name, c) in by_server[s]
            }
            rows.append(Row(work, c, in_process[work.name], loads))
    scheduled = None
    if args.scheduling:
        env = {**ours_env(args), **scheduling.SHED_ENV}
        scheduled = scheduling.measure(weights, env, args.threads, args.seconds)
    return rows, described, memory, scheduled


def verdicts(
    rows: list[Row], memory: Soak | None, scheduled: Scheduled = None
) -> list[tuple[str, str, bool]]:
    """The issues' targets against this run's figures: (target, measured, met)."""
    single = next(r for r in rows if r.workload.images == 1 and r.concurrency == 32)
    ours, lit = single.loads["ours"], single.images_per_s("litserve")
    alone = next(r for r in rows if r.workload.images == 1 and r.concurrency == 1)
    lit_alone = alone.loads.get("litserve")
    checks = []
    if lit_alone:  # issue 14
        p50, lit_p50 = alone.loads["ours"].p50_ms, lit_alone.p50_ms
        checks.append(("single-image /encode, c=1: p50 ≤ 0.5× LitServe's",
                       f"{p50 / lit_p50:.2f}× ({p50:.2f} / {lit_p50:.2f} ms)",
                       p50 <= 0.5 * lit_p50))  # fmt: skip
    if lit:
        checks.append(("single-image /encode, c=32: ≥ 2.5× LitServe", f"{ours.rate / lit:.2f}×",
                       ours.rate >= 2.5 * lit))  # fmt: skip
    checks += [
        ("single-image /encode, c=32: ≥ 1,500 req/s", f"{ours.rate:,.0f} req/s", ours.rate >= 1500),
        ("single-image /encode, c=32: p99 ≤ 50 ms", f"{ours.p99_ms:.1f} ms", ours.p99_ms <= 50),
    ]
    if lit:
        checks.append(("single-image /encode, c=32: ≥ 4× LitServe", f"{ours.rate / lit:.2f}×",
                       ours.rate >= 4 * lit))  # fmt: skip
    for row in rows:
        mine = row.images_per_s("ours")
        if row.workload.images > 1 and mine:
            share = mine / row.in_process
            checks.append((f"{row.workload.name}: ≥ 80% of in-process", f"{share:.0%}",
                           share >= 0.8))  # fmt: skip
    if scheduled:
        checks += scheduling.verdicts(*scheduled)
    if memory:
        checks.append((f"resident memory: < 5% growth over ≥ {100_000:,} requests",
                       f"{memory.growth:+.1%} over {memory.requests:,}",
                       memory.growth < 0.05 and memory.requests >= 100_000))  # fmt: skip
    return checks


def targets_table(rows: list[Row], memory: Soak | None, scheduled: Scheduled = None) -> str:
    lines = ["| target | measured | met |", "|---|---|---|"]
    for target, measured, met in verdicts(rows, memory, scheduled):
        lines.append(f"| {target} | {measured} | {'yes' if met else '**no**'} |")
    return "\n".join(lines)


def scheduling_text(scheduled: Scheduled) -> str:
    if scheduled is None:
        return "No fairness or shedding runs (--no-scheduling)."
    f, s = scheduled
    return (
        f"Fair batching and shedding, on a fresh server of ours with "
        f"VAE_MAX_QUEUE_WAIT_MS={scheduling.SHED_ENV['VAE_MAX_QUEUE_WAIT_MS']} "
        "(benchmarks/scheduling.py, its own client, latencies by status): single-image "
        f"/encode at c={scheduling.SMALL_CONCURRENCY} alone {f.small_alone.describe()}; "
        f"{scheduling.BIG_IMAGES:,}-image npy /encode at c=1 alone {f.big_alone.describe()}; "
        f"together: small {f.small_beside.describe()}, big {f.big_beside.describe()}. "
        f"At c={scheduling.SHED_CONCURRENCY:,} (wrk and {scheduling.PROBES} timed "
        f"connections): {s.load.describe()}"
        + (
            f"; wrk, all statuses together: {s.wrk.rate + s.wrk.non_2xx / s.wrk.seconds:,.0f} "
            f"answers/s, {s.wrk.non_2xx:,} of {s.wrk.requests:,} not 2xx, p50 "
            f"{s.wrk.p50_ms:.0f} ms, p99 {s.wrk.p99_ms:.0f} ms, {s.wrk.timeouts} timeouts."
            if s.wrk
            else "."
        )
    )


def settings_from_environment(args: argparse.Namespace) -> str:
    """The settings ours takes from the environment besides the bench's own."""
    names = {env_name(field) for field in Settings.model_fields} - set(ours_env(args))
    given = sorted(f"{k}={v}" for k, v in os.environ.items() if k in names)
    return f"Ours also runs with {', '.join(given)}." if given else "No other VAE_ setting is set."


def report(
    rows: list[Row],
    weights: str,
    memory: Soak | None,
    load: float,
    args: argparse.Namespace,
    scheduled: Scheduled = None,
) -> str:
    command = shlex.join(["python", "-m", "benchmarks.bench", *sys.argv[1:]])
    return "\n\n".join(
        [
            f"Machine: {machine()}. 1-minute load average when the run started: {load:.2f}.",
            f"Device: {device_name(args.device)}, precision {args.precision}, backend"
            f" {args.backend}, in ours and in-process; the peers, if any, run on the CPU."
            f" Worker processes of ours: {args.workers}.",
            f"Weights: {weights}. Torch threads, in every server and in-process: {args.threads}."
            f" Each figure: {args.seconds:g} s of load after a 1 s warm-up."
            f" {settings_from_environment(args)}",
            table(rows),
            memory.describe() if memory else "No memory soak (--soak 0).",
            scheduling_text(scheduled),
            "Targets (issues 5 and 14), from the figures above:",
            targets_table(rows, memory, scheduled),
            f"Command: `{command}` ({time.strftime('%Y-%m-%d')}).",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load = os.getloadavg()[0]
    rows, weights, memory, scheduled = collect(args)
    text = report(rows, weights, memory, load, args, scheduled)
    print(text)
    if args.write:
        write_section(args.write, text)


def write_section(path: Path, text: str, start: str = WRITE_START, end: str = WRITE_END) -> None:
    """Put ``text`` between the markers in ``path``, or append it with them; the rest of
    the file stays as it is. Other scripts pass their own markers (benchmarks/colour.py)."""
    old = path.read_text() if path.exists() else ""
    section = f"{start}\n\n{text}\n\n{end}"
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + section + rest.split(end, 1)[1]
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "") + section + "\n"
    path.write_text(new)


if __name__ == "__main__":
    main()

"""Before and after a change, in turn on one machine (issue 26): single-image /encode at
concurrency 32 (requests/s) and at concurrency 1 (p50 latency), and 256-image npy /encode
against the same work in-process.

    python -m benchmarks.paired --before /work/before              # 6 pairs, 10 s a figure
    python -m benchmarks.paired --before ../old --pairs 8 --seconds 20

--before is another checkout of this project, in the layout before the refactor
(top-level ``service`` and ``model``, served by ``python -m service.cli``) or in today's
(``src/vae_service``); "after" is this checkout. Each pair starts the server of one,
then of the other (before first in the 1st, 3rd, ... pair, after first in the others,
so that a drift of the machine falls on both alike), each from its own root with its own
packages first on PYTHONPATH, on a free port with ``--device cpu --access-log false
--log-level warning`` and its bundled default weights, and stops it with SIGTERM when
its loads are done. A server's loads (benchmarks/load.py: wrk, else async httpx): one
base64 PNG in JSON, 1 s of warm-up at c=32, then c=32 and c=1; 256 images as an
application/x-npy body, 1 s of warm-up, then c=4. After both servers, the same 256-image
encode in-process, by the backend our server picks (benchmarks/workloads.py, as
benchmarks/bench.py does). The report: every pair's figures and ratios, their medians,
and issue 26's targets met or not by the median ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import servers, workloads
from benchmarks.bench import describe, in_process_work, machine
from benchmarks.load import Load, Request, drive
from vae_service.server.runtime import torch_threads

FLAGS = ["--host", "127.0.0.1", "--device", "cpu", "--access-log", "false",
         "--log-level", "warning"]  # fmt: skip
SINGLE, BATCH = "encode 1 image, JSON", f"encode {workloads.BATCH} images, npy"
BATCH_CONCURRENCY = 4
SIDES = ("before", "after")
# (key, column heading): the figures of one server start.
FIGURES = (
    ("c32", "c=32 req/s"),
    ("c1", "c=1 p50 ms"),
    ("batch", f"{workloads.BATCH}-image npy img/s"),
)
C32_MIN, P50_MAX, SHARE_MIN = 0.85, 1.10, 0.80


@dataclass(frozen=True)
class Checkout:
    """How to run one checkout's server."""

    name: str
    root: Path
    module: str
    pythonpath: Path


def checkout(name: str, root: Path) -> Checkout:
    root = root.resolve()
    if (root / "service" / "cli.py").is_file():
        return Checkout(name, root, "service.cli", root)
    if (root / "src" / "vae_service" / "server" / "cli.py").is_file():
        return Checkout(name, root, "vae_service.server.cli", root / "src")
    raise SystemExit(f"{root}: neither service/cli.py nor src/vae_service/server/cli.py")


@dataclass(frozen=True)
class Run:
    """The loads of one server start."""

    c32: Load
    c1: Load
    batch: Load

    def figure(self, key: str) -> float:
        return {
            "c32": self.c32.rate,
            "c1": self.c1.p50_ms,
            "batch": self.batch.rate * workloads.BATCH,
        }[key]

    @property
    def errors(self) -> int:
        return self.c32.errors + self.c1.errors + self.batch.errors


@dataclass(frozen=True)
class Pair:
    first: str  # "before" or "after"
    before: Run
    after: Run
    in_process: float  # images/s of the 256-image encode in-process

    def ratio(self, key: str) -> float:
        """After / before."""
        return self.after.figure(key) / self.before.figure(key)

    @property
    def share(self) -> float:
        """The after's served batch images/s / in-process."""
        return self.after.figure("batch") / self.in_process


def order(pair: int) -> tuple[str, str]:
    """Before first in even pairs (counted from 0), after first in odd ones."""
    return SIDES if pair % 2 == 0 else SIDES[::-1]


def start(side: Checkout) -> servers.Server:
    port = servers.free_port()
    log = Path(tempfile.mkstemp(prefix=f"paired-{side.name}-", suffix=".log")[1])
    path = [str(side.pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])]
    command = [sys.executable, "-m", side.module, *FLAGS, "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=side.root, env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = servers.Server(side.name, process, f"http://127.0.0.1:{port}", log)
    servers._wait_ready(server, servers.READY_PATH["ours"])
    return server


def stop(server: servers.Server, timeout_s: float = 30) -> None:
    """SIGTERM, a graceful shutdown; Server.stop's SIGINT, then SIGKILL, if it hangs."""
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout=timeout_s)
    server.stop()


def timed(server: servers.Server, request: Request, concurrency: int, seconds: float) -> Load:
    load = drive(server.base_url, request, concurrency, seconds)
    print(f"{server.name:6} {request.path:18} c={concurrency:<3} {describe(load)}", file=sys.stderr)
    return load


def run(side: Checkout, single: Request, batch: Request, seconds: float) -> Run:
    server = start(side)
    try:
        drive(server.base_url, single, 32, 1.0)  # warm-up: connections, allocator
        c32, c1 = timed(server, single, 32, seconds), timed(server, single, 1, seconds)
        drive(server.base_url, batch, BATCH_CONCURRENCY, 1.0)
        return Run(c32, c1, timed(server, batch, BATCH_CONCURRENCY, seconds))
    finally:
        stop(server)


def collect(args: argparse.Namespace) -> list[Pair]:
    sides = {"before": checkout("before", args.before), "after": checkout("after", servers.ROOT)}
    args.device, args.precision = "cpu", "fp32"
    weights = servers.weights_or_random(None)[0]
    work = {w.name: w for w in in_process_work(weights, args)}
    single, batch = work[SINGLE].requests["ours"], work[BATCH].requests["ours"]
    torch.set_num_threads(args.threads)
    pairs = []
    for i in range(args.pairs):
        runs = {name: run(sides[name], single, batch, args.seconds) for name in order(i)}
        in_process = workloads.images_per_second(work[BATCH], args.seconds)
        print(f"pair {i + 1}: in-process {in_process:,.0f} img/s", file=sys.stderr)
        pairs.append(Pair(order(i)[0], runs["before"], runs["after"], in_process))
    return pairs


# Decimals of each column after the first: (before, after, ratio) a figure, then in-process.
DIGITS = (0, 0, 2, 2, 2, 2, 0, 0, 2, 0, 2)


def cells(pair: Pair) -> list[float]:
    """One pair's row of the table, after its label."""
    out = []
    for key, _ in FIGURES:
        out += [pair.before.figure(key), pair.after.figure(key), pair.ratio(key)]
    return [*out, pair.in_process, pair.share]


def row(label: str, values: list[float]) -> str:
    text = [f"{v:,.{d}f}" for v, d in zip(values, DIGITS, strict=True)]
    return "| " + " | ".join([label, *text]) + " |"


def table(pairs: list[Pair]) -> str:
    """Every pair's figures and ratios, then the median of each column."""
    head = ["pair (first)"]
    for _, name in FIGURES:
        head += [f"{name}: before", "after", "after / before"]
    head += ["in-process img/s", "after / in-process"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    rows = [cells(pair) for pair in pairs]
    lines += [
        row(f"{i + 1} ({p.first})", r) for i, (p, r) in enumerate(zip(pairs, rows, strict=True))
    ]
    lines.append(row("**median**", [statistics.median(c) for c in zip(*rows, strict=True)]))
    return "\n".join(lines)


def verdicts(pairs: list[Pair]) -> list[tuple[str, float, bool]]:
    """Issue 26's targets against the medians of the pairs: (target, median, met)."""
    c32 = statistics.median(p.ratio("c32") for p in pairs)
    p50 = statistics.median(p.ratio("c1") for p in pairs)
    share = statistics.median(p.share for p in pairs)
    return [
        (f"single-image /encode, c=32: req/s after / before ≥ {C32_MIN}", c32, c32 >= C32_MIN),
        (f"single-image /encode, c=1: p50 after / before ≤ {P50_MAX:.2f}", p50, p50 <= P50_MAX),
        (f"encode {workloads.BATCH} images, npy: after / in-process ≥ {SHARE_MIN:.2f}", share,
         share >= SHARE_MIN),
    ]  # fmt: skip


def targets_table(pairs: list[Pair]) -> str:
    lines = ["| target | median of the pairs | met |", "|---|---|---|"]
    for target, median, met in verdicts(pairs):
        lines.append(f"| {target} | {median:.2f} | {'yes' if met else '**no**'} |")
    return "\n".join(lines)


def revision(root: Path) -> str:
    """``4eb8e11``, or ``4eb8e11 + uncommitted changes``; ``?`` outside git."""

    def git(*command: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *command], capture_output=True, text=True)
        if done.returncode:
            raise OSError(done.stderr)
        return done.stdout.strip()

    try:
        head, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "-uno")
    except OSError:
        return "?"
    return head + (" + uncommitted changes" if dirty else "")


def header(args: argparse.Namespace, load: float) -> str:
    before, after = checkout("before", args.before), checkout("after", servers.ROOT)
    return "\n\n".join(
        [
            f"Command: `{args.command}` ({time.strftime('%Y-%m-%d %H:%M %Z')}).",
            f"Machine: {machine()}. 1-minute load average when the run started: {load:.2f}.",
            f"Before: {before.root} ({revision(before.root)}, `python -m {before.module}`); "
            f"after: {after.root} ({revision(after.root)}, `python -m {after.module}`). "
            f"Both: `{' '.join(FLAGS)}`, bundled default weights.",
            f"Pairs: {args.pairs}. Each figure: {args.seconds:g} s of load after a 1 s warm-up. "
            f"Batch: c={BATCH_CONCURRENCY}; in-process: backend {args.backend}, "
            f"torch threads {args.threads} (the servers' own choice).",
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the other checkout's root")
    parser.add_argument("--pairs", type=int, default=6, help="before/after pairs (default: 6)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each figure")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    args.command = shlex.join(["python", "-m", "benchmarks.paired", *given])
    if args.pairs < 1:
        parser.error(f"--pairs must be at least 1, got {args.pairs}")
    args.threads = torch_threads(0)  # what both servers choose, for the in-process run
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load = os.getloadavg()[0]
    checkout("before", args.before)  # a wrong --before stops here, before any measurement
    pairs = collect(args)
    errors = {side: sum(getattr(p, side).errors for p in pairs) for side in SIDES}
    print(header(args, load), table(pairs), "Targets (issue 26), from the medians:",
          targets_table(pairs), f"Errors over all loads: before {errors['before']}, "
          f"after {errors['after']}.", sep="\n\n")  # fmt: skip


if __name__ == "__main__":
    main()

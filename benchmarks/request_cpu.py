"""CPU time the server spends per request: single-image POST /encode (a base64 PNG in
JSON) and GET /sample?n=1&seed=1.

    python -m benchmarks.request_cpu                        # 3,000 requests, concurrency 8, 3 runs
    python -m benchmarks.request_cpu --profile loop.prof    # also: where the event loop spends it

``vae-serve`` (the bundled weights unless --weights, --device cpu, default settings)
runs in a subprocess; a bare asyncio HTTP client sends a fixed number of requests to it, and the
server process's CPU time (user + sys, from /proc) over them is divided by the number of
requests. Unlike latency or throughput, CPU time per request barely moves when other work
shares the machine. It is split into the event loop's thread (HTTP, middleware, routing,
body parsing, answers) and every other thread (the batcher's forward passes, torch's
threads, work sent off the loop). Each figure is the median of --repeats runs, each on a
fresh server after a warm-up. With --profile, one more server runs under cProfile (which
profiles only the main thread: the event loop) and the top functions are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from benchmarks import servers
from benchmarks.load import Request
from benchmarks.workloads import png_base64, test_images
from vae_service.model import load_weights

TICK_S = 1 / os.sysconf("SC_CLK_TCK")
# vae-serve under cProfile timed by the thread's CPU clock: the default wall clock would
# charge a function for the time the busy machine ran something else.
PROFILED = (
    "import cProfile, sys, time; from vae_service.server.cli import main; "
    "p = cProfile.Profile(time.thread_time); p.runcall(main, sys.argv[2:]); "
    "p.dump_stats(sys.argv[1])"
)


@dataclass(frozen=True)
class Cpu:
    """CPU seconds (user + sys) used so far by a process: all threads, and its main one."""

    total: float
    loop: float

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.total - other.total, self.loop - other.loop)


def stat_seconds(path: Path) -> float:
    """utime + stime of a /proc stat file; fields counted after the ')' ending the name."""
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def cpu_of(pid: int) -> Cpu:
    proc = Path(f"/proc/{pid}")
    return Cpu(stat_seconds(proc / "stat"), stat_seconds(proc / "task" / str(pid) / "stat"))


def routes(weights: Path) -> dict[str, Request]:
    image = test_images(1, load_weights(weights).model.cfg)[0]
    body = orjson.dumps({"images": [png_base64(image)]})
    return {
        "POST /encode (1 image, JSON)": Request("POST", "/encode", body),
        "GET /sample?n=1&seed=1": Request("GET", "/sample?n=1&seed=1"),
    }


def http_request(request: Request, host: str) -> bytes:
    head = [f"{request.method} {request.path} HTTP/1.1", f"Host: {host}"]
    if request.body:
        head += [f"Content-Type: {request.content_type}", f"Content-Length: {len(request.body)}"]
    return "\r\n".join([*head, "", ""]).encode() + request.body


async def answer_status(reader: asyncio.StreamReader) -> int:
    """Read one answer (every answer here has a Content-Length); its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(v) for k, _, v in (ln.partition(":") for ln in lines)
                  if k.lower() == "content-length")  # fmt: skip
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def send_async(base_url: str, request: Request, requests: int, concurrency: int) -> int:
    """Send ``requests`` requests over ``concurrency`` keep-alive connections; how many
    were answered 200. A bare HTTP/1.1 client: it takes the CPU from the server as
    little as it can (wrk cannot stop after a count, httpx costs more than the server)."""
    host = base_url.removeprefix("http://")
    name, port = host.rsplit(":", 1)
    raw, left, ok = http_request(request, host), requests, 0

    async def user() -> None:
        nonlocal left, ok
        reader, writer = await asyncio.open_connection(name, int(port))
        while left > 0:
            left -= 1
            writer.write(raw)
            status = await answer_status(reader)  # not `ok += await`: ok is read first
            ok += status == 200
        writer.close()

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return ok


def send(base_url: str, request: Request, requests: int, concurrency: int) -> int:
    return asyncio.run(send_async(base_url, request, requests, concurrency))


def settle(pid: int, quiet_s: float = 0.3, limit_s: float = 10.0) -> Cpu:
    """The process's CPU once it is idle again, so that what the last answers leave
    behind (a log line, a swept request) is counted too."""
    before, deadline = cpu_of(pid), time.monotonic() + limit_s
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        after = cpu_of(pid)
        if after.total - before.total < 2 * TICK_S:
            return after
        before = after
    return before


def measure(server: servers.Server, request: Request, requests: int, concurrency: int) -> Cpu:
    """CPU seconds per answered request (after a warm-up of requests // 10)."""
    send(server.base_url, request, max(requests // 10, concurrency), concurrency)
    pid = server.process.pid
    before = settle(pid)
    answered = send(server.base_url, request, requests, concurrency)
    used = settle(pid) - before
    if answered < requests * 0.99:
        raise RuntimeError(f"{request.path}: only {answered} of {requests} answered 200")
    return Cpu(used.total / answered, used.loop / answered)


def start(weights: Path, log_level: str, profile: Path | None = None) -> servers.Server:
    """vae-serve on a free port, as deployed (default settings) but on the CPU."""
    port = servers.free_port()
    log = Path(tempfile.mkstemp(prefix="request-cpu-", suffix=".log")[1])
    prefix = ["-c", PROFILED, str(profile)] if profile else ["-m", "vae_service.server.cli"]
    command = [sys.executable, *prefix, "--weights", str(weights),
               "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", log_level]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=servers.ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    server = servers.Server("ours", process, f"http://127.0.0.1:{port}", log)
    servers._wait_ready(server, servers.READY_PATH["ours"])
    return server


def run_all(args: argparse.Namespace, work: dict[str, Request]) -> dict[str, list[Cpu]]:
    results: dict[str, list[Cpu]] = {name: [] for name in work}
    for _ in range(args.repeats):
        server = start(args.weights, args.log_level)
        try:
            for name, request in work.items():
                results[name].append(measure(server, request, args.requests, args.concurrency))
        finally:
            server.stop()
    return results


def report(results: dict[str, list[Cpu]]) -> None:
    print(f"{'route':<30} {'CPU µs/request':>15} {'event loop':>11} {'other threads':>14}")
    for name, runs in results.items():
        total = statistics.median(r.total for r in runs) * 1e6
        loop = statistics.median(r.loop for r in runs) * 1e6
        every = ", ".join(f"{r.total * 1e6:.0f}" for r in runs)
        print(f"{name:<30} {total:>15.0f} {loop:>11.0f} {total - loop:>14.0f}   runs: {every}")


def profile(args: argparse.Namespace, work: dict[str, Request], top: int = 25) -> None:
    """One more server under cProfile; its main thread's top functions by own time."""
    server = start(args.weights, args.log_level, args.profile)
    try:
        for request in work.values():
            send(server.base_url, request, args.requests, args.concurrency)
    finally:
        server.stop()
    stats = pstats.Stats(str(args.profile))
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, help="weights file (default: the bundled ones)")
    parser.add_argument("--requests", type=int, default=3000, help="requests a route a run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="runs; each figure is the median")
    parser.add_argument("--log-level", default="info", help="vae-serve's (info: access log on)")
    parser.add_argument("--profile", type=Path, help="also profile the event loop into FILE")
    args = parser.parse_args(argv)
    args.weights = servers.weights_or_random(args.weights)[0]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = routes(args.weights)
    print(f"{args.requests} requests a route, concurrency {args.concurrency}, "
          f"median of {args.repeats}")  # fmt: skip
    if args.repeats:  # 0: only the profile
        report(run_all(args, work))
    if args.profile:
        profile(args, work)


if __name__ == "__main__":
    main()

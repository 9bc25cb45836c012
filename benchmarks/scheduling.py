"""Fair batching and load shedding, measured against our server (issue 14).

    python -m benchmarks.scheduling --seconds 10     # both measurements, on a fresh server

- fairness: single-image /encode (JSON) at concurrency 8, alone and while one client
  sends 1,024-image npy /encode requests non-stop; and that client's throughput, alone
  and beside the small ones;
- shedding: single-image /encode at concurrency 1,000: the latency of the accepted
  (200) requests, how fast the refusals (503) come, and how many requests got no answer
  within the client's timeout.

wrk reports one latency distribution for every status, so these runs use a small asyncio
HTTP/1.1 client of their own (keep-alive connections, closed loop: each connection sends
its next request as soon as the last is answered, as wrk does) that keeps latencies by
status, and runs several loads at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks import servers, workloads
from benchmarks.load import Load, Request, drive_wrk, have_wrk
from vae_service.model import load_weights

SMALL_CONCURRENCY = 8
BIG_IMAGES = 1024
SHED_CONCURRENCY = 1000
SHED_ENV = {"VAE_MAX_QUEUE_WAIT_MS": "100"}  # the bound these runs measure (default: none)
CLIENT_TIMEOUT_S = 2.0  # wrk's default: a request unanswered this long counts as timed out


@dataclass
class Tally:
    """What one load measured: latencies by status, and requests that timed out."""

    seconds: float = 0.0
    latencies: dict[int, list[float]] = field(default_factory=dict)
    timeouts: int = 0
    broken: int = 0  # connection errors

    def count(self, status: int | None = None) -> int:
        if status is None:
            return sum(len(v) for v in self.latencies.values())
        return len(self.latencies.get(status, []))

    def rate(self, status: int = 200) -> float:
        return self.count(status) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: int, status: int = 200) -> float:
        values = self.latencies.get(status, [])
        if not values:
            return float("nan")
        if len(values) == 1:
            return values[0] * 1e3
        return statistics.quantiles(values, n=100)[q - 1] * 1e3

    def describe(self) -> str:
        codes = ", ".join(f"{s}: {len(v):,}" for s, v in sorted(self.latencies.items()))
        return (
            f"{self.rate():8,.1f} ok/s  p50 {self.percentile_ms(50):7.1f} ms  "
            f"p99 {self.percentile_ms(99):7.1f} ms  [{codes}]  timeouts {self.timeouts}  "
            f"broken {self.broken}"
        )


def raw_request(host: str, request: Request) -> bytes:
    head = [
        f"{request.method} {request.path} HTTP/1.1",
        f"Host: {host}",
        f"Content-Type: {request.content_type}",
        f"Content-Length: {len(request.body)}",
        *(f"{k}: {v}" for k, v in request.headers),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + request.body


async def _connection(host: str, port: int, payload: bytes, stop: float, tally: Tally) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < stop:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), CLIENT_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            tally.broken += 1
            await asyncio.sleep(0.05)
            continue
        try:
            while loop.time() < stop:
                sent = time.perf_counter()
                writer.write(payload)
                try:
                    async with asyncio.timeout(CLIENT_TIMEOUT_S):
                        head = await reader.readuntil(b"\r\n\r\n")
                        length = 0
                        for line in head.split(b"\r\n")[1:]:
                            name, _, value = line.partition(b":")
                            if name.strip().lower() == b"content-length":
                                length = int(value)
                        await reader.readexactly(length)
                except TimeoutError:
                    tally.timeouts += 1
                    break  # a new connection, as wrk does
                status = int(head.split(b" ", 2)[1])
                tally.latencies.setdefault(status, []).append(time.perf_counter() - sent)
                if b"connection: close" in head.lower():
                    break
        except (OSError, asyncio.IncompleteReadError):
            tally.broken += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _run_loads(
    base_url: str, loads: list[tuple[Request, int]], seconds: float
) -> list[Tally]:
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds
    tallies = [Tally() for _ in loads]
    tasks = [
        _connection(host, port, raw_request(url.netloc, request), stop, tally)
        for (request, concurrency), tally in zip(loads, tallies, strict=True)
        for _ in range(concurrency)
    ]
    started = loop.time()
    await asyncio.gather(*tasks)
    for tally in tallies:
        tally.seconds = loop.time() - started
    return tallies


def run_loads(base_url: str, loads: list[tuple[Request, int]], seconds: float) -> list[Tally]:
    """Run every (request, concurrency) load at once for ``seconds``."""
    try:
        import uvloop

        return uvloop.run(_run_loads(base_url, loads, seconds))
    except ImportError:
        return asyncio.run(_run_loads(base_url, loads, seconds))


@dataclass(frozen=True)
class Fairness:
    small_alone: Tally
    big_alone: Tally
    small_beside: Tally
    big_beside: Tally

    @property
    def p50_ratio(self) -> float:
        return self.small_beside.percentile_ms(50) / self.small_alone.percentile_ms(50)

    @property
    def big_share(self) -> float:
        return self.big_beside.rate() / self.big_alone.rate()


@dataclass(frozen=True)
class Shedding:
    load: Tally  # our timed connections (all of them without wrk)
    wrk: Load | None = None  # wrk's connections: every status in one latency distribution

    @property
    def accepted_p99_ms(self) -> float:
        return self.load.percentile_ms(99)

    @property
    def refusal_p99_ms(self) -> float:
        return self.load.percentile_ms(99, 503)

    @property
    def other(self) -> int:
        """Answers neither 200 nor 503."""
        return self.load.count() - self.load.count(200) - self.load.count(503)


def requests_for(weights: Path) -> tuple[Request, Request]:
    """Single-image JSON /encode, and 1,024-image npy /encode."""
    cfg = load_weights(weights, "cpu").model.cfg
    single = workloads.build(load_weights(weights, "cpu").model)[0].requests["ours"]
    big = workloads.npy_body(workloads.test_images(BIG_IMAGES, cfg))
    return single, Request("POST", "/encode?format=npy", big, workloads.NPY)


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * SHED_CONCURRENCY + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def measure(
    weights: Path, env: dict[str, str], threads: int, seconds: float
) -> tuple[Fairness, Shedding]:
    """Both measurements on one fresh server of ours, with a 1 s warm-up before each."""
    raise_file_limit()
    single, big = requests_for(weights)
    server = servers.start("ours", weights, threads, env)
    try:

        def run(loads: list[tuple[Request, int]], label: str) -> list[Tally]:
            run_loads(server.base_url, loads, 1.0)
            tallies = run_loads(server.base_url, loads, seconds)
            for (request, c), tally in zip(loads, tallies, strict=True):
                name = f"{label}: {request.path} c={c}"
                print(f"{name:48} {tally.describe()}", file=sys.stderr)
            return tallies

        (small_alone,) = run([(single, SMALL_CONCURRENCY)], "small alone")
        (big_alone,) = run([(big, 1)], "big alone")
        small_beside, big_beside = run([(single, SMALL_CONCURRENCY), (big, 1)], "together")
        shed, pressure = shedding_run(server.base_url, single, seconds)
    finally:
        server.stop()
    fairness = Fairness(small_alone, big_alone, small_beside, big_beside)
    return fairness, Shedding(shed, pressure)


PROBES = 8  # connections of our own client among the SHED_CONCURRENCY


def shedding_run(base_url: str, single: Request, seconds: float) -> tuple[Tally, Load | None]:
    """SHED_CONCURRENCY connections: wrk holds most of them (cheap on the CPU that the server
    needs too) and our client PROBES of them, timing its requests by status; wrk's own
    counts give the timeouts. Without wrk, our client holds all of them."""
    if not have_wrk():
        run_loads(base_url, [(single, SHED_CONCURRENCY)], 1.0)
        return run_loads(base_url, [(single, SHED_CONCURRENCY)], seconds)[0], None
    with ThreadPoolExecutor(1) as pool:
        run_loads(base_url, [(single, PROBES)], 0.0)
        warm = pool.submit(drive_wrk, base_url, single, SHED_CONCURRENCY - PROBES, 1.0, "2s")
        warm.result()
        pressure = pool.submit(
            drive_wrk, base_url, single, SHED_CONCURRENCY - PROBES, seconds, "2s"
        )
        (probe,) = run_loads(base_url, [(single, PROBES)], seconds)
        load = pressure.result()
    probe.timeouts += load.timeouts
    probe.broken += load.errors - load.timeouts - load.non_2xx
    print(f"shedding: wrk c={SHED_CONCURRENCY - PROBES}: {load}", file=sys.stderr)
    print(f"shedding: probes c={PROBES}: {probe.describe()}", file=sys.stderr)
    return probe, load


def verdicts(fairness: Fairness, shedding: Shedding) -> list[tuple[str, str, bool]]:
    """Issue 14's fairness and shedding targets: (target, measured, met)."""
    f, s = fairness, shedding
    refusals = s.load.count(503)
    return [
        (
            f"fairness: single-image p50 at c={SMALL_CONCURRENCY} beside a {BIG_IMAGES:,}-image "
            "npy client ≤ 3× alone",
            f"{f.p50_ratio:.2f}× ({f.small_beside.percentile_ms(50):.1f} / "
            f"{f.small_alone.percentile_ms(50):.1f} ms)",
            f.p50_ratio <= 3,
        ),
        (
            f"fairness: the {BIG_IMAGES:,}-image client's throughput ≥ 70% of alone",
            f"{f.big_share:.0%} ({BIG_IMAGES * f.big_beside.rate():,.0f} / "
            f"{BIG_IMAGES * f.big_alone.rate():,.0f} img/s)",
            f.big_share >= 0.7,
        ),
        (
            f"shedding: c={SHED_CONCURRENCY:,}, accepted requests' p99 ≤ 250 ms",
            f"{s.accepted_p99_ms:.0f} ms (p50 {s.load.percentile_ms(50):.0f} ms, "
            f"{s.load.rate():,.0f} ok/s)",
            s.accepted_p99_ms <= 250,
        ),
        (
            f"shedding: c={SHED_CONCURRENCY:,}, no client-side timeouts ({CLIENT_TIMEOUT_S:g} s)",
            f"{s.load.timeouts} timeouts, {s.load.broken} connection errors",
            s.load.timeouts == 0 and s.load.broken == 0,
        ),
        (
            f"shedding: c={SHED_CONCURRENCY:,}, every refusal a fast 503 (p99 ≤ 250 ms)",
            f"{refusals:,} × 503, p99 {s.refusal_p99_ms:.0f} ms; {s.other} other statuses"
            + ("" if refusals else " (the timed probes got no 503: not measured)"),
            s.other == 0 and refusals > 0 and s.refusal_p99_ms <= 250,
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for our server")
    args = parser.parse_args(argv)
    weights, _ = servers.weights_or_random(args.weights)
    env = {"VAE_TORCH_THREADS": str(args.threads), "VAE_LOG_LEVEL": "warning", **SHED_ENV}
    env.update(item.split("=", 1) for item in args.env)
    fairness, shedding = measure(weights, env, args.threads, args.seconds)
    for target, measured, met in verdicts(fairness, shedding):
        print(f"{'yes' if met else 'NO ':3}  {target}: {measured}")


if __name__ == "__main__":
    main()

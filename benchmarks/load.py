"""Load generators: wrk (with a Lua script for the request body) when installed, else an
async httpx client. Both hold ``concurrency`` keep-alive connections busy for a while
and report requests/s and latency percentiles."""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

# wrk prints this line from the Lua done() hook; latencies are in microseconds.
WRK_SCRIPT = """
wrk.method = "{method}"
wrk.headers["Content-Type"] = "{content_type}"
{extra_headers}local f = io.open("{body_path}", "rb")
wrk.body = f:read("*all")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %.1f %.1f %d %d %d\\n", summary.requests,
    summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout, e.timeout, e.status))
end
"""


@dataclass(frozen=True)
class Request:
    """One HTTP request, sent again and again."""

    method: str
    path: str
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()  # more, such as Inference-Header-Content-Length


@dataclass(frozen=True)
class Load:
    """What one run measured."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    timeouts: int = 0  # of the errors: requests unanswered within the client's timeout
    non_2xx: int = 0  # of the errors: answers with a status other than 2xx or 3xx

    @property
    def rate(self) -> float:
        """Successful requests per second: an error answers nothing."""
        return (self.requests - self.errors) / self.seconds


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def drive(base_url: str, request: Request, concurrency: int, seconds: float) -> Load:
    """Keep ``concurrency`` requests in flight for ``seconds``."""
    if have_wrk():
        return drive_wrk(base_url, request, concurrency, seconds)
    return asyncio.run(drive_httpx(base_url, request, concurrency, seconds))


def drive_wrk(
    base_url: str, request: Request, concurrency: int, seconds: float, timeout: str = "30s"
) -> Load:
    with tempfile.TemporaryDirectory() as tmp:
        body, script = Path(tmp, "body"), Path(tmp, "script.lua")
        body.write_bytes(request.body)
        script.write_text(
            WRK_SCRIPT.format(
                method=request.method,
                content_type=request.content_type,
                body_path=body,
                extra_headers="".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in request.headers),
            )
        )
        # One wrk thread: the server under test needs the machine's other cores.
        command = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s"]
        command += ["--latency", "--timeout", timeout, "-s", str(script), base_url + request.path]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    requests, micros, p50, p99, errors, timeouts, status = line.split()[1:]
    return Load(
        int(requests),
        int(micros) / 1e6,
        float(p50) / 1e3,
        float(p99) / 1e3,
        int(errors),
        int(timeouts),
        int(status),
    )


async def drive_httpx(base_url: str, request: Request, concurrency: int, seconds: float) -> Load:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": request.content_type, **dict(request.headers)}
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        started = time.perf_counter()
        stop = started + seconds

        async def user() -> None:
            nonlocal errors
            while (sent := time.perf_counter()) < stop:
                response = await client.request(
                    request.method, request.path, content=request.body or None, headers=headers
                )
                latencies.append(time.perf_counter() - sent)
                errors += not response.is_success

        await asyncio.gather(*(user() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return Load(len(latencies), elapsed, cuts[49] * 1e3, cuts[98] * 1e3, errors)

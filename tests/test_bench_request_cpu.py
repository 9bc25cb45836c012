"""benchmarks/request_cpu.py: it drives a real vae-serve and prints CPU per request for
each route, and reads a process's CPU time from /proc whatever the process is named."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from benchmarks import request_cpu

ROOT = Path(__file__).resolve().parents[1]


def test_it_prints_cpu_per_request_for_each_route(tiny_weights: Path) -> None:
    command = [sys.executable, "-m", "benchmarks.request_cpu", "--weights", str(tiny_weights),
               "--requests", "40", "--concurrency", "2", "--repeats", "1"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split("  ")[0]: line for line in done.stdout.splitlines()}
    for route in ("POST /encode (1 image, JSON)", "GET /sample?n=1&seed=1"):
        total, loop, other = map(int, re.findall(r"\s(-?\d+)", rows[route])[:3])
        assert total > 0 and total == loop + other, rows[route]


def test_cpu_time_is_read_past_a_name_with_spaces_and_brackets(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    ticks = [str(n) for n in range(3, 50)]
    ticks[11], ticks[12] = "250", "150"  # utime and stime: the 14th and 15th fields
    stat.write_text("42 (a (b) c) " + " ".join(ticks))
    assert abs(request_cpu.stat_seconds(stat) - 400 * request_cpu.TICK_S) < 1e-9
    own = request_cpu.cpu_of(os.getpid())
    assert own.total >= own.loop > 0

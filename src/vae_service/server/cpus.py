"""How many CPUs this process may really use: its CPU affinity and its cgroup's CPU
quota, whichever is smaller.

``os.sched_getaffinity`` alone ignores a container's quota (``docker run --cpus 2`` on a
64-core host still shows 64), and neither the standard library nor psutil reads the
quota, hence this small reader of the kernel's own files.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def quota_cpus(quota: str, period: str) -> float | None:
    """CPUs a quota allows per period; None for no limit (``max`` or ``-1``)."""
    if quota.strip() in ("max", "-1") or not period.strip():
        return None
    return int(quota) / int(period)


def read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def ancestors(root: Path, cgroup_path: str) -> list[Path]:
    """The process's cgroup folder under ``root`` and every folder above it, up to
    ``root``: a quota set on any of them applies."""
    parts = [part for part in cgroup_path.split("/") if part]
    return [root.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def v2_limits(root: Path, cgroup_path: str) -> list[float]:
    """cgroup v2: ``cpu.max`` holds "QUOTA PERIOD" or "max PERIOD"."""
    limits = []
    for folder in ancestors(root, cgroup_path):
        text = read(folder / "cpu.max")
        if text and len(text.split()) == 2 and (cpus := quota_cpus(*text.split())):
            limits.append(cpus)
    return limits


def v1_limits(root: Path, cgroup_path: str) -> list[float]:
    """cgroup v1: ``cpu.cfs_quota_us`` (-1 for none) over ``cpu.cfs_period_us``."""
    limits = []
    for mount in ("cpu", "cpu,cpuacct"):
        for folder in ancestors(root / mount, cgroup_path):
            quota, period = read(folder / "cpu.cfs_quota_us"), read(folder / "cpu.cfs_period_us")
            if quota and period and (cpus := quota_cpus(quota, period)):
                limits.append(cpus)
    return limits


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The tightest CPU quota over this process's cgroups (v2 or v1), or None."""
    limits: list[float] = []
    for line in (read(proc_cgroup) or "").splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and not controllers:
            limits += v2_limits(root, path)
        elif "cpu" in controllers.split(","):
            limits += v1_limits(root, path)
    return min(limits, default=None)


def usable_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """CPUs allowed by affinity, capped by the cgroup quota rounded up (1.5 CPUs of
    quota can keep two threads half busy), and at least 1."""
    cpus = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)

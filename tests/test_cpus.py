"""The torch thread count follows the CPU affinity and the cgroup CPU quota, read from
fake cgroup trees (v2 and v1) laid out as the kernel lays them out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vae_service.server import runtime
from vae_service.server.cpus import cgroup_cpu_limit, usable_cpus


def tree(tmp_path: Path, proc_cgroup: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(proc_cgroup)
    return root, proc


@pytest.fixture
def many_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 64-core host, whatever this machine has."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))


def test_v2_quota_of_a_docker_cpus_2_container(tmp_path: Path, many_cores: None) -> None:
    root, proc = tree(tmp_path, "0::/\n", {"cpu.max": "200000 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 2.0
    assert usable_cpus(root, proc) == 2


def test_v2_quota_set_on_a_parent_cgroup_applies(tmp_path: Path, many_cores: None) -> None:
    files = {
        "kubepods.slice/cpu.max": "350000 100000\n",
        "kubepods.slice/pod1/cpu.max": "max 100000\n",
        "kubepods.slice/pod1/ctr/cpu.max": "max 100000\n",
    }
    root, proc = tree(tmp_path, "0::/kubepods.slice/pod1/ctr\n", files)
    assert usable_cpus(root, proc) == 4  # 3.5 CPUs of quota keep 4 threads busy part-time


def test_v2_without_a_quota_uses_the_affinity(tmp_path: Path, many_cores: None) -> None:
    root, proc = tree(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, proc) is None
    assert usable_cpus(root, proc) == 64


def test_v1_cfs_quota(tmp_path: Path, many_cores: None) -> None:
    files = {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "150000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
    }
    root, proc = tree(tmp_path, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n", files)
    assert cgroup_cpu_limit(root, proc) == 1.5
    assert usable_cpus(root, proc) == 2


def test_v1_unlimited_quota(tmp_path: Path, many_cores: None) -> None:
    files = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    root, proc = tree(tmp_path, "2:cpu:/\n", files)
    assert usable_cpus(root, proc) == 64


def test_affinity_below_the_quota_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    root, proc = tree(tmp_path, "0::/\n", {"cpu.max": "800000 100000\n"})
    assert usable_cpus(root, proc) == 3


def test_no_cgroup_files_at_all(tmp_path: Path, many_cores: None) -> None:
    assert usable_cpus(tmp_path / "none", tmp_path / "none") == 64


def test_torch_threads_leave_one_usable_cpu_to_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 2)  # e.g. a --cpus 2 container
    assert runtime.torch_threads(0) == 1
    assert runtime.torch_threads(5) == 5
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 1)
    assert runtime.torch_threads(0) == 1

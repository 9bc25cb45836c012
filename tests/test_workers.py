"""vae-serve --workers N: settings reach every worker, bad weights stop it before it
listens, /metrics from any worker sums over all of them, SIGTERM drains them all, and no
worker outlives its supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from test_shutdown import load_until_gone, logged_requests

from tests.conftest import launch_server
from vae_service.server.cli import PROG, worker_environment
from vae_service.server.metrics import MULTIPROC_DIR, QUEUE_REFRESH_S
from vae_service.server.reload_notices import ReloadNotices
from vae_service.server.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DECODE = {"endpoint": "/decode", "method": "POST", "status": "200", "model": "tiny"}


def test_the_environment_gives_each_worker_the_same_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = Settings(
        weights=tmp_path / "w.safetensors",
        workers=3,
        torch_threads=2,
        max_batch_delay_ms=0.5,
        api_keys=[SecretStr("k1"), SecretStr("k,2")],
        cors_origins=["https://a.example"],
        access_log=False,
        log_level="warning",
    )
    for variable, value in worker_environment(settings).items():
        if value is None:
            monkeypatch.delenv(variable, raising=False)
        else:
            monkeypatch.setenv(variable, value)
    assert Settings() == settings
    assert [key.get_secret_value() for key in Settings().api_keys] == ["k1", "k,2"]


def test_workers_share_the_cpus_when_torch_threads_is_unset() -> None:
    one = worker_environment(Settings(workers=1))["VAE_TORCH_THREADS"]
    assert one == "0"  # one process: the usual rule (every usable CPU less one)
    shared = worker_environment(Settings(workers=64))["VAE_TORCH_THREADS"]
    assert shared == "1"


def test_bad_weights_stop_every_worker_before_listening(tmp_path: Path) -> None:
    """vae-serve reads the weights once, before it starts any worker: the one check
    that test_api_ops.py::test_bad_weights_stop_start_up_with_one_line runs for each
    kind of bad file (missing, corrupt) without --workers."""
    weights = tmp_path / "bad.safetensors"
    weights.write_bytes(b"not a safetensors file")
    command = [sys.executable, "-m", "vae_service.server.cli", "--workers", "2", "--port", "1"]
    result = subprocess.run(
        [*command, "--weights", str(weights), "--device", "cpu"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vae-serve: cannot start:"), result.stderr


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def per_worker(folder: Path, endpoint: str) -> Counter[str]:
    """pid -> requests to ``endpoint`` that worker answered, from its own metric file."""
    counts: Counter[str] = Counter()
    for path in folder.glob("counter_*.db"):
        pid = path.stem.removeprefix("counter_")
        for metric in MultiProcessCollector.merge([str(path)]):
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels.get("endpoint") == endpoint:
                    counts[pid] += int(sample.value)
    return counts


def recorded(folder: Path, endpoint: str, answered: int, timeout_s: float = 5) -> Counter[str]:
    """``per_worker`` once the workers have counted ``answered`` requests, or the timeout
    has passed: a worker counts a request just after sending its answer (the middleware
    records it as the app returns), so a client that has every answer can read the files
    a moment before the last count (seen once on a loaded machine: 15 of 16)."""
    deadline = time.monotonic() + timeout_s
    while sum((counts := per_worker(folder, endpoint)).values()) < answered:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return counts


def wait_for_workers(server: Any, count: int, timeout_s: float = 120) -> None:
    """Until ``count`` workers have started serving: a client's connections would
    otherwise all go to the first one ready."""
    deadline = time.monotonic() + timeout_s
    while server.log.read_text().count("Application startup complete.") < count:
        assert time.monotonic() < deadline and server.process.poll() is None, server.log.read_text()
        time.sleep(0.2)


def process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # it ended meanwhile
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    tree = [root]
    for pid in tree:  # grows as it goes: each process's children after it
        tree.extend(children.get(pid, []))
    return tree


def running(pid: int) -> bool:
    """Whether ``pid`` runs still; a zombie (ended, not yet reaped) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def end_workers(server: Any) -> None:
    """Freeze the supervisor, so that it starts no replacement, then kill it and every
    process it started (conftest's teardown kills the supervisor alone)."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGSTOP)
        for pid in process_tree(server.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        server.process.wait()


def fresh_connection(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request on a connection of its own, so that either worker may accept it."""
    with httpx.Client(timeout=30) as client:
        return client.request(method, url, **kwargs)


ADMIN_KEY = "admin-key"


class WorkerPool:
    """vae-serve with 2 workers (weights polled every 0.2 s, an admin key), shared by
    this module's tests: a start costs about 6 s. A test names what it counts on the
    server and what it does to it; it gets the running server unless that has ended or
    has had something done to it that the test counts, and then a new one."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory, weights: Path) -> None:
        self.tmp_path_factory, self.weights = tmp_path_factory, weights
        self.servers: list[tuple[Any, Path]] = []
        self.done: set[str] = set()

    def get(self, counts: set[str], does: set[str]) -> tuple[Any, Path]:
        """The server, both workers up, and its Prometheus multiprocess folder."""
        if not self.servers or self.servers[-1][0].process.poll() is not None or counts & self.done:
            self.start()
        self.done |= does
        return self.servers[-1]

    def start(self) -> None:
        if self.servers:
            end_workers(self.servers[-1][0])
        folder = self.tmp_path_factory.mktemp("workers")
        env = {**os.environ, MULTIPROC_DIR: str(folder / "metrics"), "VAE_ADMIN_KEYS": ADMIN_KEY}
        flags = ("--device", "cpu", "--workers", "2", "--model-poll-s", "0.2")
        server = launch_server(folder, "--weights", str(self.weights), *flags, env=env)
        self.servers.append((server, folder / "metrics"))
        self.done = set()
        wait_for_workers(server, 2)


@pytest.fixture(scope="module")
def worker_pool(
    tmp_path_factory: pytest.TempPathFactory, served_weights: Path
) -> Iterator[WorkerPool]:
    pool = WorkerPool(tmp_path_factory, served_weights)
    try:
        yield pool
    finally:
        for server, _ in pool.servers:
            end_workers(server)


@pytest.mark.slow
def test_metrics_from_any_worker_sum_over_all_workers(worker_pool: WorkerPool) -> None:
    counted = {"/decode", "/metrics", "reload"}  # one load per worker: no reload before
    server, folder = worker_pool.get(counts=counted, does={"/decode", "/metrics"})
    sent = 0
    with ThreadPoolExecutor(8) as pool:
        while len(per_worker(folder, "/decode")) < 2 and sent < 800:  # until both answered
            replies = pool.map(
                lambda _: fresh_connection("POST", f"{server.url}/decode", json={"z": [[0.0] * 4]}),
                range(16),
            )
            assert {reply.status_code for reply in replies} == {200}
            sent += 16
    by_worker = recorded(folder, "/decode", sent)
    assert len(by_worker) == 2 and sum(by_worker.values()) == sent, by_worker

    time.sleep(3 * QUEUE_REFRESH_S)  # another worker's queue depth is that stale at most
    scrapes = 0  # scrape until each worker has answered at least one
    while len(per_worker(folder, "/metrics")) < 2 and scrapes < 200:
        reply = fresh_connection("GET", f"{server.url}/metrics")
        scrapes += 1
        scraped = samples(reply.text)
        assert scraped[("vae_http_requests_total", frozenset(DECODE.items()))] == sent
        count = (
            "vae_http_request_duration_seconds_count",
            frozenset({"endpoint": "/decode", "model": "tiny"}.items()),
        )
        assert scraped[count] == sent
        assert scraped[("vae_queue_rows", frozenset({"model": "tiny"}.items()))] == 0
        assert scraped[("vae_model_load_seconds", frozenset({"model": "tiny"}.items()))] > 0
        assert any(name == "vae_model_info" for name, _ in scraped)
        loads = (
            "vae_model_loads_total",
            frozenset({"model": "tiny", "outcome": "success"}.items()),
        )
        assert scraped[loads] == 2  # one load per worker
    assert len(per_worker(folder, "/metrics")) == 2
    print(f"workers: /decode {dict(by_worker)}, /metrics {dict(per_worker(folder, '/metrics'))}")


@pytest.mark.slow
def test_sigterm_drains_every_worker(worker_pool: WorkerPool) -> None:
    server, folder = worker_pool.get(counts={"/sample"}, does={"/sample"})
    pid = server.process.pid

    async def scenario() -> tuple[dict[str, Any], float]:
        # A new connection per request: a keep-alive pool opened at once could be accepted
        # wholly by one worker (asyncio accepts a burst per wake-up), leaving the other idle.
        stop_at = time.monotonic() + 30
        load = asyncio.create_task(load_until_gone(server.url, stop_at, keep_alive=False))
        await asyncio.sleep(2.0)
        os.kill(pid, signal.SIGTERM)
        signalled = time.monotonic()
        return await load, signalled

    outcome, signalled = asyncio.run(scenario())
    assert server.process.wait(timeout=60) == 0
    answered, logged = outcome["answered"], logged_requests(server.log)
    assert logged, server.log.read_text()[-2000:]
    assert {rid: answered.get(rid, (None,))[0] for rid in logged} == logged
    assert set(answered) == set(logged)
    assert {status for status, _ in answered.values()} == {200}
    assert sum(1 for _, at in answered.values() if at > signalled) > 0
    by_worker = per_worker(folder, "/sample")  # the files outlive the workers
    assert len(by_worker) == 2 and sum(by_worker.values()) == len(logged), by_worker
    messages = server.log.read_text()
    assert messages.count("Application shutdown complete.") == 2
    print(f"shutdown, 2 workers: {len(answered)} answered, by worker {dict(by_worker)}")


def test_a_reload_notice_reaches_the_other_workers_once(tmp_path: Path) -> None:
    before = ReloadNotices(tmp_path)
    before.announce("old")
    here, there = ReloadNotices(tmp_path), ReloadNotices(tmp_path)
    assert there.pending() == []  # what was announced before a worker started, it loaded
    here.announce("tiny")
    assert here.pending() == []  # its own reload is done already
    assert there.pending() == ["tiny"]
    assert there.pending() == []
    here.announce("tiny")
    assert there.pending() == ["tiny"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old", "tiny"]  # no partial files


@pytest.mark.slow
def test_a_reload_reaches_every_worker(worker_pool: WorkerPool) -> None:
    server, _ = worker_pool.get(counts={"reload"}, does={"reload", "/metrics"})
    reply = fresh_connection(
        "POST", f"{server.url}/models/tiny/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert reply.status_code == 200, reply.text
    swaps = ("vae_model_swaps_total", frozenset({"model": "tiny"}.items()))
    deadline = time.monotonic() + 30
    while (scraped := samples(fresh_connection("GET", f"{server.url}/metrics").text)).get(
        swaps
    ) != 2:  # one new version in each worker
        assert time.monotonic() < deadline, scraped.get(swaps)
        time.sleep(0.2)
    loads = ("vae_model_loads_total", frozenset({"model": "tiny", "outcome": "success"}.items()))
    assert scraped[loads] == 4
    assert server.log.read_text().count("reloading, as another worker did") == 1


@pytest.mark.parametrize("ours", [True, False])
def test_workers_answer_without_waiting_for_delayed_acks(ours: bool) -> None:
    """Every connection accepted from the workers' shared socket has Nagle's algorithm
    off, as when asyncio binds the socket itself. Bound by uvicorn for its workers, they
    had it on, and an answer's body waited for the client's delayed ACK of its head: 44 ms."""
    import uvicorn

    from vae_service.server.cli import listening_socket

    app = "vae_service.server.cli:worker_app"
    if ours:  # as uvicorn.run(fd=...) takes it over: a duplicate of its fd
        with listening_socket("127.0.0.1", 0) as bound:
            listening = uvicorn.Config(app, fd=bound.fileno()).bind_socket()
    else:  # as uvicorn.run binds it for its workers
        listening = uvicorn.Config(app, host="127.0.0.1", port=0).bind_socket()

    async def accepted_nodelay() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                sock = transport.get_extra_info("socket")
                accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        server = await asyncio.get_running_loop().create_server(Probe, sock=listening)
        _, writer = await asyncio.open_connection(*listening.getsockname()[:2])
        try:
            return await asyncio.wait_for(accepted, 10)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(accepted_nodelay()) == (1 if ours else 0)


@pytest.mark.slow
def test_workers_end_with_their_supervisor_however_it_ends(worker_pool: WorkerPool) -> None:
    """SIGKILL runs nothing in vae-serve: its workers go because each asked Linux to be
    sent SIGTERM when it ends (PR_SET_PDEATHSIG)."""
    server, _ = worker_pool.get(counts=set(), does={"kill"})
    started = process_tree(server.process.pid)[1:]
    assert len(started) >= 2, started  # the workers (and multiprocessing's resource tracker)
    server.process.kill()
    server.process.wait()
    deadline = time.monotonic() + 60
    while left := [pid for pid in started if running(pid)]:
        assert time.monotonic() < deadline, f"still running after SIGKILL: {left}"
        time.sleep(0.2)


FAILING_WORKERS = """
from contextlib import asynccontextmanager

from fastapi import FastAPI

from vae_service.server import cli


@asynccontextmanager
async def cannot_start(app):
    raise RuntimeError("this worker cannot start")
    yield


cli.worker_app = lambda: FastAPI(lifespan=cannot_start)  # each worker runs this file first
# The supervisor notices an ended worker when a health check sent as it exited times out:
# 60 s in vae-serve, for slow starts on a busy machine. A worker killed as hung here is
# replaced, and its replacement fails to start all the same: the outcome does not change.
cli.WORKER_HEALTHCHECK_S = 5

if __name__ == "__main__":
    cli.main()
"""


@pytest.mark.slow
def test_a_worker_that_fails_to_start_stops_vae_serve(tiny_weights: Path, tmp_path: Path) -> None:
    """uvicorn's supervisor notices an ended worker when its health check, sent as the
    worker exited, times out: up to 60 s in vae-serve (WORKER_HEALTHCHECK_S), which made
    this test take about 70 s; its script lowers the timeout to 5 s."""
    script = tmp_path / "failing_workers.py"
    script.write_text(FAILING_WORKERS)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    flags = ["--weights", str(tiny_weights), "--device", "cpu", "--workers", "2"]
    result = subprocess.run(
        [sys.executable, str(script), *flags, "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"{PROG}: a worker process failed to start (its error is in the log above)"
    )

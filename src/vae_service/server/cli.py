"""``vae-serve``: check the weights, then serve them with uvicorn.

Every setting is a flag that overrides its ``VAE_*`` environment variable. Weights
that cannot be used stop the process with one line and exit status 1, before it
listens. SIGTERM (or Ctrl-C) is a graceful shutdown: stop accepting, answer every
request in flight (for up to ``graceful_shutdown_s``), drain the batcher, exit 0.
Everything it logs, uvicorn's own lines included, is one JSON object per line on stderr.

``--workers N`` (N > 1) runs N worker processes on the one port under uvicorn's
supervisor. The weights are still checked once here, before listening; then each worker
builds its own app (``worker_app``, settings through the ``VAE_*`` environment), loads
its own models and batchers, and writes its metrics to ``PROMETHEUS_MULTIPROC_DIR``, so
that /metrics from any worker covers them all. SIGTERM stops listening and drains every
worker; vae-serve exits 0 once all have finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import typing
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr, ValidationError
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from vae_service.model import Checkpoint, WeightsError
from vae_service.model.device import resolve_device
from vae_service.server.cpus import usable_cpus
from vae_service.server.http_protocol import GatheringHttpToolsProtocol
from vae_service.server.main import create_app
from vae_service.server.metrics import MULTIPROC_DIR
from vae_service.server.observability import server_log_config
from vae_service.server.runtime import DeviceError, load_checkpoint
from vae_service.server.settings import Settings, env_name

PROG = "vae-serve"
# How long the supervisor waits for a worker to answer its health check before it kills
# and replaces it. uvicorn's 5 s counts a worker's start-up imports (torch) too: on a busy
# machine (load average 6 on 2 cores) workers were killed as hung before they started.
WORKER_HEALTHCHECK_S = 60


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve a VAE over HTTP (FastAPI + uvicorn). API docs at /docs.",
        epilog="Each flag overrides its environment variable, which overrides the default.",
    )
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        choices = (
            typing.get_args(field.annotation)
            if typing.get_origin(field.annotation) is typing.Literal
            else None
        )
        parser.add_argument(
            flag(name),
            dest=name,
            metavar=name.upper(),
            choices=choices,
            help=f"{field.description} [env {env_name(name)}; default: {default}]",
        )
    return parser


def describe(exc: ValidationError) -> str:
    """A settings error on one line, naming both the flag and the variable."""
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "settings"
        problems.append(f"{flag(name)} / {env_name(name)}: {error['msg']}")
    return "; ".join(problems)


def read_settings(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> Settings:
    overrides = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        parser.error(describe(exc))


def check_single_model(settings: Settings) -> Checkpoint | None:
    """Without a repository, the weights are read before listening, so that unusable
    ones stop the process with one line; a repository's bad files are only reported."""
    try:
        resolve_device(settings.device)
        if settings.model_dir is not None:
            if not settings.model_dir.is_dir():
                raise WeightsError(settings.model_dir, "VAE_MODEL_DIR is not a folder")
            return None
        return load_checkpoint(settings.weights, settings.device)
    except (WeightsError, DeviceError, ValueError) as exc:
        sys.exit(f"{PROG}: cannot start: {exc}")


def worker_environment(settings: Settings) -> dict[str, str | None]:
    """The ``VAE_*`` variables that give a worker process ``settings`` (None: unset).
    With ``--workers`` and no ``--torch-threads``, each worker gets its share of the
    CPUs, less one for its event loop, at least one."""
    env: dict[str, str | None] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            env[env_name(name)] = None
        elif isinstance(value, list):
            items = [v.get_secret_value() if isinstance(v, SecretStr) else v for v in value]
            env[env_name(name)] = json.dumps(items)
        elif isinstance(value, bool):
            env[env_name(name)] = "true" if value else "false"
        else:
            env[env_name(name)] = str(value)
    if settings.torch_threads == 0 and settings.workers > 1:
        share = max(1, usable_cpus() // settings.workers - 1)
        env[env_name("torch_threads")] = str(share)
    return env


def worker_app() -> FastAPI:
    """One worker's app (``--workers`` > 1): settings from the environment vae-serve
    set, its own models, its metrics in PROMETHEUS_MULTIPROC_DIR."""
    logging.captureWarnings(True)
    return create_app(Settings())


def metrics_folder() -> tuple[Path, bool]:
    """PROMETHEUS_MULTIPROC_DIR when set (emptied of an earlier run's files, as the
    client library requires), else a new temporary folder; and whether it is ours."""
    given = os.environ.get(MULTIPROC_DIR)
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
        return folder, False
    return Path(tempfile.mkdtemp(prefix="vae-serve-metrics-")), True


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor, which also closes its own copy of the listening
    socket on SIGTERM and SIGINT: while the workers drain, new connections are refused
    rather than left waiting in the backlog until every process has exited."""

    def stop_listening(self) -> None:
        for sock in self.sockets:
            sock.close()

    def handle_term(self) -> None:
        self.stop_listening()
        super().handle_term()

    def handle_int(self) -> None:
        self.stop_listening()
        super().handle_int()


def server_options(settings: Settings) -> dict[str, typing.Any]:
    """uvicorn's options, the same for one process and for each worker."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": server_log_config(settings.log_level),
        "log_level": settings.log_level,
        "access_log": False,  # the service writes its own JSON line per request
        "timeout_graceful_shutdown": settings.graceful_shutdown_s,
        # Clients and proxies must close idle connections, not the server: with both
        # at 5 s (uvicorn's and httpx's defaults) a client reused a connection the
        # server was closing, and the request failed (ReadError).
        "timeout_keep_alive": settings.keep_alive_s,
        # asyncio's own loop, not uvloop: libuv accepts one connection per loop turn
        # (libuv PR 3696), so under load a burst of new connections waited seconds in
        # the listen backlog (BENCHMARKS.md, "Accepting bursts of connections");
        # asyncio accepts the whole backlog at once, at the same CPU per request here.
        "loop": "asyncio",
        "http": GatheringHttpToolsProtocol,
    }


def tcp_socket(sock: socket.socket) -> socket.socket:
    """``sock`` with its protocol named: asyncio sets TCP_NODELAY only on accepted sockets
    whose protocol is IPPROTO_TCP, and uvicorn binds with protocol 0. Without it each
    answer's body waited for the client's delayed ACK of its head: 44 ms a request."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return sock
    return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())


def serve_workers(settings: Settings) -> None:
    """``--workers`` > 1: the supervisor, the shared socket and N worker processes."""
    folder, ours = metrics_folder()
    os.environ[MULTIPROC_DIR] = str(folder)
    for variable, value in worker_environment(settings).items():
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = value
    config = uvicorn.Config(
        "vae_service.server.cli:worker_app",
        factory=True,
        workers=settings.workers,
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
        **server_options(settings),
    )
    supervisor = Supervisor(config, sockets=[tcp_socket(config.bind_socket())])
    try:
        supervisor.run()
    finally:
        if ours:
            shutil.rmtree(folder, ignore_errors=True)
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        sys.exit(f"{PROG}: a worker process failed to start (its error is in the log above)")


def main(argv: Sequence[str] | None = None) -> None:
    settings = read_settings(build_parser(), argv)
    checkpoint = check_single_model(settings)
    if settings.workers > 1:
        del checkpoint  # checked; each worker loads its own
        logging.captureWarnings(True)
        serve_workers(settings)
        return
    app = create_app(settings, checkpoint)
    # uvicorn re-raises the signal that stopped it once it has shut down; with these
    # handlers that is a no-op, so a graceful shutdown exits 0, not 143.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda signum, frame: None)
    logging.captureWarnings(True)  # as JSON lines too, through "py.warnings"
    uvicorn.run(app, **server_options(settings))


if __name__ == "__main__":
    main()

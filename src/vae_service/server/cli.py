"""``vae-serve``: check the weights, then serve them with uvicorn.

Every setting is a flag that overrides its ``VAE_*`` environment variable. Weights
that cannot be used stop the process with one line and exit status 1, before it
listens. SIGTERM (or Ctrl-C) is a graceful shutdown: stop accepting, answer every
request in flight (for up to ``graceful_shutdown_s``), drain the batcher, exit 0.
Everything it logs, uvicorn's own lines included, is one JSON object per line on stderr.

``--workers N`` (N > 1) runs N worker processes on the one port under uvicorn's
supervisor (``uvicorn.run(..., workers=N)``). The weights are still checked once here,
before listening; then each worker builds its own app (``worker_app``, settings through
the ``VAE_*`` environment), loads its own models and batchers, and writes its metrics to
``PROMETHEUS_MULTIPROC_DIR``, so that /metrics from any worker covers them all. SIGTERM
drains every worker; vae-serve exits 0 once all have finished. A worker ends with its
supervisor, however that ends.
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
from collections.abc import Callable, Sequence
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr, ValidationError

from vae_service.model import Checkpoint, WeightsError
from vae_service.model.device import resolve_device
from vae_service.server.cpus import usable_cpus
from vae_service.server.main import create_app
from vae_service.server.metrics import MULTIPROC_DIR
from vae_service.server.observability import server_log_config
from vae_service.server.process import end_with_supervisor
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
    end_with_supervisor()
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
    }


def listening_socket(host: str, port: int) -> socket.socket:
    """The workers' shared socket, bound as uvicorn binds it, and with TCP_NODELAY, which
    every connection accepted from it inherits (Linux). The one workaround for a uvicorn
    bug: with workers it binds with protocol 0, so asyncio leaves Nagle's algorithm on
    and each answer's body waited 44 ms for the client's delayed ACK of its head."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        sys.exit(f"{PROG}: cannot listen on {host}:{port}: {exc}")
    return sock


def signals_during(run: Callable[[], None]) -> set[int]:
    """Calls ``run``; returns the signals that came meanwhile, whatever handlers ``run``
    installed: Python writes each one's number to the wakeup fd before calling its handler."""
    reader, writer = socket.socketpair()
    with reader, writer:
        reader.setblocking(False)
        writer.setblocking(False)
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        try:
            run()
        finally:
            signal.set_wakeup_fd(previous)
        try:
            return set(reader.recv(4096))
        except BlockingIOError:
            return set()


def serve_workers(settings: Settings) -> None:
    """``--workers`` > 1: uvicorn's supervisor, the shared socket and N worker processes."""
    folder, ours = metrics_folder()
    os.environ[MULTIPROC_DIR] = str(folder)
    for variable, value in worker_environment(settings).items():
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = value
    try:
        with listening_socket(settings.host, settings.port) as sock:
            received = signals_during(
                lambda: uvicorn.run(
                    "vae_service.server.cli:worker_app",
                    factory=True,
                    workers=settings.workers,
                    fd=sock.fileno(),  # uvicorn listens on it instead of host:port
                    timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
                    **server_options(settings),
                )
            )
    finally:
        if ours:
            shutil.rmtree(folder, ignore_errors=True)
    # uvicorn.run returns both when asked to stop and when a worker failed to start
    if not received & {signal.SIGTERM, signal.SIGINT}:
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

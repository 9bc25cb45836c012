"""``vae-serve``: check the weights, then serve them with uvicorn.

Every setting is a flag that overrides its ``VAE_*`` environment variable. Weights
that cannot be used stop the process with one line and exit status 1, before it
listens. SIGTERM (or Ctrl-C) is a graceful shutdown: stop accepting, answer every
request in flight (for up to ``graceful_shutdown_s``), drain the batcher, exit 0.
Everything it logs, uvicorn's own lines included, is one JSON object per line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import typing
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from model import Checkpoint, WeightsError
from model.distributed import resolve_device
from service.main import create_app
from service.observability import server_log_config
from service.runtime import DeviceError, load_checkpoint
from service.settings import Settings, env_name

PROG = "vae-serve"


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


def main(argv: Sequence[str] | None = None) -> None:
    settings = read_settings(build_parser(), argv)
    app = create_app(settings, check_single_model(settings))
    # uvicorn re-raises the signal that stopped it once it has shut down; with these
    # handlers that is a no-op, so a graceful shutdown exits 0, not 143.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda signum, frame: None)
    logging.captureWarnings(True)  # as JSON lines too, through "py.warnings"
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=server_log_config(settings.log_level),
        log_level=settings.log_level,
        access_log=False,  # the service writes its own JSON line per request
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
        # Clients and proxies must close idle connections, not the server: with both
        # at 5 s (uvicorn's and httpx's defaults) a client reused a connection the
        # server was closing, and the request failed (ReadError).
        timeout_keep_alive=settings.keep_alive_s,
    )


if __name__ == "__main__":
    main()

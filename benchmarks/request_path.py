"""Which project files and functions one single-image ``POST /encode`` passes through.

    python -m benchmarks.request_path              # this checkout (vae_service)
    python -m benchmarks.request_path --list       # and name each function

The app runs in process on the bundled default weights; after a few warm-up requests,
one request (a base64 PNG in JSON, through httpx's ASGI transport, so the app's own
middleware and routes but not uvicorn) is traced with ``sys.setprofile`` in every
thread, the batcher's included. Only calls into the project's own source files count.
Run from an older checkout's root, it traces the layout that checkout has (``service``
and ``model`` before the single ``vae_service`` package), so that the two can be
compared with the same script.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import numpy as np
from PIL import Image

COMPREHENSIONS = ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>")


def import_app() -> tuple[Callable[..., Any], Any, Path]:
    """(create_app, the settings class, the package root) of the checkout run from."""
    if (Path.cwd() / "service" / "main.py").exists():  # the layout before one import root
        sys.path.insert(0, str(Path.cwd()))
        from service.main import create_app  # type: ignore[import-not-found]
        from service.settings import Settings  # type: ignore[import-not-found]

        return create_app, Settings, Path.cwd() / "service"
    from vae_service.server.main import create_app
    from vae_service.server.settings import Settings

    return create_app, Settings, Path(create_app.__code__.co_filename).parent


def png_body() -> dict[str, list[str]]:
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return {"images": [base64.b64encode(buffer.getvalue()).decode()]}


class Tracer:
    """Records (file, function) of every call into files under ``roots`` while active.
    Set before the app starts, so that the threads it starts (the batcher's) have it."""

    def __init__(self, roots: tuple[str, ...]) -> None:
        self.roots = roots
        self.active = False
        self.calls: set[tuple[str, str, str]] = set()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        counted = self.active and event == "call" and code.co_filename.startswith(self.roots)
        if counted and not code.co_name.endswith(COMPREHENSIONS):  # parts of functions
            thread = "loop" if threading.current_thread() is threading.main_thread() else "other"
            self.calls.add((code.co_filename, code.co_qualname, thread))

    def install(self) -> None:
        threading.setprofile(self)
        sys.setprofile(self)


async def trace_one(app: Any, tracer: Tracer) -> int:
    body = png_body()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for _ in range(5):  # warm-up: imports, first batches, caches
            assert (await client.post("/encode", json=body)).status_code == 200
        tracer.active = True
        reply = await client.post("/encode", json=body)
        await asyncio.sleep(0.1)  # the batcher thread's last calls
        tracer.active = False
    return reply.status_code


async def main_async(args: argparse.Namespace) -> None:
    from asgi_lifespan import LifespanManager

    create_app, settings_class, root = import_app()
    app = create_app(settings_class(device="cpu", access_log=False))
    packages = ("vae_service",) if root.name == "server" else ("service", "model")
    base = root.parents[1] if root.name == "server" else root.parent
    tracer = Tracer(tuple(f"{base / name}/" for name in packages))
    tracer.install()
    async with LifespanManager(app):
        status = await trace_one(app, tracer)
    sys.setprofile(None)
    report(tracer.calls, base, status, args.list)


def report(calls: set[tuple[str, str, str]], base: Path, status: int, names: bool) -> None:
    """Counts in all, and on the event loop's thread alone (the batcher's thread runs the
    model path: batching, the forward pass and handing the outputs back)."""
    loop = {(f, name) for f, name, thread in calls if thread == "loop"}
    every = {(f, name) for f, name, _ in calls}
    print(f"POST /encode answered {status}")
    for what, chosen in (("all threads", every), ("event loop only", loop)):
        files = sorted({Path(f).relative_to(base).as_posix() for f, _ in chosen})
        print(f"{what}: {len(files)} project files, {len(chosen)} functions")
        for name in files:
            print(f"  {name}")
        if names:
            for filename, function in sorted(chosen):
                print(f"    {Path(filename).relative_to(base).as_posix()}::{function}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="name each function too")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

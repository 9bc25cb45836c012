"""How a request reaches the model version that answers it: FastAPI dependencies.

``ServedModel`` finds the version serving the request's model (the path's ``{model}``,
else the default). A handler holds it with ``Lease`` until it is over, so that a swap
meanwhile lets it finish there (the one lease mechanism, which the protocol routes use
too); the lease names the version in a refusal's X-Model headers too. ``Served.wait`` is the one
place a request waits for the model: within its deadline, and only while its client is
still there.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Request
from starlette.exceptions import HTTPException

from vae_service.server.errors import (
    HANDLED,
    ClientClosedRequest,
    ModelFailure,
    NotReady,
    RequestTimeout,
    Unprocessable,
)
from vae_service.server.latent_api import LatentApi, latent_api
from vae_service.server.model_entries import Version
from vae_service.server.remote_models import DiffusersRemote, OwnRemote, RemoteModel
from vae_service.server.repository import ModelRepository
from vae_service.server.runtime import ModelRuntime
from vae_service.server.schemas import live
from vae_service.server.settings import Settings, env_name

T = TypeVar("T")
PER_MODEL = "/models/{model}"  # the prefix of the per-model model routes


# The dependencies are ``async def`` although they never await: FastAPI runs a plain
# ``def`` dependency on its thread pool, a thread hop per dependency per request.


def repository_of(request: Request) -> ModelRepository:
    repository: ModelRepository | None = request.app.state.repository
    if repository is None:
        raise NotReady("model not loaded yet", headers={"Retry-After": "1"})
    return repository


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_repository(request: Request) -> ModelRepository:
    return repository_of(request)


Repository = Annotated[ModelRepository, Depends(get_repository)]
ModelName = Annotated[
    str,
    Path(
        description="A model's name, as GET /models lists them",
        json_schema_extra=live(enum="models"),
    ),
]


async def model_path(model: ModelName) -> None:
    """Declares the ``{model}`` path parameter of the per-model routes."""


@dataclass(slots=True)
class Served:
    """The model version answering one request, the settings, and the request's deadline."""

    name: str
    version: Version
    request: Request
    settings: Settings
    deadline: float  # time.monotonic() by which the model must have answered

    @property
    def runtime(self) -> ModelRuntime:
        """Our own VAE; 422 for a diffusers model, which /sample and the Open Inference
        Protocol do not serve."""
        runtime = self.version.runtime
        if isinstance(runtime, ModelRuntime):
            return runtime
        raise Unprocessable(
            f"model {self.name!r} is a diffusers {runtime.config.family}: this route serves "
            "this service's own VAEs only"
        )

    @property
    def api(self) -> LatentApi:
        """The model as /encode, /decode, /reconstruct and /interpolate see it, either kind."""
        return latent_api(self.version.runtime)

    @property
    def remote(self) -> RemoteModel:
        """The model as the remote VAE routes see it, either kind."""
        runtime = self.version.runtime
        if isinstance(runtime, ModelRuntime):
            return OwnRemote(runtime)
        return DiffusersRemote(runtime)

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Model": self.name, "X-Model-SHA256": self.version.sha256}

    async def wait(self, work: Awaitable[T]) -> T:
        """The model's answer: 504 past the deadline, 499 if the client leaves first.
        Either way ``work`` is cancelled where it waits, so the batcher drops its rows."""
        with ClientWatch(self.request) as watch:
            try:
                async with asyncio.timeout(self.deadline - time.monotonic()):
                    return await work
            except TimeoutError:
                timeout_s = self.settings.request_timeout_s
                message = f"request took over {timeout_s:g} s ({env_name('request_timeout_s')})"
                raise RequestTimeout(message) from None
            except asyncio.CancelledError:
                if not watch.cancelled:
                    raise  # cancelled from outside: the server is shutting down
                raise ClientClosedRequest("the client closed the connection") from None


class ClientWatch:
    """Cancels the request's task if its client disconnects while the task waits here.
    It starts watching only once the wait has lasted ``AFTER_S``: most answers come
    sooner, and a watch task of their own cost each 35 µs of event-loop CPU."""

    AFTER_S = 0.05

    def __init__(self, request: Request) -> None:
        self.request = request
        self.task = asyncio.current_task()
        self.watch: asyncio.Task[None] | None = None
        self.waiting = True
        self.cancelled = False  # whether this watch cancelled the task

    def __enter__(self) -> ClientWatch:
        self.timer = asyncio.get_running_loop().call_later(self.AFTER_S, self._start)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.waiting = False  # a disconnect from now on is no reason to cancel
        self.timer.cancel()
        if self.watch is not None:
            self.watch.cancel()
        if self.cancelled and self.task is not None:
            self.task.uncancel()  # our own cancellation, taken back

    def _start(self) -> None:
        self.watch = asyncio.ensure_future(self._client_left())
        self.watch.add_done_callback(self._left)

    def _left(self, watch: asyncio.Task[None]) -> None:
        if self.waiting and not watch.cancelled() and self.task is not None:
            self.cancelled = self.task.cancel()

    async def _client_left(self) -> None:
        # The body is read by now: the next message is the disconnect.
        while (await self.request.receive())["type"] != "http.disconnect":
            pass


def serve(request: Request, name: str, version: Version) -> Served:
    """``version`` answering ``request`` as model ``name``, from now to its deadline."""
    settings = settings_of(request)
    return Served(name, version, request, settings, time.monotonic() + settings.request_timeout_s)


class Lease:
    """Holds a request's model version while the request runs (the one lease mechanism:
    the model and protocol routes' dependencies both take one), and names that version
    on a refusal (X-Model headers) or an unexpected error (ModelFailure)."""

    def __init__(self, served: Served) -> None:
        self.served = served

    def __enter__(self) -> Served:
        self.served.version.hold()
        return self.served

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        self.served.version.release()
        if isinstance(exc, HTTPException):
            exc.headers = {**(exc.headers or {}), **self.served.headers}
        elif isinstance(exc, Exception) and not isinstance(exc, HANDLED):
            raise ModelFailure(self.served.headers) from exc


async def served_model(request: Request) -> Served:
    """The version serving the path's model (else the default). The handler holds it
    (``leased``) from its first line, before anything awaits, so no swap can close it in
    between; a yield dependency would hold it too, at 140 µs of event-loop
    CPU a request (benchmarks/request_cpu.py, BENCHMARKS.md)."""
    repository, name = repository_of(request), request.path_params.get("model")
    return serve(request, name or repository.default, repository.serving(name))


ServedModel = Annotated[Served, Depends(served_model)]


def leased(handler: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """``handler`` (a model route, whose ``model`` is a ServedModel) run under its
    model's Lease from its first line. FastAPI reads the handler's own signature."""

    @functools.wraps(handler)
    async def run(**params: Any) -> T:
        with Lease(params["model"]):
            return await handler(**params)

    return run

"""How a request reaches the model version that answers it: FastAPI dependencies.

``ServedModel`` is a yield dependency. It finds the version serving the request's model
(the path's ``{model}``, else the default), holds it until the request is over, so that
a swap meanwhile lets it finish there (``holding``: the one lease mechanism, which the
protocol routes use too), and names it in the answer's X-Model headers, refusals
included. ``Served.wait`` is the one
place a request waits for the model: within its deadline, and only while its client is
still there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Path, Request
from starlette.exceptions import HTTPException

from vae_service.server.errors import (
    HANDLED,
    ClientClosedRequest,
    ModelFailure,
    NotReady,
    RequestTimeout,
)
from vae_service.server.model_entries import Version
from vae_service.server.repository import ModelRepository
from vae_service.server.runtime import ModelRuntime
from vae_service.server.schemas import live
from vae_service.server.settings import Settings, env_name

T = TypeVar("T")
PER_MODEL = "/models/{model}"  # the prefix of the per-model model routes


def get_repository(request: Request) -> ModelRepository:
    repository: ModelRepository | None = request.app.state.repository
    if repository is None:
        raise NotReady("model not loaded yet", headers={"Retry-After": "1"})
    return repository


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


Repository = Annotated[ModelRepository, Depends(get_repository)]
AppSettings = Annotated[Settings, Depends(get_settings)]
ModelName = Annotated[
    str,
    Path(
        description="A model's name, as GET /models lists them",
        json_schema_extra=live(enum="models"),
    ),
]


async def model_path(model: ModelName) -> None:
    """Declares the ``{model}`` path parameter of the per-model routes."""


@dataclass(frozen=True)
class Served:
    """The model version answering one request, and that request's deadline."""

    name: str
    version: Version
    request: Request
    deadline: float  # time.monotonic() by which the model must have answered
    timeout_s: float

    @property
    def runtime(self) -> ModelRuntime:
        return self.version.runtime

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Model": self.name, "X-Model-SHA256": self.version.sha256}

    async def wait(self, work: Awaitable[T]) -> T:
        """The model's answer: 504 past the deadline, 499 if the client leaves first.
        Either way ``work`` is cancelled, so the batcher drops its queued rows."""
        job, watch = asyncio.ensure_future(work), asyncio.ensure_future(self._client_left())
        try:
            async with asyncio.timeout(self.deadline - time.monotonic()):
                await asyncio.wait((job, watch), return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            message = f"request took over {self.timeout_s:g} s ({env_name('request_timeout_s')})"
            raise RequestTimeout(message) from None
        finally:
            job.cancel()  # no-op once done
            watch.cancel()
        if not job.done():
            raise ClientClosedRequest("the client closed the connection")
        return job.result()

    async def _client_left(self) -> None:
        # The body is read by now: the next message is the disconnect.
        while (await self.request.receive())["type"] != "http.disconnect":
            pass


def serve(request: Request, name: str, version: Version) -> Served:
    """``version`` answering ``request`` as model ``name``, from now to its deadline."""
    timeout_s = get_settings(request).request_timeout_s
    return Served(name, version, request, time.monotonic() + timeout_s, timeout_s)


@asynccontextmanager
async def holding(served: Served) -> AsyncIterator[Served]:
    """Hold ``served``'s version while the request runs; a refusal names it too."""
    with served.version.held():
        try:
            yield served
        except HTTPException as exc:
            exc.headers = {**(exc.headers or {}), **served.headers}
            raise
        except HANDLED:
            raise
        except Exception as exc:
            raise ModelFailure(served.headers) from exc


async def served_model(request: Request, repository: Repository) -> AsyncIterator[Served]:
    """The version serving the path's model (else the default), held for the request."""
    name = request.path_params.get("model")
    async with holding(serve(request, name or repository.default, repository.serving(name))) as s:
        yield s


ServedModel = Annotated[Served, Depends(served_model)]

"""A Python client for the service, over httpx: ``VAEClient`` (sync) and ``AsyncVAEClient``.

    from service.client import VAEClient

    with VAEClient("http://localhost:8000") as vae:
        enc = vae.encode(images_uint8)                       # N×28×28 uint8: npy both ways
        pixels = vae.decode(enc.mean, as_array=True).images  # N×28×28×1 float32 in [0, 1]

Image files (paths or bytes) travel as base64 JSON or, with ``multipart=True``, as
multipart parts; NumPy arrays take the ``application/x-npy`` fast path both ways.
Every 4xx/5xx answer raises ``VAEError`` with the status and the server's detail.

Each request is built once, in service/client_requests.py, and sent by either client.
"""

from __future__ import annotations

from typing import Any, TypeVar

import httpx

from service.client_requests import (
    READY,
    Call,
    Decoded,
    Encoding,
    Endpoint,
    Images,
    Latents,
    VAEError,
    decode_call,
    encode_call,
    interpolate_call,
    json_call,
    raise_for_error,
    reconstruct_call,
    sample_call,
)

__all__ = ["AsyncVAEClient", "Decoded", "Encoding", "VAEClient", "VAEError"]
T = TypeVar("T")


class VAEClient:
    """Blocking client; ``as_array=True`` asks for float32 N×H×W×C arrays (npy) instead
    of PNG files. Extra keyword arguments go to ``httpx.Client``."""

    def __init__(
        self, base_url: str = "http://localhost:8000", timeout: float = 60.0, **options: Any
    ) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=timeout, **options)

    def send(self, call: Call[T]) -> T:
        response = self.http.request(call.method, call.path, params=call.params, **call.options)
        return call.parse(raise_for_error(response) if call.raises else response)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> VAEClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def health(self) -> dict[str, Any]:
        return self.send(json_call("/healthz"))

    def ready(self) -> bool:
        """True once the model is loaded and warmed up."""
        return self.send(READY)

    def model(self) -> dict[str, Any]:
        """The served weights' metadata: config, training summary, device, SHA-256."""
        return self.send(json_call("/model"))

    def encode(
        self, images: Images, sample: bool = False, seed: int | None = None, multipart: bool = False
    ) -> Encoding:
        """q(z|x) of each image; with ``sample``, also one draw z (seeded by ``seed``)."""
        return self.send(encode_call(images, sample, seed, multipart))

    def decode(self, z: Latents, as_array: bool = False) -> Decoded:
        return self.send(decode_call(z, as_array))

    def reconstruct(self, images: Images, multipart: bool = False) -> Decoded:
        """Images through the posterior mean and back; arrays in give an array out."""
        return self.send(reconstruct_call(images, multipart))

    def sample(
        self,
        n: int = 16,
        seed: int | None = None,
        temperature: float = 1.0,
        as_array: bool = False,
        prior: str | None = None,
    ) -> Decoded:
        """n decoded prior draws; ``prior`` 'standard' or 'fitted' (default: the server's,
        fitted when its weights carry one); ``Decoded.prior`` says which was used."""
        return self.send(sample_call(n, seed, temperature, as_array, prior))

    def interpolate(self, start: Endpoint, end: Endpoint, steps: int = 8) -> Decoded:
        """The decoded line between two image files or two latents."""
        return self.send(interpolate_call(start, end, steps))


class AsyncVAEClient:
    """``VAEClient`` for asyncio: the same methods, awaited."""

    def __init__(
        self, base_url: str = "http://localhost:8000", timeout: float = 60.0, **options: Any
    ) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout, **options)

    async def send(self, call: Call[T]) -> T:
        response = await self.http.request(
            call.method, call.path, params=call.params, **call.options
        )
        return call.parse(raise_for_error(response) if call.raises else response)

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncVAEClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def health(self) -> dict[str, Any]:
        return await self.send(json_call("/healthz"))

    async def ready(self) -> bool:
        return await self.send(READY)

    async def model(self) -> dict[str, Any]:
        return await self.send(json_call("/model"))

    async def encode(
        self, images: Images, sample: bool = False, seed: int | None = None, multipart: bool = False
    ) -> Encoding:
        return await self.send(encode_call(images, sample, seed, multipart))

    async def decode(self, z: Latents, as_array: bool = False) -> Decoded:
        return await self.send(decode_call(z, as_array))

    async def reconstruct(self, images: Images, multipart: bool = False) -> Decoded:
        return await self.send(reconstruct_call(images, multipart))

    async def sample(
        self,
        n: int = 16,
        seed: int | None = None,
        temperature: float = 1.0,
        as_array: bool = False,
        prior: str | None = None,
    ) -> Decoded:
        return await self.send(sample_call(n, seed, temperature, as_array, prior))

    async def interpolate(self, start: Endpoint, end: Endpoint, steps: int = 8) -> Decoded:
        return await self.send(interpolate_call(start, end, steps))

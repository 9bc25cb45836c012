"""A Python client for the service, over httpx: ``VAEClient`` (sync) and ``AsyncVAEClient``.

    from vae_service.client import VAEClient

    with VAEClient("http://localhost:8000") as vae:
        enc = vae.encode(images_uint8)                       # N×28×28 uint8: npy both ways
        pixels = vae.decode(enc.mean, as_array=True).images  # N×28×28×1 float32 in [0, 1]

Image files (paths or bytes) travel as base64 JSON or, with ``multipart=True``, as
multipart parts; NumPy arrays take the ``application/x-npy`` fast path both ways.
Every 4xx/5xx answer raises ``VAEError`` with the status and the server's detail.

A client bound to a model of the repository (``VAEClient(url, model="shoes")``, or
``vae.for_model("shoes")``, which shares ``vae``'s connections) sends every model call
to ``/models/shoes/...``; unbound, they go to the default model. Each answer says which
model and which weights file answered (``.model``, ``.sha256``).

On a diffusers model, ``remote_decode`` and ``remote_encode`` speak /remote-decode and
/remote-encode (docs/diffusers.md): raw tensors both ways, NumPy arrays here.

Each request is built once, in client_requests.py, and sent by either client.
"""

from __future__ import annotations

import copy
from typing import Any, Literal, Self, TypeVar, Unpack

import httpx
import numpy as np

from vae_service.client_requests import (
    Call,
    Decoded,
    DecodeOptions,
    EncodeOptions,
    Encoding,
    Endpoint,
    ImageFile,
    Images,
    Latents,
    VAEError,
    check_model_name,
    decode_call,
    encode_call,
    info_call,
    interpolate_call,
    json_call,
    raise_for_error,
    ready_call,
    reconstruct_call,
    reload_call,
    remote_decode_call,
    remote_encode_call,
    sample_call,
    score_call,
)

__all__ = ["AsyncVAEClient", "Decoded", "Encoding", "VAEClient", "VAEError"]
T = TypeVar("T")


class _Bound:
    """The model a client is bound to (None: the server's default model)."""

    model_name: str | None
    _owns_http: bool

    def _bind(self, model: str | None) -> None:
        self.model_name = None if model is None else check_model_name(model)
        self._owns_http = True

    def for_model(self, name: str) -> Self:
        """This client bound to model ``name``, on the same connections: closing it
        leaves them open, closing this client closes both."""
        bound = copy.copy(self)
        bound.model_name, bound._owns_http = check_model_name(name), False
        return bound


class VAEClient(_Bound):
    """Blocking client; ``as_array=True`` asks for float32 N×H×W×C arrays (npy) instead
    of PNG files. ``model``: send the model calls to that model of the repository.
    Extra keyword arguments go to ``httpx.Client``."""

    def __init__(
        self,
        base_url: str = "http://localhost:8000",
        timeout: float = 60.0,
        model: str | None = None,
        **options: Any,
    ) -> None:
        self._bind(model)
        self.http = httpx.Client(base_url=base_url, timeout=timeout, **options)

    def send(self, call: Call[T]) -> T:
        response = self.http.request(
            call.method, call.route(self.model_name), params=call.params, **call.options
        )
        return call.parse(raise_for_error(response) if call.raises else response)

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def health(self) -> dict[str, Any]:
        return self.send(json_call("/healthz"))

    def ready(self) -> bool:
        """True once the model (bound, else the default) is loaded and warmed up."""
        return self.send(ready_call(self.model_name))

    def model(self) -> dict[str, Any]:
        """The served weights' metadata (the bound model's, else the default's): name,
        config, training summary, device, SHA-256."""
        return self.send(info_call(self.model_name))

    def models(self) -> dict[str, Any]:
        """GET /models: ``{"default": name, "models": [{name, state, error, sha256, ...}]}``."""
        return self.send(json_call("/models"))

    def model_info(self, name: str) -> dict[str, Any]:
        """What ``info()`` gives, for model ``name``."""
        return self.send(info_call(name))

    def reload(self, name: str, admin_key: str | None = None) -> dict[str, Any]:
        """Load model ``name``'s file again and swap it in (an admin operation: 403
        without an admin key, 422 if the file does not load, the old version serving)."""
        return self.send(reload_call(name, admin_key))

    def encode(
        self, images: Images, sample: bool = False, seed: int | None = None, multipart: bool = False
    ) -> Encoding:
        """q(z|x) of each image; with ``sample``, also one draw z (seeded by ``seed``)."""
        return self.send(encode_call(images, sample, seed, multipart))

    def decode(self, z: Latents, as_array: bool = False) -> Decoded:
        return self.send(decode_call(z, as_array))

    def score(
        self,
        images: Images,
        k: int | None = None,
        fpr: float | None = None,
        multipart: bool = False,
    ) -> dict[str, Any]:
        """/score's answer: per image its anomaly score, p-value and flag at ``fpr``, and
        the parts (docs/anomaly.md); ``k`` importance samples for the IWAE part."""
        return self.send(score_call(images, k, fpr, multipart))

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

    def remote_decode(
        self,
        latents: np.ndarray,
        output_type: Literal["pt", "pil"] = "pt",
        **options: Unpack[DecodeOptions],
    ) -> Any:
        """A diffusers model's decode (/remote-decode, docs/diffusers.md): N×C×h×w latents
        (or FLUX-packed, with ``height`` and ``width``), first ``/ scaling_factor +
        shift_factor`` (``do_scaling``: the model's own factors). ``pt``: an N×C×H×W array
        in [-1, 1] in the latents' dtype (``partial_postprocess``: uint8 N×H×W×C);
        ``pil``: one image's PNG or JPEG bytes."""
        return self.send(remote_decode_call(latents, output_type, **options))

    def remote_encode(
        self, images: np.ndarray | ImageFile, **options: Unpack[EncodeOptions]
    ) -> np.ndarray:
        """A diffusers model's encode (/remote-encode): N×C×H×W images in [-1, 1] (or an
        image file) to latents, then ``(z - shift_factor) * scaling_factor``; the mode of
        q(z|x), or with ``sample`` a draw seeded by ``seed``."""
        return self.send(remote_encode_call(images, **options))


class AsyncVAEClient(_Bound):
    """``VAEClient`` for asyncio: the same methods, awaited."""

    def __init__(
        self,
        base_url: str = "http://localhost:8000",
        timeout: float = 60.0,
        model: str | None = None,
        **options: Any,
    ) -> None:
        self._bind(model)
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout, **options)

    async def send(self, call: Call[T]) -> T:
        response = await self.http.request(
            call.method, call.route(self.model_name), params=call.params, **call.options
        )
        return call.parse(raise_for_error(response) if call.raises else response)

    async def close(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def health(self) -> dict[str, Any]:
        return await self.send(json_call("/healthz"))

    async def ready(self) -> bool:
        return await self.send(ready_call(self.model_name))

    async def model(self) -> dict[str, Any]:
        return await self.send(info_call(self.model_name))

    async def models(self) -> dict[str, Any]:
        return await self.send(json_call("/models"))

    async def model_info(self, name: str) -> dict[str, Any]:
        return await self.send(info_call(name))

    async def reload(self, name: str, admin_key: str | None = None) -> dict[str, Any]:
        return await self.send(reload_call(name, admin_key))

    async def encode(
        self, images: Images, sample: bool = False, seed: int | None = None, multipart: bool = False
    ) -> Encoding:
        return await self.send(encode_call(images, sample, seed, multipart))

    async def decode(self, z: Latents, as_array: bool = False) -> Decoded:
        return await self.send(decode_call(z, as_array))

    async def score(
        self,
        images: Images,
        k: int | None = None,
        fpr: float | None = None,
        multipart: bool = False,
    ) -> dict[str, Any]:
        return await self.send(score_call(images, k, fpr, multipart))

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

    async def remote_decode(
        self,
        latents: np.ndarray,
        output_type: Literal["pt", "pil"] = "pt",
        **options: Unpack[DecodeOptions],
    ) -> Any:
        return await self.send(remote_decode_call(latents, output_type, **options))

    async def remote_encode(
        self, images: np.ndarray | ImageFile, **options: Unpack[EncodeOptions]
    ) -> np.ndarray:
        return await self.send(remote_encode_call(images, **options))

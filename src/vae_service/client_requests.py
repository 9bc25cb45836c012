"""Requests of the Python client (client.py), each built once and sent by
either the sync or the async client: the body, the query, and how to read the answer."""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypedDict, TypeVar, Unpack
from urllib.parse import quote

import httpx
import numpy as np

NPY = "application/x-npy"
T = TypeVar("T")
ImageFile = bytes | str | os.PathLike[str]
# Image files go as base64 JSON (or multipart); an array (uint8 0..255 or float32 0..1,
# N×H×W, N×H×W×C or N×C×H×W at the model's size) takes the npy fast path.
Images = Sequence[ImageFile] | np.ndarray
Latents = np.ndarray | Sequence[Sequence[float]]
Endpoint = ImageFile | Sequence[float] | np.ndarray  # of an interpolation: a file or a latent


class VAEError(Exception):
    """The service answered with an error status."""

    def __init__(self, status_code: int, detail: Any, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.retry_after = retry_after


@dataclass(frozen=True)
class Encoding:
    """q(z|x) per image; ``z`` and ``seed`` only when a draw was asked for; ``model`` and
    ``sha256``: the model and the weights file that answered (X-Model, X-Model-SHA256)."""

    mean: np.ndarray
    logvar: np.ndarray
    z: np.ndarray | None = None
    seed: int | None = None
    model: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Decoded:
    """Latents and their images: PNG files, or a float32 N×H×W×C array; from /sample, also
    the prior they were drawn from; the model and weights file that answered."""

    images: list[bytes] | np.ndarray
    z: np.ndarray | None = None
    seed: int | None = None
    prior: str | None = None
    model: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # json=, content=, files=, headers=
    raises: bool = True  # False: the status is the answer (readiness)
    per_model: bool = False  # a model route: under /models/{model} for a client bound to one

    def route(self, model: str | None) -> str:
        """The path to request for a client bound to ``model`` (None: the default model)."""
        return model_path(model) + self.path if self.per_model and model else self.path


def check_model_name(name: str) -> str:
    """``name``, checked: a path segment of its own once quoted (not '', '.' or '..')."""
    if not isinstance(name, str) or not name.strip("."):
        raise ValueError(f"not a model name: {name!r}")
    return name


def model_path(name: str) -> str:
    return "/models/" + quote(check_model_name(name), safe="")


def raise_for_error(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    retry = response.headers.get("retry-after")
    raise VAEError(response.status_code, detail, float(retry) if retry else None)


def npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def read_npy(response: httpx.Response) -> np.ndarray:
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def _file_bytes(image: ImageFile) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def _image_body(images: Images, multipart: bool) -> dict[str, Any]:
    """Images as a request body: an array as one .npy, files as base64 JSON or multipart."""
    if isinstance(images, np.ndarray):
        return {"content": npy_bytes(images), "headers": {"content-type": NPY}}
    blobs = [_file_bytes(image) for image in images]
    if multipart:
        return {"files": [("images", (f"image{i}", blob)) for i, blob in enumerate(blobs)]}
    return {"json": {"images": [base64.b64encode(blob).decode() for blob in blobs]}}


class Served(TypedDict):
    model: str | None
    sha256: str | None


def _served(response: httpx.Response) -> Served:
    """Which model, and which version of it (its file's SHA-256), answered."""
    headers = response.headers
    return {"model": headers.get("x-model"), "sha256": headers.get("x-model-sha256")}


def _seed_of(response: httpx.Response) -> int | None:
    seed = response.headers.get("x-seed")
    return int(seed) if seed else None


def _pngs(encoded: list[str]) -> list[bytes]:
    return [base64.b64decode(text) for text in encoded]


def _json_encoding(response: httpx.Response) -> Encoding:
    body = response.json()
    z = body.get("z")
    return Encoding(
        np.asarray(body["mean"], np.float32),
        np.asarray(body["logvar"], np.float32),
        None if z is None else np.asarray(z, np.float32),
        body.get("seed"),
        **_served(response),
    )


def _npy_encoding(response: httpx.Response) -> Encoding:
    # N×2×D (mean, logvar), or N×3×D with the draw z when ?sample=true.
    rows = read_npy(response)
    z = rows[:, 2] if rows.shape[1] == 3 else None
    return Encoding(rows[:, 0], rows[:, 1], z, _seed_of(response), **_served(response))


def _json_decoded(response: httpx.Response) -> Decoded:
    body = response.json()
    z = body.get("z")
    z = None if z is None else np.asarray(z, np.float32)
    return Decoded(
        _pngs(body["images"]), z, body.get("seed"), body.get("prior"), **_served(response)
    )


def _npy_decoded(response: httpx.Response) -> Decoded:
    return Decoded(
        read_npy(response),
        seed=_seed_of(response),
        prior=response.headers.get("x-prior"),
        **_served(response),
    )


def _draw_params(sample: bool, seed: int | None) -> dict[str, Any]:
    params: dict[str, Any] = {"sample": "true"} if sample else {}
    if seed is not None:
        params["seed"] = seed
    return params


def encode_call(
    images: Images,
    sample: bool = False,
    seed: int | None = None,
    multipart: bool = False,
) -> Call[Encoding]:
    params, body = _draw_params(sample, seed), _image_body(images, multipart)
    if isinstance(images, np.ndarray):
        params["format"] = "npy"
        return Call("POST", "/encode", _npy_encoding, params, body, per_model=True)
    return Call("POST", "/encode", _json_encoding, params, body, per_model=True)


def decode_call(z: Latents, as_array: bool) -> Call[Decoded]:
    body = {"json": {"z": np.asarray(z, np.float64).tolist()}}
    if as_array:
        return Call("POST", "/decode", _npy_decoded, {"format": "npy"}, body, per_model=True)
    return Call("POST", "/decode", _json_decoded, {}, body, per_model=True)


def reconstruct_call(images: Images, multipart: bool) -> Call[Decoded]:
    body = _image_body(images, multipart)
    if isinstance(images, np.ndarray):
        return Call("POST", "/reconstruct", _npy_decoded, {"format": "npy"}, body, per_model=True)
    return Call("POST", "/reconstruct", _json_decoded, {}, body, per_model=True)


def sample_call(
    n: int, seed: int | None, temperature: float, as_array: bool, prior: str | None = None
) -> Call[Decoded]:
    params = {"n": n, "temperature": temperature, **_draw_params(False, seed)}
    if prior is not None:  # else the server's default: fitted when the weights carry one
        params["prior"] = prior
    if as_array:
        return Call("GET", "/sample", _npy_decoded, {**params, "format": "npy"}, per_model=True)
    return Call("GET", "/sample", _json_decoded, params, per_model=True)


def interpolate_call(start: Endpoint, end: Endpoint, steps: int) -> Call[Decoded]:
    if isinstance(start, bytes | str | os.PathLike) and isinstance(end, bytes | str | os.PathLike):
        body = _image_body([start, end], multipart=False)
    else:
        body = {"json": {"z": [np.asarray(start, float).tolist(), np.asarray(end, float).tolist()]}}
    return Call("POST", "/interpolate", _json_decoded, {"steps": steps}, body, per_model=True)


def _json(response: httpx.Response) -> dict[str, Any]:
    return dict(response.json())


def score_call(images: Images, k: int | None, fpr: float | None, multipart: bool) -> Call[Any]:
    """/score's JSON answer: per image its score, p-value, flag and parts."""
    params = {name: value for name, value in (("k", k), ("fpr", fpr)) if value is not None}
    return Call("POST", "/score", _json, params, _image_body(images, multipart), per_model=True)


def json_call(path: str) -> Call[dict[str, Any]]:
    return Call("GET", path, _json)


def ready_call(model: str | None) -> Call[bool]:
    """True once the model (None: the default one) is loaded and warmed up."""
    path = model_path(model) + "/ready" if model else "/readyz"
    return Call("GET", path, lambda response: response.is_success, raises=False)


def info_call(model: str | None) -> Call[dict[str, Any]]:
    """What is served as ``model`` (None: the default model): weights, metadata, SHA-256."""
    return json_call(model_path(model) if model else "/model")


def reload_call(model: str, admin_key: str | None) -> Call[dict[str, Any]]:
    """Load the model's file again and swap it in; the key goes as a bearer token (else
    the client's own Authorization header, if any, is sent)."""
    headers = {"authorization": f"Bearer {admin_key}"} if admin_key is not None else {}
    return Call("POST", model_path(model) + "/reload", _json, options={"headers": headers})


# The remote VAE routes (docs/diffusers.md): a raw C-order tensor body, its shape as
# repeated ``shape`` parameters and its ``dtype``; a tensor answer says its own in the
# ``shape`` and ``dtype`` headers. numpy has no bfloat16: such answers come as float32.
TENSOR = "tensor/binary"
SENT_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}
READ_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}


def _raw_tensor(array: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
    """The query (shape, dtype) and body of a raw tensor: float16 goes as it is, any
    other array as float32."""
    array = np.asarray(array)
    if array.dtype not in SENT_DTYPES:
        array = array.astype(np.float32)
    body = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
    params = {"shape": list(array.shape), "dtype": SENT_DTYPES[array.dtype]}
    return params, {"content": body.tobytes(), "headers": {"content-type": TENSOR}}


def read_tensor(response: httpx.Response) -> np.ndarray:
    """A raw tensor answer (its ``shape`` and ``dtype`` headers) as an array."""
    shape = [int(d) for d in json.loads(response.headers["shape"])]
    dtype = response.headers["dtype"]
    if dtype == "bfloat16":  # the upper half of a float32
        bits = np.frombuffer(response.content, "<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    kind = np.dtype(READ_DTYPES[dtype]).newbyteorder("<")
    return np.frombuffer(bytearray(response.content), kind).reshape(shape)


def _content(response: httpx.Response) -> bytes:
    return response.content


def _scaling(options: DecodeOptions | EncodeOptions) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name in ("scaling_factor", "shift_factor"):
        if options.get(name) is not None:
            params[name] = options.get(name)
    if options.get("do_scaling"):
        params["do_scaling"] = "true"
    return params


class DecodeOptions(TypedDict, total=False):
    """remote_decode's options, as diffusers' remote_decode names them (docs/diffusers.md)."""

    scaling_factor: float | None
    shift_factor: float | None
    do_scaling: bool
    partial_postprocess: bool
    image_format: Literal["png", "jpg"]
    height: int | None
    width: int | None
    tile: bool


class EncodeOptions(TypedDict, total=False):
    """remote_encode's options."""

    scaling_factor: float | None
    shift_factor: float | None
    do_scaling: bool
    sample: bool
    seed: int | None
    tile: bool


def remote_decode_call(
    latents: np.ndarray, output_type: str = "pt", **options: Unpack[DecodeOptions]
) -> Call[Any]:
    """Latents (N×C×h×w, or FLUX-packed N×patches×C·4 with ``height`` and ``width``) to
    images: an array (``pt``) or one PNG/JPEG file's bytes (``pil``)."""
    if output_type not in ("pt", "pil"):
        raise ValueError(f"output_type is 'pt' or 'pil', not {output_type!r}")
    params, body = _raw_tensor(latents)
    params.update(_scaling(options), output_type=output_type)
    if output_type == "pil":
        params["image_format"] = options.get("image_format", "png")
    elif options.get("partial_postprocess"):
        params["partial_postprocess"] = "true"
    size = {"height": options.get("height"), "width": options.get("width")}
    params.update({k: v for k, v in size.items() if v is not None})
    if options.get("tile"):
        params["tile"] = "true"
    parse = _content if output_type == "pil" else read_tensor
    return Call("POST", "/remote-decode", parse, params, body, per_model=True)


def remote_encode_call(
    images: np.ndarray | ImageFile, **options: Unpack[EncodeOptions]
) -> Call[np.ndarray]:
    """Images (an N×C×H×W array in [-1, 1], or an image file) to latents, in the array's
    dtype (float32 for a file)."""
    if isinstance(images, np.ndarray):
        params, body = _raw_tensor(images)
    else:
        params, body = {}, {"content": _file_bytes(images)}
    params.update(
        _scaling(options), **_draw_params(options.get("sample", False), options.get("seed"))
    )
    if options.get("tile"):
        params["tile"] = "true"
    return Call("POST", "/remote-encode", read_tensor, params, body, per_model=True)

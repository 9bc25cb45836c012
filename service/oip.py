"""The Open Inference Protocol (KServe v2) over the model repository: its models, their
metadata, and inference requests and responses, JSON and binary.

Every repository model NAME is two protocol models, NAME-encoder and NAME-decoder. The
version of both is the first 12 hex digits of the weights' SHA-256, so a hot swap is a
new version. Everything a request says is checked here, before any model work, and a
request the protocol cannot carry out is a 400 (``BadTensor``): the body is not JSON, a
tensor has the wrong name, datatype or shape, or its data the wrong number of values or
bytes. Counts over a configured limit and values out of range get the existing routes'
422, so both APIs refuse the same requests the same way.

The binary tensor data extension, both ways: an input's ``binary_data_size`` names how
many bytes after the JSON header (``Inference-Header-Content-Length`` bytes long) are
its data, and an output asked for with ``binary_data`` (or every output, with the request
parameter ``binary_data_output``) comes back the same way. Binary FP32 is little-endian,
row major; a BYTES element is a 4-byte little-endian length, then the bytes.

service/routes/oip.py serves this; service/oip_errors.py gives its errors the
protocol's ``{"error": ...}`` bodies.
"""

from __future__ import annotations

import binascii
import math
import secrets
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import torch
from torch import Tensor

from service import __version__
from service.errors import (
    ModelNotFound,
    NotReady,
    PayloadTooLarge,
    ServiceError,
    Unprocessable,
    UnsupportedMediaType,
)
from service.repository import ModelRepository, ModelUnavailable, UnknownModel, Version
from service.runtime import ModelRuntime
from service.settings import env_name

SERVER_NAME = "vae-serve"
EXTENSIONS = ("binary_tensor_data",)
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_MEDIA_TYPE = "application/octet-stream"
FP32, BYTES = "FP32", "BYTES"
ENCODER, DECODER = "encoder", "decoder"
ROLES = (ENCODER, DECODER)
VERSION_DIGITS = 12
MAX_SEED = 2**63 - 1
RETRY = {"Retry-After": "1"}
# Parameters of features this server does not have: ignoring them would answer
# something other than what was asked, so they are refused.
UNSUPPORTED = ("shared_memory_region", "classification")


class BadTensor(ServiceError):
    """A request the protocol refuses (400): not a JSON inference request, or a tensor
    of the wrong name, datatype or shape, or data of the wrong size."""

    status = 400


# ---------------------------------------------------------------------------- models


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the model metadata states it; -1: any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    parameters: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "datatype": self.datatype,
            "shape": list(self.shape),
        }
        if self.parameters:
            entry["parameters"] = self.parameters
        return entry


IMAGE_FILES = (
    "also BYTES [-1]: one encoded image file (PNG, JPEG, WebP, ...) per element, "
    "converted and resized as /encode does; base64 strings in JSON"
)


@dataclass(frozen=True)
class ProtocolModel:
    """One protocol model: the encoder or the decoder of a repository model's version."""

    base: str  # the repository's name for the model
    role: str  # ENCODER or DECODER
    version: Version

    @property
    def name(self) -> str:
        return f"{self.base}-{self.role}"

    @property
    def runtime(self) -> ModelRuntime:
        return self.version.runtime

    @property
    def version_id(self) -> str:
        return self.version.sha256[:VERSION_DIGITS]

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        cfg = self.runtime.config
        if self.role == ENCODER:
            return (TensorSpec("images", FP32, (-1, *cfg.image_shape), {"content": IMAGE_FILES}),)
        return (TensorSpec("z", FP32, (-1, cfg.latent_dim)),)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        cfg = self.runtime.config
        if self.role == ENCODER:
            return tuple(TensorSpec(n, FP32, (-1, cfg.latent_dim)) for n in ("mean", "logvar", "z"))
        return (TensorSpec("images", FP32, (-1, *cfg.image_shape)),)

    @property
    def default_outputs(self) -> tuple[str, ...]:
        """What a request that names no outputs gets: z is a random draw, only on request."""
        return ("mean", "logvar") if self.role == ENCODER else ("images",)

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version_id],
            "platform": "pytorch",
            "inputs": [spec.describe() for spec in self.inputs],
            "outputs": [spec.describe() for spec in self.outputs],
        }


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def split_name(name: str) -> tuple[str, str] | None:
    """``NAME-encoder`` -> (NAME, encoder); None unless it ends in a role."""
    for role in ROLES:
        suffix = f"-{role}"
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], role
    return None


def protocol_names(repository: ModelRepository) -> list[str]:
    return [f"{name}-{role}" for name in repository.names() for role in ROLES]


def resolve(repository: ModelRepository, name: str) -> ProtocolModel:
    """The protocol model ``name`` as its live version serves it now: 404 for a name no
    repository model has, 503 (with Retry-After) while that model is not serving."""
    split = split_name(name)
    unknown = ModelNotFound(
        f"no model named {name!r}; known models: {', '.join(protocol_names(repository)) or 'none'}"
    )
    if split is None:
        raise unknown
    base, role = split
    try:
        version = repository.serving(base)
    except UnknownModel:
        raise unknown from None
    except ModelUnavailable as exc:
        raise NotReady(str(exc), headers=RETRY) from None
    return ProtocolModel(base, role, version)


def check_version(model: ProtocolModel, version: str | None) -> None:
    """404 unless ``version`` (None: any) is the one serving."""
    if version is not None and version != model.version_id:
        raise ModelNotFound(
            f"model {model.name!r} has no version {version!r}; it serves {model.version_id}"
        )


# ---------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any = None  # the JSON "data", when not binary
    raw: memoryview | None = None  # the binary data, when binary_data_size is given


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    parameters: dict[str, Any]


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None  # None: the model's default outputs


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A body sent with ``Content-Encoding`` gzip or deflate (zlib), as tritonclient's
    ``request_compression_algorithm`` sends it; inflating past ``limit`` bytes is a 413,
    as the same body sent plain would be."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding} is not supported; send gzip, deflate or none"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadTensor(f"the body is not valid {encoding} data: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLarge(
            f"the {encoding} body inflates to over {limit} bytes ({env_name('max_body_bytes')})"
        )
    if not inflater.eof:
        raise BadTensor(f"the {encoding} body is truncated")
    return data


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary data after it."""
    view = memoryview(body)
    if header_length is None:
        return body, view[len(body) :]
    value = header_length.strip()
    if not (value.isascii() and value.isdigit()):
        raise BadTensor(f"{HEADER_LENGTH} must be a byte count, got {header_length!r}")
    length = int(value)
    if length > len(body):
        raise BadTensor(f"{HEADER_LENGTH} is {length}; the body has only {len(body)} bytes")
    return body[:length], view[length:]


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadTensor(f"{where} must be a JSON object")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadTensor(f"{where} must be a string")
    return value


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _flag(parameters: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise BadTensor(f"{where}.{key} must be true or false")
    return value


def _refuse_unsupported(parameters: dict[str, Any], where: str) -> None:
    for key in UNSUPPORTED:
        if key in parameters:
            raise BadTensor(f"{where}.{key}: this server does not support {key}")


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """An inference request's JSON and binary data, checked for form (not yet against
    a model): BadTensor for anything malformed."""
    header, binary = split_body(body, header_length)
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise BadTensor(f"the inference request is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadTensor("the inference request must be a JSON object")
    request_id = None if doc.get("id") is None else _string(doc["id"], "id")
    parameters = _object(doc.get("parameters"), "parameters")
    binary_default = _flag(parameters, "binary_data_output", False, "parameters")
    items = doc.get("inputs")
    if not isinstance(items, list) or not items:
        raise BadTensor("inputs must be a non-empty list of tensors")
    inputs, offset = [], 0
    for i, item in enumerate(items):
        tensor, size = _input(item, f"inputs[{i}]", binary[offset:])
        inputs.append(tensor)
        offset += size
    if offset != len(binary):
        raise BadTensor(
            f"the body holds {len(binary) - offset} bytes after the JSON header that no "
            f"input's binary_data_size accounts for ({HEADER_LENGTH}: {header_length})"
        )
    return InferRequest(request_id, parameters, inputs, _outputs(doc, binary_default))


def _input(item: Any, where: str, binary: memoryview) -> tuple[InputTensor, int]:
    """One input tensor, and how many bytes of ``binary`` are its data."""
    item = _object(item, where)
    name = _string(item.get("name"), f"{where}.name")
    datatype = _string(item.get("datatype"), f"{where}.datatype")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(_count(d) for d in shape):
        raise BadTensor(f"input {name!r}: shape must be a list of non-negative integers")
    parameters = _object(item.get("parameters"), f"{where}.parameters")
    _refuse_unsupported(parameters, f"{where}.parameters")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in item:
            raise BadTensor(f"input {name!r} has neither data nor parameters.binary_data_size")
        return InputTensor(name, datatype, tuple(shape), data=item["data"]), 0
    if not _count(size):
        raise BadTensor(f"input {name!r}: binary_data_size must be a non-negative integer")
    if "data" in item:
        raise BadTensor(f"input {name!r} has both data and parameters.binary_data_size")
    if size > len(binary):
        raise BadTensor(
            f"input {name!r}: binary_data_size is {size} bytes, but only {len(binary)} bytes "
            f"of binary data are left in the body ({HEADER_LENGTH} decides where they start)"
        )
    return InputTensor(name, datatype, tuple(shape), raw=binary[:size]), size


def _outputs(doc: dict[str, Any], binary_default: bool) -> list[RequestedOutput] | None:
    items = doc.get("outputs")
    if items is None or items == []:  # none named: the model's default outputs
        return None
    if not isinstance(items, list):
        raise BadTensor("outputs must be a list")
    outputs: list[RequestedOutput] = []
    for i, item in enumerate(items):
        where = f"outputs[{i}]"
        item = _object(item, where)
        name = _string(item.get("name"), f"{where}.name")
        if any(o.name == name for o in outputs):
            raise BadTensor(f"output {name!r} is asked for twice")
        parameters = _object(item.get("parameters"), f"{where}.parameters")
        _refuse_unsupported(parameters, f"{where}.parameters")
        binary = _flag(parameters, "binary_data", binary_default, f"{where}.parameters")
        outputs.append(RequestedOutput(name, binary, parameters))
    return outputs


# ------------------------------------------------------------ requests against a model


def the_input(request: InferRequest, model: ProtocolModel) -> tuple[InputTensor, TensorSpec]:
    """The model's one input, given once and nothing else."""
    (spec,) = model.inputs
    for tensor in request.inputs:
        if tensor.name != spec.name:
            raise BadTensor(
                f"model {model.name!r} has no input named {tensor.name!r}; "
                f"its input is {spec.name!r}"
            )
    if len(request.inputs) > 1:
        raise BadTensor(f"input {spec.name!r} is given {len(request.inputs)} times")
    return request.inputs[0], spec


def requested_outputs(request: InferRequest, model: ProtocolModel) -> list[RequestedOutput]:
    if request.outputs is None:
        binary = _flag(request.parameters, "binary_data_output", False, "parameters")
        return [RequestedOutput(name, binary, {}) for name in model.default_outputs]
    names = [spec.name for spec in model.outputs]
    for output in request.outputs:
        if output.name not in names:
            raise BadTensor(
                f"model {model.name!r} has no output named {output.name!r}; "
                f"its outputs are {', '.join(names)}"
            )
    return request.outputs


def seed_for(request: InferRequest, outputs: list[RequestedOutput]) -> int | None:
    """The seed of z's draw when z is asked for: the z output's ``seed`` parameter,
    else the request's, else a fresh one (answered in the response's parameters)."""
    z = next((o for o in outputs if o.name == "z"), None)
    if z is None:
        return None
    seed = z.parameters.get("seed", request.parameters.get("seed"))
    if seed is None:
        return secrets.randbits(31)
    if not _count(seed) or seed > MAX_SEED:
        raise BadTensor(f"parameter seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return int(seed)


def batch_size(tensor: InputTensor, spec_shape: tuple[int, ...], max_rows: int, what: str) -> int:
    """The batch dimension of a tensor whose shape matches ``spec_shape`` (-1: any):
    400 for another shape or an empty batch, 422 over VAE_MAX_IMAGES_PER_REQUEST."""
    shape = tensor.shape
    if len(shape) != len(spec_shape) or any(
        want != -1 and got != want for got, want in zip(shape, spec_shape, strict=True)
    ):
        raise BadTensor(
            f"input {tensor.name!r} ({tensor.datatype}) must have shape {list(spec_shape)}, "
            f"got {list(shape)}"
        )
    if shape[0] == 0:
        raise BadTensor(f"input {tensor.name!r} holds no {what}")
    if shape[0] > max_rows:
        setting = "max_images_per_request"
        raise Unprocessable(
            f"{what} per request is {shape[0]}; the limit is {max_rows} ({env_name(setting)})"
        )
    return shape[0]


def fp32_array(tensor: InputTensor) -> np.ndarray:
    """An FP32 tensor's values as a float32 array of its shape (already checked)."""
    count = math.prod(tensor.shape)
    if tensor.raw is not None:
        if len(tensor.raw) != 4 * count:
            raise BadTensor(
                f"input {tensor.name!r}: binary_data_size is {len(tensor.raw)} bytes; "
                f"FP32 of shape {list(tensor.shape)} is {4 * count} bytes"
            )
        return np.frombuffer(tensor.raw, dtype="<f4").reshape(tensor.shape).astype(np.float32)
    data = tensor.data
    try:
        array = np.array(data) if isinstance(data, list) else None
    except (ValueError, TypeError):  # ragged nesting
        array = None
    if array is None or (array.size and array.dtype.kind not in "iuf"):
        raise BadTensor(
            f"input {tensor.name!r}: FP32 data must be a list of numbers (flat, or nested "
            "row major)"
        )
    if array.size != count:
        raise BadTensor(
            f"input {tensor.name!r} holds {array.size} values; FP32 of shape "
            f"{list(tensor.shape)} is {count}"
        )
    with np.errstate(over="ignore"):  # beyond float32: inf, refused as not finite
        return array.astype(np.float32).reshape(tensor.shape)


def unit_images(array: np.ndarray) -> Tensor:
    """FP32 images, finite and in [0, 1] (422 otherwise, as for .npy bodies)."""
    images = torch.from_numpy(array)
    if not bool(torch.isfinite(images).all()):
        raise Unprocessable("FP32 images must be finite; found NaN or inf")
    if images.min() < 0 or images.max() > 1:
        raise Unprocessable("FP32 images must lie in [0, 1]")
    return images


def checked_latents(array: np.ndarray, max_abs: float) -> Tensor:
    """Latents, finite and within VAE_MAX_ABS_LATENT (422 otherwise, as for /decode)."""
    z = torch.from_numpy(array)
    if not bool(torch.isfinite(z).all()):
        raise Unprocessable("latents must be finite; found NaN or inf")
    largest = float(z.abs().max())
    if largest > max_abs:
        raise Unprocessable(
            f"a latent value of size {largest:g} is over {max_abs:g} ({env_name('max_abs_latent')})"
        )
    return z


def byte_elements(tensor: InputTensor, count: int) -> list[bytes]:
    """A BYTES tensor's ``count`` elements: length-prefixed binary data, or base64
    strings in JSON (an image file is not UTF-8 text)."""
    if tensor.raw is None:
        data = tensor.data
        if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
            raise BadTensor(
                f"input {tensor.name!r}: BYTES data in JSON must be a list of base64 strings"
            )
        if len(data) != count:
            raise BadTensor(
                f"input {tensor.name!r} holds {len(data)} elements; its shape says {count}"
            )
        try:
            return [binascii.a2b_base64(item, strict_mode=True) for item in data]
        except (binascii.Error, ValueError):
            raise BadTensor(f"input {tensor.name!r}: an element is not valid base64") from None
    raw, offset = tensor.raw, 0
    blobs: list[bytes] = []
    while offset < len(raw):
        if len(blobs) == count:
            raise BadTensor(
                f"input {tensor.name!r}: binary data goes on after the {count} elements "
                "its shape says"
            )
        if offset + 4 > len(raw):
            raise BadTensor(f"input {tensor.name!r}: binary data ends inside an element's length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadTensor(
                f"input {tensor.name!r}: element {len(blobs)} says {length} bytes; "
                f"{len(raw) - offset} are left"
            )
        blobs.append(bytes(raw[offset : offset + length]))
        offset += length
    if len(blobs) != count:
        raise BadTensor(
            f"input {tensor.name!r} holds {len(blobs)} elements; its shape says {count}"
        )
    return blobs


# ---------------------------------------------------------------------------- responses


def infer_response(
    model: ProtocolModel,
    request: InferRequest,
    outputs: list[tuple[RequestedOutput, Tensor]],
    parameters: dict[str, Any],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it."""
    entries, buffers = [], []
    for requested, tensor in outputs:
        array = np.ascontiguousarray(tensor.numpy(), dtype="<f4")
        entry: dict[str, Any] = {
            "name": requested.name,
            "datatype": FP32,
            "shape": list(array.shape),
        }
        if requested.binary:
            buffers.append(array.tobytes())
            entry["parameters"] = {"binary_data_size": len(buffers[-1])}
        else:
            entry["data"] = array.reshape(-1)  # row major, flat: what Triton sends
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model.name, "model_version": model.version_id}
    if request.id is not None:
        doc["id"] = request.id
    if parameters:
        doc["parameters"] = parameters
    doc["outputs"] = entries
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not buffers:
        return header, None
    return b"".join([header, *buffers]), len(header)

"""An inference request's body: inflated, split into its JSON header and binary data, and
checked for form (not yet against a model)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from vae_service.server.errors import PayloadTooLarge, UnsupportedMediaType
from vae_service.server.oip.protocol import HEADER_LENGTH, UNSUPPORTED, BadTensor
from vae_service.server.settings import env_name


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


def is_count(value: Any) -> bool:
    """A non-negative integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def flag(parameters: dict[str, Any], key: str, default: bool, where: str) -> bool:
    """``parameters[key]`` (``default`` when absent); 400 unless true or false."""
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
    binary_default = flag(parameters, "binary_data_output", False, "parameters")
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
    if not isinstance(shape, list) or not all(is_count(d) for d in shape):
        raise BadTensor(f"input {name!r}: shape must be a list of non-negative integers")
    parameters = _object(item.get("parameters"), f"{where}.parameters")
    _refuse_unsupported(parameters, f"{where}.parameters")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in item:
            raise BadTensor(f"input {name!r} has neither data nor parameters.binary_data_size")
        return InputTensor(name, datatype, tuple(shape), data=item["data"]), 0
    if not is_count(size):
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
        binary = flag(parameters, "binary_data", binary_default, f"{where}.parameters")
        outputs.append(RequestedOutput(name, binary, parameters))
    return outputs

"""An inference request against its model: its input and outputs, the seed of z's draw,
and the input tensor's values (FP32 or BYTES), checked."""

from __future__ import annotations

import binascii
import math
import struct

import numpy as np
import torch
from torch import Tensor

from vae_service.server.errors import Unprocessable
from vae_service.server.oip.parsing import (
    InferRequest,
    InputTensor,
    RequestedOutput,
    flag,
    is_count,
)
from vae_service.server.oip.protocol import MAX_SEED, BadTensor, ProtocolModel, TensorSpec
from vae_service.server.randomness import new_seed
from vae_service.server.validation import check_limit, unit_interval_error


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
        binary = flag(request.parameters, "binary_data_output", False, "parameters")
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
        return new_seed()
    if not is_count(seed) or seed > MAX_SEED:
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
    check_limit(shape[0], max_rows, f"{what} per request", "max_images_per_request")
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
    problem = unit_interval_error(images, "FP32 images")
    if problem is not None:
        raise Unprocessable(problem)
    return images


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

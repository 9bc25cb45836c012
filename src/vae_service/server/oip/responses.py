"""The inference response: JSON outputs, or binary data after the JSON header."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from torch import Tensor

from vae_service.server.oip.parsing import InferRequest, RequestedOutput
from vae_service.server.oip.protocol import FP32, ProtocolModel


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

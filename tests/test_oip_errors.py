"""Malformed Open Inference Protocol requests, sent raw with httpx (a client library will
not build them) to the app on uvicorn: each gets its 4xx with the protocol's
``{"error": "..."}`` body, never a 5xx. Tiny weights, and tests/conftest.py's small
limits: 8 images a request, 256 KiB bodies, 512 x 512 pixels an image."""

from __future__ import annotations

import contextlib
import gzip
import io
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from PIL import Image

from vae_service.server.settings import Settings

ENCODE = "/v2/models/tiny-encoder/infer"
DECODE = "/v2/models/tiny-decoder/infer"
LENGTH = "Inference-Header-Content-Length"
IMAGE_SHAPE = [1, 28, 28]
LATENT_DIM = 4


@pytest.fixture(scope="module")
def http(
    served_settings: Settings,
    serve_in_thread: Callable[[Settings], contextlib.AbstractContextManager[str]],
) -> Iterator[httpx.Client]:
    with (
        serve_in_thread(served_settings) as where,
        httpx.Client(base_url=f"http://{where}") as hc,
    ):
        yield hc


def refused(response: httpx.Response, status: int, words: str = "") -> str:
    """The protocol's error answer: this status, {"error": "..."} and nothing else."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    assert words in body["error"], body["error"]
    return str(body["error"])


def tensor(name: str, datatype: str, shape: list[int], **fields: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, **fields}


def images_json(n: int = 1, **extra: Any) -> dict[str, Any]:
    data = [0.5] * (n * 784)
    return {"inputs": [tensor("images", "FP32", [n, *IMAGE_SHAPE], data=data)], **extra}


def z_json(n: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [tensor("z", "FP32", [n, LATENT_DIM], data=[0.0] * (n * LATENT_DIM))],
        **extra,
    }


def binary_request(header: dict[str, Any], data: bytes) -> dict[str, Any]:
    """httpx.post keywords for a JSON header followed by binary data."""
    head = orjson.dumps(header)
    return {"content": head + data, "headers": {LENGTH: str(len(head))}}


def binary_z(rows: np.ndarray, size: int | None = None) -> dict[str, Any]:
    data = rows.astype("<f4").tobytes()
    params = {"binary_data_size": len(data) if size is None else size}
    shape = list(rows.shape)
    return binary_request({"inputs": [tensor("z", "FP32", shape, parameters=params)]}, data)


def byte_elements(*blobs: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in blobs)


def binary_files(data: bytes, count: int) -> dict[str, Any]:
    params = {"binary_data_size": len(data)}
    return binary_request({"inputs": [tensor("images", "BYTES", [count], parameters=params)]}, data)


def png(width: int = 28, height: int = 28) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 128).save(out, format="PNG")
    return out.getvalue()


# Each: (path, httpx.post keywords, words the error must contain). All 400.
BAD_REQUESTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "body not JSON": (ENCODE, {"content": b"{inputs"}, "not valid JSON"),
    "body not an object": (ENCODE, {"content": b"[1, 2]"}, "JSON object"),
    "body not UTF-8": (ENCODE, {"content": b"\xff\xfe{}"}, "not valid JSON"),
    "no inputs": (ENCODE, {"json": {"outputs": [{"name": "mean"}]}}, "inputs"),
    "empty inputs": (ENCODE, {"json": {"inputs": []}}, "inputs"),
    "input not an object": (ENCODE, {"json": {"inputs": ["images"]}}, "inputs[0]"),
    "input without a name": (
        ENCODE,
        {"json": {"inputs": [{"datatype": "FP32", "shape": [1], "data": [0]}]}},
        "inputs[0].name",
    ),
    "wrong input name": (
        DECODE,
        {"json": {"inputs": [tensor("latents", "FP32", [1, 4], data=[0] * 4)]}},
        "no input named 'latents'",
    ),
    "input given twice": (
        DECODE,
        {"json": {"inputs": z_json()["inputs"] * 2}},
        "given 2 times",
    ),
    "extra input": (
        DECODE,
        {"json": {"inputs": [*z_json()["inputs"], tensor("seed", "INT64", [1], data=[1])]}},
        "no input named 'seed'",
    ),
    "images as FP64": (
        ENCODE,
        {"json": {"inputs": [tensor("images", "FP64", [1, 1, 28, 28], data=[0.5] * 784)]}},
        "must be FP32 (pixels) or BYTES",
    ),
    "images as UINT8": (
        ENCODE,
        {"json": {"inputs": [tensor("images", "UINT8", [1, 1, 28, 28], data=[1] * 784)]}},
        "got 'UINT8'",
    ),
    "z as BYTES": (
        DECODE,
        {"json": {"inputs": [tensor("z", "BYTES", [1], data=["AAAA"])]}},
        "must be FP32",
    ),
    "datatype not a string": (
        DECODE,
        {"json": {"inputs": [tensor("z", 32, [1, 4], data=[0] * 4)]}},
        "datatype must be a string",
    ),
    "images of the wrong size": (
        ENCODE,
        {"json": {"inputs": [tensor("images", "FP32", [1, 1, 28, 27], data=[0.5] * 756)]}},
        "must have shape [-1, 1, 28, 28]",
    ),
    "images without the batch dimension": (
        ENCODE,
        {"json": {"inputs": [tensor("images", "FP32", IMAGE_SHAPE, data=[0.5] * 784)]}},
        "must have shape",
    ),
    "images with 3 channels": (
        ENCODE,
        {"json": {"inputs": [tensor("images", "FP32", [1, 3, 28, 28], data=[0.5] * 2352)]}},
        "must have shape",
    ),
    "z of the wrong length": (
        DECODE,
        {"json": {"inputs": [tensor("z", "FP32", [1, 5], data=[0] * 5)]}},
        "must have shape [-1, 4]",
    ),
    "BYTES of rank 2": (
        ENCODE,
        {"json": {"inputs": [tensor("images", "BYTES", [1, 1], data=["AAAA"])]}},
        "must have shape [-1]",
    ),
    "shape not integers": (
        DECODE,
        {"json": {"inputs": [tensor("z", "FP32", [1.0, 4], data=[0] * 4)]}},
        "shape must be a list of non-negative integers",
    ),
    "negative shape": (
        DECODE,
        {"json": {"inputs": [tensor("z", "FP32", [-1, 4], data=[0] * 4)]}},
        "non-negative",
    ),
    "empty batch": (
        DECODE,
        {"json": {"inputs": [tensor("z", "FP32", [0, 4], data=[])]}},
        "holds no latents",
    ),
    "too few values": (
        DECODE,
        {"json": {"inputs": [tensor("z", "FP32", [2, 4], data=[0] * 7)]}},
        "holds 7 values",
    ),
    "too many values": (
        ENCODE,
        {"json": {"inputs": [tensor("images", "FP32", [1, 1, 28, 28], data=[0.5] * 785)]}},
        "holds 785 values",
    ),
    "values not numbers": (
        DECODE,
        {"json": {"inputs": [tensor("z", "FP32", [1, 4], data=["0", "1", "2", "3"])]}},
        "list of numbers",
    ),
    "ragged nested values": (
        DECODE,
        {"json": {"inputs": [tensor("z", "FP32", [2, 4], data=[[0, 0, 0, 0], [0, 0, 0]])]}},
        "list of numbers",
    ),
    "data not a list": (
        DECODE,
        {"json": {"inputs": [tensor("z", "FP32", [1, 4], data=0.5)]}},
        "list of numbers",
    ),
    "no data": (
        DECODE,
        {"json": {"inputs": [tensor("z", "FP32", [1, 4])]}},
        "neither data nor parameters.binary_data_size",
    ),
    "binary size not the FP32 byte count": (
        DECODE,
        binary_request(
            {"inputs": [tensor("z", "FP32", [2, 4], parameters={"binary_data_size": 28})]},
            bytes(28),
        ),
        "binary_data_size is 28 bytes; FP32 of shape [2, 4] is 32 bytes",
    ),
    "binary size past the body": (
        DECODE,
        binary_request(
            {"inputs": [tensor("z", "FP32", [1, 4], parameters={"binary_data_size": 16})]},
            bytes(12),
        ),
        "only 12 bytes of binary data are left",
    ),
    "bytes after the binary data": (DECODE, binary_z(np.zeros((1, 4)), size=12), "no input's"),
    "binary size without the header length": (
        DECODE,
        {"json": {"inputs": [tensor("z", "FP32", [1, 4], parameters={"binary_data_size": 16})]}},
        "only 0 bytes of binary data",
    ),
    "binary size not an integer": (
        DECODE,
        binary_request(
            {"inputs": [tensor("z", "FP32", [1, 4], parameters={"binary_data_size": "16"})]},
            bytes(16),
        ),
        "binary_data_size must be a non-negative integer",
    ),
    "both data and binary size": (
        DECODE,
        binary_request(
            {
                "inputs": [
                    tensor("z", "FP32", [1, 4], data=[0] * 4, parameters={"binary_data_size": 16})
                ]
            },
            bytes(16),
        ),
        "both data and parameters.binary_data_size",
    ),
    "header length not a number": (
        DECODE,
        {"content": orjson.dumps(z_json()), "headers": {LENGTH: "12x"}},
        "must be a byte count",
    ),
    "header length past the body": (
        DECODE,
        {"content": orjson.dumps(z_json()), "headers": {LENGTH: "100000"}},
        "the body has only",
    ),
    "header length cutting the JSON": (
        DECODE,
        {"content": orjson.dumps(z_json()), "headers": {LENGTH: "10"}},
        "not valid JSON",
    ),
    "BYTES element longer than the data": (
        ENCODE,
        binary_files(struct.pack("<I", 100) + bytes(10), 1),
        "element 0 says 100 bytes; 10 are left",
    ),
    "BYTES data cut inside a length": (
        ENCODE,
        binary_files(byte_elements(png()) + b"\x01\x00", 2),
        "ends inside an element's length",
    ),
    "fewer BYTES elements than the shape": (
        ENCODE,
        binary_files(byte_elements(png()), 2),
        "holds 1 elements; its shape says 2",
    ),
    "more BYTES elements than the shape": (
        ENCODE,
        binary_files(byte_elements(png(), png()), 1),
        "goes on after the 1 elements",
    ),
    "BYTES in JSON not base64": (
        ENCODE,
        {"json": {"inputs": [tensor("images", "BYTES", [1], data=["not base64!"])]}},
        "not valid base64",
    ),
    "BYTES in JSON not strings": (
        ENCODE,
        {"json": {"inputs": [tensor("images", "BYTES", [1], data=[[1, 2]])]}},
        "list of base64 strings",
    ),
    "BYTES element not an image": (
        ENCODE,
        binary_files(byte_elements(b"GIF89a but not really"), 1),
        "images[0] is not an image file",
    ),
    "empty BYTES element": (ENCODE, binary_files(byte_elements(b""), 1), "images[0] is empty"),
    "unknown output": (
        ENCODE,
        {"json": images_json(outputs=[{"name": "sigma"}])},
        "no output named 'sigma'; its outputs are mean, logvar, z",
    ),
    "encoder output asked of the decoder": (
        DECODE,
        {"json": z_json(outputs=[{"name": "mean"}])},
        "no output named 'mean'",
    ),
    "output asked twice": (
        ENCODE,
        {"json": images_json(outputs=[{"name": "mean"}, {"name": "mean"}])},
        "asked for twice",
    ),
    "outputs not a list": (ENCODE, {"json": images_json(outputs={"name": "mean"})}, "outputs"),
    "binary_data not a flag": (
        ENCODE,
        {"json": images_json(outputs=[{"name": "mean", "parameters": {"binary_data": "yes"}}])},
        "binary_data must be true or false",
    ),
    "binary_data_output not a flag": (
        DECODE,
        {"json": z_json(parameters={"binary_data_output": 1})},
        "binary_data_output must be true or false",
    ),
    "seed not an integer": (
        ENCODE,
        {"json": images_json(outputs=[{"name": "z"}], parameters={"seed": "7"})},
        "seed must be an integer",
    ),
    "negative seed": (
        ENCODE,
        {"json": images_json(outputs=[{"name": "z", "parameters": {"seed": -1}}])},
        "seed must be an integer",
    ),
    "id not a string": (DECODE, {"json": z_json(id=7)}, "id must be a string"),
    "parameters not an object": (DECODE, {"json": z_json(parameters=[1])}, "parameters must be"),
    "shared memory": (
        DECODE,
        {
            "json": {
                "inputs": [tensor("z", "FP32", [1, 4], parameters={"shared_memory_region": "r"})]
            }
        },
        "does not support shared_memory_region",
    ),
    "classification": (
        ENCODE,
        {"json": images_json(outputs=[{"name": "mean", "parameters": {"classification": 2}}])},
        "does not support classification",
    ),
    "corrupt gzip": (
        DECODE,
        {"content": b"not gzip at all", "headers": {"Content-Encoding": "gzip"}},
        "not valid gzip",
    ),
    "truncated deflate": (
        DECODE,
        {
            "content": zlib.compress(orjson.dumps(z_json()))[:-6],
            "headers": {"Content-Encoding": "deflate"},
        },
        "truncated",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_malformed_request_is_a_400(http: httpx.Client, case: str) -> None:
    path, request, words = BAD_REQUESTS[case]
    refused(http.post(path, **request), 400, words)


# Well-formed, but over a limit or out of range: the existing routes' 422.
OVER_LIMITS: dict[str, tuple[str, dict[str, Any], str]] = {
    "more images than VAE_MAX_IMAGES_PER_REQUEST": (
        ENCODE,
        {"json": images_json(9)},
        "images per request is 9; the limit is 8 (VAE_MAX_IMAGES_PER_REQUEST)",
    ),
    "more latents than VAE_MAX_IMAGES_PER_REQUEST": (
        DECODE,
        binary_z(np.zeros((9, 4))),
        "latents per request is 9; the limit is 8",
    ),
    "more image files than the limit": (
        ENCODE,
        binary_files(byte_elements(*[png()] * 9), 9),
        "images per request is 9",
    ),
    "an image over VAE_MAX_PIXELS_PER_IMAGE": (
        ENCODE,
        binary_files(byte_elements(png(600, 600)), 1),
        "VAE_MAX_PIXELS_PER_IMAGE",
    ),
    "a latent over VAE_MAX_ABS_LATENT": (
        DECODE,
        binary_z(np.array([[0, 0, 0, 2e4]])),
        "over 10000 (VAE_MAX_ABS_LATENT)",
    ),
    "a NaN latent": (DECODE, binary_z(np.array([[0, np.nan, 0, 0]])), "must be finite"),
    "an infinite pixel": (
        ENCODE,
        {"json": {"inputs": [tensor("images", "FP32", [1, 1, 28, 28], data=[1e39] * 784)]}},
        "must be finite",
    ),
    "pixels outside [0, 1]": (
        ENCODE,
        {"json": {"inputs": [tensor("images", "FP32", [1, 1, 28, 28], data=[255] * 784)]}},
        "must lie in [0, 1]",
    ),
}


@pytest.mark.parametrize("case", list(OVER_LIMITS))
def test_over_a_limit_is_the_existing_422(http: httpx.Client, case: str) -> None:
    path, request, words = OVER_LIMITS[case]
    refused(http.post(path, **request), 422, words)


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/nope-encoder/infer",
        "/v2/models/tiny/infer",  # the repository's name, not a protocol model's
        "/v2/models/tiny-encoder/versions/000000000000/infer",
    ],
)
def test_an_unknown_model_or_version_is_a_404(http: httpx.Client, path: str) -> None:
    refused(http.post(path, json=images_json()), 404)


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/nope-decoder",
        "/v2/models/tiny-decoder/versions/1",
        "/v2/models/nope-decoder/ready",
        "/v2/models/tiny-decoder/versions/1/ready",
    ],
)
def test_metadata_and_readiness_of_unknown_models_are_404(http: httpx.Client, path: str) -> None:
    refused(http.get(path), 404)


def test_an_unknown_route_and_method_answer_in_the_protocols_form(http: httpx.Client) -> None:
    refused(http.get("/v2/models/tiny-encoder/stats"), 404)
    refused(http.get(ENCODE), 405)


def test_a_body_over_the_size_limit_is_a_413(http: httpx.Client) -> None:
    declared = http.post(ENCODE, content=bytes(300_000))  # Content-Length over 256 KiB
    refused(declared, 413, "VAE_MAX_BODY_BYTES")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        for _ in range(40):
            yield bytes(8192)

    refused(http.post(ENCODE, content=chunks()), 413, "VAE_MAX_BODY_BYTES")


def test_a_compressed_body_that_inflates_past_the_limit_is_a_413(http: httpx.Client) -> None:
    bomb = gzip.compress(b" " * 1_000_000)  # 1 MB of JSON whitespace in ~1 KB
    refused(http.post(DECODE, content=bomb, headers={"Content-Encoding": "gzip"}), 413, "inflates")


def test_an_unknown_content_encoding_is_a_415(http: httpx.Client) -> None:
    answer = http.post(DECODE, content=b"{}", headers={"Content-Encoding": "br"})
    refused(answer, 415, "Content-Encoding br")


def test_a_well_formed_request_after_all_of_them_still_works(http: httpx.Client) -> None:
    answer = http.post(DECODE, **binary_z(np.zeros((2, 4))))
    assert answer.status_code == 200
    assert orjson.loads(answer.content)["outputs"][0]["shape"] == [2, 1, 28, 28]

"""Every kind of bad input gets its documented status and a JSON detail, and the
service keeps serving. Limits come from the ``api_settings`` fixture (8 images,
512 x 512 pixels, n <= 32, steps <= 16, 256 KiB bodies)."""

from __future__ import annotations

import base64
import io
import re
import struct
import zlib
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from PIL import Image

Z_OK = [0.1, 0.2, 0.3, 0.4]


def refused(client: TestClient, reply: Response, status: int, match: str = "") -> None:
    """The answer is ``status`` with a JSON detail (matching ``match``), no traceback,
    and the service still answers a good request afterwards."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    detail = reply.json()["detail"]
    assert detail and "Traceback" not in reply.text
    assert re.search(match, str(detail)), detail
    assert client.post("/decode", json={"z": [Z_OK]}).status_code == 200


def files(*blobs: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"{i}.png", blob, "image/png")) for i, blob in enumerate(blobs)]


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def declaring(png: bytes, width: int, height: int) -> bytes:
    """A PNG whose header (with a valid checksum) claims width x height pixels."""
    ihdr = struct.pack(">II", width, height) + png[24:29]
    return png[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + png[33:]


@pytest.fixture
def png(make_image: Callable[..., bytes]) -> bytes:
    return make_image()


# --- 400: images that are empty or cannot be decoded ---------------------------------


def test_empty_image_part(client: TestClient) -> None:
    refused(client, client.post("/encode", files=files(b"")), 400, "empty")


def test_empty_image_in_json(client: TestClient) -> None:
    refused(client, client.post("/encode", json={"images": [""]}), 400, "empty")


def test_text_sent_as_an_image(client: TestClient) -> None:
    refused(client, client.post("/encode", files=files(b"plain text")), 400, "not an image")


def test_truncated_png(client: TestClient, make_image: Callable[..., bytes]) -> None:
    blob = make_image(64, 64)
    refused(client, client.post("/encode", files=files(blob[: len(blob) // 2])), 400, "decoded")


def test_bad_image_among_good_ones_is_named(client: TestClient, png: bytes) -> None:
    reply = client.post("/reconstruct", files=files(png, png, b"junk"))
    refused(client, reply, 400, r"images\[2\]")


def test_multipart_without_boundary(client: TestClient) -> None:
    reply = client.post("/encode", content=b"abc", headers={"content-type": "multipart/form-data"})
    refused(client, reply, 400, "boundary")


# --- 415: content types an endpoint does not take ------------------------------------


@pytest.mark.parametrize("path", ["/encode", "/reconstruct", "/interpolate"])
def test_image_endpoint_with_text_body(client: TestClient, path: str) -> None:
    reply = client.post(path, content=b"hello", headers={"content-type": "text/plain"})
    refused(client, reply, 415, "text/plain")


def test_encode_without_content_type(client: TestClient) -> None:
    refused(client, client.post("/encode", content=b"{}"), 415, "none")


def test_decode_with_form_body(client: TestClient) -> None:
    refused(client, client.post("/decode", data={"z": "1"}), 415, "application/json")


def test_decode_without_content_type(client: TestClient) -> None:
    refused(client, client.post("/decode", content=b'{"z": [[0, 0, 0, 0]]}'), 415)


# --- 413: bodies over max_body_bytes ---------------------------------------------------


def test_body_over_limit_by_content_length(client: TestClient) -> None:
    big = b"0" * (256 * 1024 + 1)
    reply = client.post("/encode", files=files(big))
    refused(client, reply, 413, "VAE_MAX_BODY_BYTES")


def test_json_body_over_limit(client: TestClient) -> None:
    reply = client.post("/decode", json={"z": [Z_OK] * 20_000})
    refused(client, reply, 413, "VAE_MAX_BODY_BYTES")


def test_chunked_body_over_limit(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"z": ['
        for _ in range(20_000):
            yield b"[0.1, 0.2, 0.3, 0.4],"
        yield b"[0, 0, 0, 0]]}"

    reply = client.post("/decode", content=chunks(), headers={"content-type": "application/json"})
    refused(client, reply, 413, "VAE_MAX_BODY_BYTES")


# --- 422: counts over the configured limits -------------------------------------------


def test_too_many_images_multipart(client: TestClient, png: bytes) -> None:
    refused(client, client.post("/encode", files=files(*[png] * 9)), 422, "limit is 8")


def test_too_many_images_json(client: TestClient, png: bytes) -> None:
    reply = client.post("/encode", json={"images": [b64(png)] * 9})
    refused(client, reply, 422, "VAE_MAX_IMAGES_PER_REQUEST")


def test_too_many_latents(client: TestClient) -> None:
    refused(client, client.post("/decode", json={"z": [Z_OK] * 9}), 422, "limit is 8")


def test_decompression_bomb_header(client: TestClient, png: bytes) -> None:
    bomb = declaring(png, 50_000, 50_000)
    refused(client, client.post("/encode", files=files(bomb)), 422, "VAE_MAX_PIXELS_PER_IMAGE")


def test_image_over_pixel_limit(client: TestClient) -> None:
    out = io.BytesIO()
    Image.new("L", (600, 600)).save(out, format="PNG")
    reply = client.post("/encode", files=files(out.getvalue()))
    refused(client, reply, 422, "600x600")


@pytest.mark.parametrize("n", ["0", "-1", "33", "1000000000", "abc", "1.5", ""])
def test_sample_bad_n(client: TestClient, n: str) -> None:
    refused(client, client.get(f"/sample?n={n}"), 422)


@pytest.mark.parametrize("steps", ["1", "17", "abc"])
def test_interpolate_bad_steps(client: TestClient, steps: str) -> None:
    reply = client.post(f"/interpolate?steps={steps}", json={"z": [Z_OK, Z_OK]})
    refused(client, reply, 422)


# --- 422: latents that are not latent_dim finite numbers ------------------------------


@pytest.mark.parametrize(
    "z",
    [
        [[0.1, 0.2, 0.3]],  # too short
        [[0.1, 0.2, 0.3, 0.4, 0.5]],  # too long
        [Z_OK, [0.1]],  # ragged
        [[1e30, 0, 0, 0]],  # absurdly large
        [["a", 0, 0, 0]],  # not a number
        [["1.5", 0, 0, 0]],  # a number in a string
        [[True, 0, 0, 0]],  # a boolean
        [[None, 0, 0, 0]],
        [[[0.1], 0, 0, 0]],  # nested too deep
        [],  # no latents
        [[]],  # an empty latent
        Z_OK,  # one flat list, not a list of latents
        "0.1,0.2,0.3,0.4",
    ],
)
def test_decode_bad_latents(client: TestClient, z: object) -> None:
    refused(client, client.post("/decode", json={"z": z}), 422)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_decode_non_finite_latent(client: TestClient, literal: str) -> None:
    body = f'{{"z": [[{literal}, 0, 0, 0]]}}'.encode()
    reply = client.post("/decode", content=body, headers={"content-type": "application/json"})
    refused(client, reply, 422, "finite")


@pytest.mark.parametrize("body", [b"", b"{", b"[1, 2]", b'{"latents": [[0, 0, 0, 0]]}'])
def test_decode_malformed_json(client: TestClient, body: bytes) -> None:
    reply = client.post("/decode", content=body, headers={"content-type": "application/json"})
    refused(client, reply, 422)


# --- 422: other malformed requests ----------------------------------------------------


@pytest.mark.parametrize("path", ["/decode", "/reconstruct", "/sample"])
def test_unknown_format(client: TestClient, path: str, png: bytes) -> None:
    if path == "/sample":
        reply = client.get("/sample?format=gif")
    elif path == "/decode":
        reply = client.post("/decode?format=gif", json={"z": [Z_OK]})
    else:
        reply = client.post("/reconstruct?format=gif", files=files(png))
    refused(client, reply, 422, "format")


def test_base64_that_is_not(client: TestClient) -> None:
    reply = client.post("/encode", json={"images": ["not base64!"]})
    refused(client, reply, 422, "base64")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b"[]",
        b'{"images": []}',
        b'{"images": "abc"}',
        b'{"images": [1, 2]}',
        b'{"pictures": ["abc"]}',
    ],
)
def test_encode_malformed_json(client: TestClient, body: bytes) -> None:
    reply = client.post("/encode", content=body, headers={"content-type": "application/json"})
    refused(client, reply, 422)


def test_multipart_without_images_parts(client: TestClient, png: bytes) -> None:
    reply = client.post("/encode", files=[("image", ("a.png", png, "image/png"))])
    refused(client, reply, 422, "'images'")


def test_multipart_images_as_text_field(client: TestClient) -> None:
    reply = client.post("/encode", data={"images": "abc"}, files=[("other", ("x", b"x"))])
    refused(client, reply, 422, "must be a file")


@pytest.mark.parametrize(
    "query", ["temperature=-1", "temperature=nan", "temperature=inf", "seed=-1", "seed=abc"]
)
def test_sample_bad_parameters(client: TestClient, query: str) -> None:
    refused(client, client.get(f"/sample?{query}"), 422)


def test_encode_bad_seed(client: TestClient, png: bytes) -> None:
    refused(client, client.post("/encode?sample=true&seed=-5", files=files(png)), 422)


@pytest.mark.parametrize(
    "body",
    [
        {"z": [Z_OK]},  # one latent
        {"z": [Z_OK, Z_OK, Z_OK]},  # three latents
        {"z": [Z_OK, [0.1, 0.2]]},  # wrong length
        {"images": ["aGk="]},  # one image
        {},  # neither
        {"z": [Z_OK, Z_OK], "images": ["aGk=", "aGk="]},  # both
    ],
)
def test_interpolate_bad_json(client: TestClient, body: dict[str, object]) -> None:
    refused(client, client.post("/interpolate", json=body), 422)


@pytest.mark.parametrize("count", [1, 3])
def test_interpolate_wrong_number_of_images(client: TestClient, png: bytes, count: int) -> None:
    reply = client.post("/interpolate", files=files(*[png] * count))
    refused(client, reply, 422, "exactly 2")


def test_interpolate_undecodable_image(client: TestClient, png: bytes) -> None:
    reply = client.post("/interpolate", json={"images": [b64(png), b64(b"junk")]})
    refused(client, reply, 400, r"images\[1\]")

"""The hostile-input corpus of issue 6: each input gets its documented status, never
a traceback, and the service answers /healthz and a normal /encode right after.
Valid but unusual images are converted and answered with 200.

Limits (``hostile_settings``): 8 images, 256 KiB bodies, n <= 32 and the default
pixel limit (25 MP), so that a 4000 x 4000 image is legal and a 50,000 x 50,000 one
is not."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from PIL import Image

from vae_service.server.main import create_app
from vae_service.server.npy import MEDIA_TYPE as NPY
from vae_service.server.settings import Settings

Z_OK = [0.1, -0.2, 0.3, 0.4]


@pytest.fixture(scope="module")
def client(served_settings: Settings) -> Iterator[TestClient]:
    hostile_settings = served_settings.model_copy(update={"max_pixels_per_image": 25_000_000})
    with TestClient(create_app(hostile_settings), raise_server_exceptions=False) as test_client:
        yield test_client


def still_healthy(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    good = client.post("/encode", files=files(PNG))
    assert good.status_code == 200 and len(good.json()["mean"]) == 1


def refused(client: TestClient, reply: Response, status: int) -> None:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json()["detail"] and "Traceback" not in reply.text
    assert reply.headers["x-request-id"]
    still_healthy(client)


def files(*blobs: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"{i}.png", blob, "image/png")) for i, blob in enumerate(blobs)]


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def post_raw(client: TestClient, path: str, body: bytes, content_type: str) -> Response:
    return client.post(path, content=body, headers={"content-type": content_type})


def declaring(png: bytes, width: int, height: int) -> bytes:
    """A PNG whose header (with a valid checksum) claims width x height pixels."""
    ihdr = struct.pack(">II", width, height) + png[24:29]
    return png[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + png[33:]


def saved(img: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **options)
    return out.getvalue()


PNG = saved(Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8)), "PNG")


# --- malformed input: its documented 4xx ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "content_type", "status"),
    [
        ("/encode", "application/json", 422),  # not JSON
        ("/decode", "application/json", 422),
        ("/encode", NPY, 400),  # not a .npy file
        ("/encode", "image/png", 415),  # no endpoint takes raw image bodies
    ],
)
def test_empty_body(client: TestClient, path: str, content_type: str, status: int) -> None:
    refused(client, post_raw(client, path, b"", content_type), status)


def test_empty_image_part(client: TestClient) -> None:
    refused(client, client.post("/encode", files=files(b"")), 400)


def test_truncated_png(client: TestClient) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64), np.uint8)
    blob = saved(Image.fromarray(pixels), "PNG")
    refused(client, client.post("/encode", files=files(blob[: len(blob) // 2])), 400)


@pytest.mark.parametrize("text", [b"hello, world", b"<html></html>", b"%PDF-1.4"])
def test_text_sent_as_an_image(client: TestClient, text: bytes) -> None:
    refused(client, client.post("/reconstruct", files=files(text)), 400)


def test_png_declaring_50000_by_50000_pixels(client: TestClient) -> None:
    bomb = declaring(PNG, 50_000, 50_000)
    reply = client.post("/encode", files=files(bomb))
    refused(client, reply, 422)
    assert "VAE_MAX_PIXELS_PER_IMAGE" in reply.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/encode", b"[]"),
        ("/encode", b'{"images": "abc"}'),
        ("/encode", b'{"images": [1, 2]}'),
        ("/encode", b'{"images": [["nested"]]}'),
        ("/encode", b'{"pictures": ["abc"]}'),
        ("/encode", b'"just a string"'),
        ("/decode", b'{"z": 5}'),
        ("/decode", b'{"z": {"0": [0.1, 0.2, 0.3, 0.4]}}'),
        ("/decode", b'{"z": [[{"a": 1}, 0, 0, 0]]}'),
        ("/decode", b'{"z": [["0.1", 0, 0, 0]]}'),
        ("/decode", b'{"z": [[true, 0, 0, 0]]}'),
        ("/decode", b'{"z": [[null, 0, 0, 0]]}'),
        ("/decode", b'{"z": null}'),
        ("/decode", b"{"),
        ("/interpolate", b'{"z": [[0, 0, 0, 0]]}'),
        ("/interpolate", b'{"z": 1, "images": 2}'),
    ],
)
def test_wrong_json_shapes_and_types(client: TestClient, path: str, body: bytes) -> None:
    refused(client, post_raw(client, path, body, "application/json"), 422)


@pytest.mark.parametrize("text", ["not base64!", "aGk", "====", "€uro"])
def test_base64_that_is_not(client: TestClient, text: str) -> None:
    refused(client, client.post("/encode", json={"images": [text]}), 422)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e30", "-1e30", "1e999"])
def test_non_finite_or_huge_latents(client: TestClient, literal: str) -> None:
    body = f'{{"z": [[{literal}, 0, 0, 0]]}}'.encode()
    refused(client, post_raw(client, "/decode", body, "application/json"), 422)


def test_huge_latent_names_its_setting(client: TestClient) -> None:
    reply = client.post("/decode", json={"z": [[1e30, 0, 0, 0]]})
    refused(client, reply, 422)
    assert "VAE_MAX_ABS_LATENT" in reply.json()["detail"]


@pytest.mark.parametrize("literal", ["NaN", "1e30"])
def test_interpolation_refuses_bad_latents(client: TestClient, literal: str) -> None:
    body = f'{{"z": [[{literal}, 0, 0, 0], [0, 0, 0, 0]]}}'.encode()
    refused(client, post_raw(client, "/interpolate", body, "application/json"), 422)


@pytest.mark.parametrize("z", [[[0.1, 0.2, 0.3]], [[0.1] * 5], [[0.1] * 4, [0.1] * 3], [[]]])
def test_latents_of_the_wrong_length(client: TestClient, z: list[list[float]]) -> None:
    refused(client, client.post("/decode", json={"z": z}), 422)


@pytest.mark.parametrize("n", ["0", "-1", "1000000000", "abc"])
def test_bad_sample_n(client: TestClient, n: str) -> None:
    refused(client, client.get(f"/sample?n={n}"), 422)


def test_10000_images_in_json(client: TestClient) -> None:
    # Counted before any base64 is decoded.
    reply = client.post("/encode", json={"images": ["aGk="] * 10_000})
    refused(client, reply, 422)
    assert "VAE_MAX_IMAGES_PER_REQUEST" in reply.json()["detail"]


def test_10000_images_in_multipart(client: TestClient) -> None:
    # 10,000 files do not fit in the 256 KiB body: refused while the body is read.
    tiny = saved(Image.new("L", (1, 1)), "PNG")
    refused(client, client.post("/encode", files=files(*[tiny] * 10_000)), 413)


def test_10000_images_in_npy(client: TestClient) -> None:
    # The .npy header declares them; refused before any pixel is read.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (10_000, 28, 28)}
    )
    refused(client, post_raw(client, "/encode", header.getvalue(), NPY), 422)


def test_10000_latents(client: TestClient) -> None:
    refused(client, client.post("/decode", json={"z": [[0, 0, 0, 0]] * 10_000}), 422)


# --- valid but unusual images: converted, answered with 200 ---------------------------


def sixteen_bit_png() -> bytes:
    ramp = (np.arange(32 * 32, dtype=np.uint16) * 64).reshape(32, 32)
    img = Image.fromarray(ramp)
    assert img.mode == "I;16"
    return saved(img, "PNG")


def cmyk_jpeg() -> bytes:
    return saved(Image.new("CMYK", (40, 30), (10, 200, 30, 5)), "JPEG")


def palette_png_with_transparency() -> bytes:
    img = Image.new("P", (20, 20), 1)
    img.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    return saved(img, "PNG", transparency=0)


def animated_gif() -> bytes:
    frames = [Image.new("L", (16, 16), shade) for shade in (30, 220, 120)]
    return saved(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


UNUSUAL = {
    "16-bit PNG": sixteen_bit_png,
    "CMYK JPEG": cmyk_jpeg,
    "palette PNG with transparency": palette_png_with_transparency,
    "animated GIF": animated_gif,
    "1x1": lambda: saved(Image.new("L", (1, 1), 200), "PNG"),
    "4000x4000": lambda: saved(Image.new("L", (4000, 4000), 90), "PNG"),
}


@pytest.mark.parametrize("kind", list(UNUSUAL))
def test_unusual_image_is_answered(client: TestClient, kind: str) -> None:
    blob = UNUSUAL[kind]()
    reply = client.post("/encode", files=files(blob))
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["mean"]) == 1
    as_json = client.post("/reconstruct", json={"images": [b64(blob)]})
    assert as_json.status_code == 200 and len(as_json.json()["images"]) == 1
    still_healthy(client)


def test_animated_gif_gives_its_first_frame(client: TestClient) -> None:
    first = saved(Image.new("L", (16, 16), 30), "PNG")
    encoded = client.post("/encode", files=files(animated_gif(), first)).json()["mean"]
    assert np.allclose(encoded[0], encoded[1], atol=1e-5)


# --- unknown query parameters: ignored (documented in the API description) ------------


@pytest.mark.parametrize("query", ["bogus=1", "n_images=5", "callback=alert(1)&x=", "%00=%ff"])
def test_unknown_query_parameters_are_ignored(client: TestClient, query: str) -> None:
    assert client.get(f"/sample?n=2&seed=3&{query}").status_code == 200
    assert client.post(f"/decode?{query}", json={"z": [Z_OK]}).status_code == 200
    still_healthy(client)

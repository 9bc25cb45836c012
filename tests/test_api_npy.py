"""The binary fast path through the app: application/x-npy bodies and ?format=npy answers."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

NPY = {"content-type": "application/x-npy"}


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def load(reply_content: bytes) -> np.ndarray:
    return np.load(io.BytesIO(reply_content), allow_pickle=False)


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def as_base64_pngs(images: np.ndarray) -> list[str]:
    blobs = []
    for image in images:
        out = io.BytesIO()
        Image.fromarray(image).save(out, format="PNG")
        blobs.append(base64.b64encode(out.getvalue()).decode())
    return blobs


def test_npy_body_encodes_like_the_same_pngs(client: TestClient) -> None:
    images = pixels(3)
    by_npy = client.post("/encode", content=npy(images), headers=NPY)
    by_png = client.post("/encode", json={"images": as_base64_pngs(images)})
    assert by_npy.status_code == 200, by_npy.text
    np.testing.assert_allclose(by_npy.json()["mean"], by_png.json()["mean"], atol=1e-6)


def test_float32_body_equals_uint8_body(client: TestClient) -> None:
    images = pixels(2, seed=1)
    as_uint8 = client.post("/encode", content=npy(images), headers=NPY).json()
    as_float = client.post(
        "/encode", content=npy(images.astype(np.float32) / 255), headers=NPY
    ).json()
    np.testing.assert_allclose(as_uint8["logvar"], as_float["logvar"], atol=1e-6)


def test_encode_npy_answer_stacks_mean_logvar_and_draw(client: TestClient) -> None:
    body = npy(pixels(4))
    as_json = client.post("/encode?sample=true&seed=3", content=body, headers=NPY).json()
    reply = client.post("/encode?format=npy&sample=true&seed=3", content=body, headers=NPY)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/x-npy"
    assert reply.headers["x-seed"] == "3"
    rows = load(reply.content)
    assert rows.dtype == np.float32 and rows.shape == (4, 3, 4)
    np.testing.assert_allclose(rows[:, 0], as_json["mean"], atol=1e-6)
    np.testing.assert_allclose(rows[:, 1], as_json["logvar"], atol=1e-6)
    np.testing.assert_allclose(rows[:, 2], as_json["z"], atol=1e-6)
    plain = load(client.post("/encode?format=npy", content=body, headers=NPY).content)
    assert plain.shape == (4, 2, 4)


def test_decode_npy_answer_matches_the_pngs(client: TestClient) -> None:
    z = np.random.default_rng(2).normal(size=(3, 4)).tolist()
    images = load(client.post("/decode?format=npy", json={"z": z}).content)
    assert images.dtype == np.float32 and images.shape == (3, 28, 28, 1)
    pngs = client.post("/decode", json={"z": z}).json()["images"]
    for image, png in zip(images, pngs, strict=True):
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(png)))) / 255
        assert np.abs(image[..., 0] - decoded).max() <= 0.5 / 255 + 1e-6


def test_sample_npy_is_seeded_and_matches_decoding_its_latents(client: TestClient) -> None:
    first = client.get("/sample?n=5&seed=11&format=npy")
    again = client.get("/sample?n=5&seed=11&format=npy")
    assert first.status_code == 200 and first.headers["x-seed"] == "11"
    assert first.content == again.content
    z = client.get("/sample?n=5&seed=11").json()["z"]
    decoded = load(client.post("/decode?format=npy", json={"z": z}).content)
    np.testing.assert_allclose(load(first.content), decoded, atol=1e-6)


def test_reconstruct_takes_npy_and_answers_npy(client: TestClient) -> None:
    images = pixels(2, seed=4)
    reply = client.post("/reconstruct?format=npy", content=npy(images), headers=NPY)
    assert reply.status_code == 200
    out = load(reply.content)
    assert out.shape == (2, 28, 28, 1) and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"not an array", 400, "not a valid .npy body"),
        (npy(np.zeros((1, 32, 32), np.uint8)), 422, "must be 28×28"),
        (npy(np.zeros((9, 28, 28), np.uint8)), 422, "the limit is 8"),
        (npy(np.full((1, 28, 28), 2.0, np.float32)), 422, "must lie in [0, 1]"),
        (npy(np.zeros((1, 28, 28), np.int16)), 422, "dtype must be"),
    ],
)
def test_bad_npy_bodies_get_clear_errors(
    client: TestClient, body: bytes, status: int, message: str
) -> None:
    for path in ("/encode", "/reconstruct"):
        reply = client.post(path, content=body, headers=NPY)
        assert reply.status_code == status, reply.text
        assert message in reply.json()["detail"]


def test_unknown_format_is_422(client: TestClient) -> None:
    assert client.post("/decode?format=tiff", json={"z": [[0, 0, 0, 0]]}).status_code == 422
    assert client.get("/sample?format=npz").status_code == 422


def test_wrong_content_type_names_npy(client: TestClient) -> None:
    reply = client.post("/encode", content=b"x", headers={"content-type": "text/plain"})
    assert reply.status_code == 415
    assert "application/x-npy" in reply.json()["detail"]

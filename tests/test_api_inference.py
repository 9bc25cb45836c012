"""The model endpoints' happy paths, through the app's real lifespan on tiny weights."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from vae_service.model import VAE
from vae_service.server.main import create_app
from vae_service.server.settings import Settings

LATENT_DIM = 4  # the tiny config's


def multipart(*blobs: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"{i}.png", blob, "image/png")) for i, blob in enumerate(blobs)]


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def image_body(kind: str, *blobs: bytes) -> dict[str, object]:
    """Keyword arguments for a client call carrying ``blobs`` as JSON or as multipart."""
    if kind == "json":
        return {"json": {"images": [b64(blob) for blob in blobs]}}
    return {"files": multipart(*blobs)}


def png_pixels(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)))


def as_tensor(blob: bytes) -> torch.Tensor:
    return torch.from_numpy(png_pixels(blob).astype(np.float32) / 255).view(1, 1, 28, 28)


def test_encode_multipart_matches_the_model(
    client: TestClient, tiny_model: VAE, make_image: Callable[..., bytes]
) -> None:
    blobs = [make_image(seed=i) for i in range(3)]
    reply = client.post("/encode", files=multipart(*blobs))
    assert reply.status_code == 200
    body = reply.json()
    assert body["latent_dim"] == LATENT_DIM and "z" not in body
    mean, logvar = tiny_model.encode(torch.cat([as_tensor(b) for b in blobs]))
    assert np.allclose(body["mean"], mean.detach().numpy(), atol=1e-5)
    assert np.allclose(body["logvar"], logvar.detach().numpy(), atol=1e-5)


def test_encode_json_equals_encode_multipart(
    client: TestClient, make_image: Callable[..., bytes]
) -> None:
    blobs = [make_image(seed=i) for i in range(2)]
    by_json = client.post("/encode", json={"images": [b64(b) for b in blobs]})
    assert by_json.status_code == 200
    assert by_json.json() == client.post("/encode", files=multipart(*blobs)).json()


def test_encode_converts_and_resizes_any_image(
    client: TestClient, make_image: Callable[..., bytes]
) -> None:
    reply = client.post("/encode", files=multipart(make_image(300, 200, "RGB", "JPEG")))
    assert reply.status_code == 200
    assert np.asarray(reply.json()["mean"]).shape == (1, LATENT_DIM)


def test_encode_sample_is_seeded(client: TestClient, make_image: Callable[..., bytes]) -> None:
    files = multipart(make_image(), make_image(seed=1))
    first = client.post("/encode?sample=true&seed=11", files=files).json()
    again = client.post("/encode?sample=true&seed=11", files=files).json()
    other = client.post("/encode?sample=true&seed=12", files=files).json()
    assert first["seed"] == 11 and np.asarray(first["z"]).shape == (2, LATENT_DIM)
    assert first["z"] == again["z"] and first["z"] != other["z"]


def test_encode_sample_without_seed_returns_the_one_chosen(
    client: TestClient, make_image: Callable[..., bytes]
) -> None:
    files = multipart(make_image())
    first = client.post("/encode?sample=true", files=files).json()
    replay = client.post(f"/encode?sample=true&seed={first['seed']}", files=files).json()
    assert replay["z"] == first["z"]


def test_decode_json_gives_one_png_per_latent(client: TestClient, tiny_model: VAE) -> None:
    z = [[0.0] * LATENT_DIM, [1.0, -1.0, 0.5, 2.0]]
    reply = client.post("/decode", json={"z": z})
    assert reply.status_code == 200
    pngs = [base64.b64decode(s) for s in reply.json()["images"]]
    expected = tiny_model.decode(torch.tensor(z)).detach().numpy()
    for png, image in zip(pngs, expected, strict=True):
        pixels = png_pixels(png)
        assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
        assert np.abs(pixels / 255 - image[0]).max() <= 0.5 / 255 + 1e-6


def test_decode_png_of_one_latent_is_the_image(client: TestClient) -> None:
    z = {"z": [[0.3] * LATENT_DIM]}
    grid = client.post("/decode?format=png", json=z)
    assert grid.headers["content-type"] == "image/png"
    assert grid.content == base64.b64decode(client.post("/decode", json=z).json()["images"][0])


def test_decode_png_of_several_latents_is_a_grid(client: TestClient) -> None:
    reply = client.post("/decode?format=png", json={"z": [[0.0] * LATENT_DIM] * 4})
    assert reply.status_code == 200
    assert png_pixels(reply.content).shape == (62, 62)  # 2 x 2 tiles of 28 with 2-pixel gutters


@pytest.mark.parametrize("body", ["json", "multipart"])
def test_reconstruct_returns_decoded_posterior_means(
    body: str, client: TestClient, tiny_model: VAE, make_image: Callable[..., bytes]
) -> None:
    blob = make_image()
    reply = client.post("/reconstruct", **image_body(body, blob))
    assert reply.status_code == 200
    expected = tiny_model.decode(tiny_model.encode(as_tensor(blob))[0]).detach().numpy()[0, 0]
    pixels = png_pixels(base64.b64decode(reply.json()["images"][0]))
    assert np.abs(pixels / 255 - expected).max() <= 0.5 / 255 + 1e-6


def test_reconstruct_png_is_a_grid(client: TestClient, make_image: Callable[..., bytes]) -> None:
    reply = client.post("/reconstruct?format=png", files=multipart(make_image(), make_image()))
    assert reply.headers["content-type"] == "image/png"
    assert png_pixels(reply.content).shape == (32, 62)


def test_interpolate_latents_walks_a_straight_line(client: TestClient) -> None:
    ends = [[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, -1.0, 4.0]]
    reply = client.post("/interpolate?steps=5", json={"z": ends})
    assert reply.status_code == 200
    body = reply.json()
    assert body["steps"] == 5 and len(body["images"]) == 5
    assert np.allclose(body["z"], np.linspace(ends[0], ends[1], 5), atol=1e-6)


@pytest.mark.parametrize("body", ["json", "multipart"])
def test_interpolate_images_starts_and_ends_at_their_means(
    body: str, client: TestClient, make_image: Callable[..., bytes]
) -> None:
    blobs = [make_image(seed=1), make_image(seed=2)]
    means = client.post("/encode", files=multipart(*blobs)).json()["mean"]
    reply = client.post("/interpolate?steps=3", **image_body(body, *blobs))
    assert reply.status_code == 200
    z = reply.json()["z"]
    assert np.allclose(z[0], means[0], atol=1e-5) and np.allclose(z[-1], means[1], atol=1e-5)


def test_sample_shapes_and_seed(client: TestClient) -> None:
    reply = client.get("/sample?n=3&seed=7&temperature=0.5")
    assert reply.status_code == 200
    body = reply.json()
    assert (body["seed"], body["temperature"]) == (7, 0.5)
    assert np.asarray(body["z"]).shape == (3, LATENT_DIM) and len(body["images"]) == 3
    prior = torch.randn((3, LATENT_DIM), generator=torch.Generator().manual_seed(7)) * 0.5
    assert np.allclose(body["z"], prior.numpy(), atol=1e-6)


def test_sample_same_seed_same_bytes(client: TestClient) -> None:
    first = client.get("/sample?n=4&seed=123")
    assert first.json() == client.get("/sample?n=4&seed=123").json()
    assert first.json()["images"] != client.get("/sample?n=4&seed=124").json()["images"]
    png = client.get("/sample?n=4&seed=123&format=png")
    assert png.content == client.get("/sample?n=4&seed=123&format=png").content


def test_sample_without_seed_chooses_and_returns_one(client: TestClient) -> None:
    first = client.get("/sample?n=2").json()
    assert isinstance(first["seed"], int)
    assert client.get(f"/sample?n=2&seed={first['seed']}").json() == first


def test_sample_png_is_a_grid_with_its_seed_in_a_header(client: TestClient) -> None:
    reply = client.get("/sample?n=16&format=png")
    assert reply.headers["content-type"] == "image/png"
    assert png_pixels(reply.content).shape == (122, 122)
    seed = reply.headers["x-seed"]
    assert client.get(f"/sample?n=16&format=png&seed={seed}").content == reply.content


def test_interpolate_png_is_one_row(client: TestClient) -> None:
    reply = client.post("/interpolate?steps=4&format=png", json={"z": [[0.0] * 4, [1.0] * 4]})
    assert reply.headers["content-type"] == "image/png"
    assert png_pixels(reply.content).shape == (32, 4 * 30 + 2)


def test_the_first_answer_of_a_seed_is_the_same_as_the_later_ones(
    api_settings: Settings,
) -> None:
    """Warm-up runs on the batcher's own thread: CPU kernels are cached per thread, and
    the first pass of a batch shape on a thread differed from later ones in the last bit."""
    with TestClient(create_app(api_settings.model_copy(update={"max_batch_size": 4}))) as fresh:
        answers = [fresh.get("/sample?n=5&seed=11&format=npy").content for _ in range(3)]
    assert answers[0] == answers[1] == answers[2]

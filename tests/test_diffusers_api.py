"""Our own API (/encode, /decode, /reconstruct, /interpolate, /sample) on diffusers
models: latents N×C×h×w in JSON and .npy, images at their own size in [0, 1], outputs
equal to diffusers in process (fp32, within 1e-4); each bad input its own 4xx."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.diffusers_vaes import settings, write_models
from vae_service.server.main import create_app

NPY = "application/x-npy"


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("diffusers-api")
    return folder, write_models(folder, ("sd", "flux", "tiny"))


@pytest.fixture(scope="module")
def client(shelf: tuple[Path, dict[str, Any]]) -> Iterator[TestClient]:
    app = create_app(settings(shelf[0], default_model="sd"))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def models(shelf: tuple[Path, dict[str, Any]]) -> dict[str, Any]:
    return shelf[1]


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def read_npy(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))


def pixels(n: int = 2, h: int = 16, w: int = 24, seed: int = 0) -> torch.Tensor:
    """Images N×C×H×W in [0, 1]."""
    return torch.rand((n, 3, h, w), generator=torch.Generator().manual_seed(seed))


def as_body(images: torch.Tensor) -> bytes:
    return npy(images.permute(0, 2, 3, 1).numpy().astype("<f4"))


def latents(channels: int = 4, n: int = 2, h: int = 4, w: int = 6) -> torch.Tensor:
    return torch.randn((n, channels, h, w), generator=torch.Generator().manual_seed(3))


def in_process_decode(model: Any, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ((model.decode(z).sample + 1) / 2).clamp(0, 1)


def png(height: int, width: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("route", ["/encode", "/models/sd/encode"])
def test_encode_kl_answers_mean_and_logvar(client: TestClient, models: Any, route: str) -> None:
    images = pixels()
    r = client.post(route, content=as_body(images), headers={"content-type": NPY})
    assert r.status_code == 200, r.text
    body = r.json()
    with torch.no_grad():
        dist = models["sd"].encode(images * 2 - 1).latent_dist
    assert body["latent_dim"] == 4 and body["latent_shape"] == [4, 4, 6]
    torch.testing.assert_close(torch.tensor(body["mean"]), dist.mean, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(body["logvar"]), dist.logvar, atol=1e-4, rtol=0)


def test_encode_npy_answer_stacks_mean_and_logvar(client: TestClient, models: Any) -> None:
    images = pixels(n=1)
    r = client.post(
        "/models/flux/encode?format=npy", content=as_body(images), headers={"content-type": NPY}
    )
    assert r.status_code == 200, r.text
    out = read_npy(r.content)
    with torch.no_grad():
        dist = models["flux"].encode(images * 2 - 1).latent_dist
    assert out.shape == (1, 2, 16, 8, 12)
    torch.testing.assert_close(out[:, 0], dist.mean, atol=1e-4, rtol=0)
    torch.testing.assert_close(out[:, 1], dist.logvar, atol=1e-4, rtol=0)


def test_encode_sample_draws_with_a_seed(client: TestClient) -> None:
    body = as_body(pixels(n=1))
    answers = [
        client.post(
            "/models/sd/encode?sample=true&seed=7", content=body, headers={"content-type": NPY}
        )
        for _ in range(2)
    ]
    assert all(r.status_code == 200 for r in answers)
    assert answers[0].json()["z"] == answers[1].json()["z"]
    assert answers[0].headers["X-Seed"] == "7"


def test_encode_tiny_answers_latents_without_logvar(client: TestClient, models: Any) -> None:
    images = pixels(n=1)
    r = client.post("/models/tiny/encode", content=as_body(images), headers={"content-type": NPY})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "logvar" not in body
    with torch.no_grad():
        expected = models["tiny"].encode(images * 2 - 1).latents
    torch.testing.assert_close(torch.tensor(body["mean"]), expected, atol=1e-4, rtol=0)
    r = client.post(
        "/models/tiny/encode?format=npy", content=as_body(images), headers={"content-type": NPY}
    )
    assert read_npy(r.content).shape == (1, 1, 4, 4, 6)


def test_encode_image_files_at_their_own_size(client: TestClient, models: Any) -> None:
    files = [png(16, 24, seed) for seed in (1, 2)]
    r = client.post(
        "/models/sd/encode", files=[("images", (f"{i}.png", f)) for i, f in enumerate(files)]
    )
    assert r.status_code == 200, r.text
    images = torch.stack(
        [torch.from_numpy(np.array(Image.open(io.BytesIO(f)))).permute(2, 0, 1) for f in files]
    )
    with torch.no_grad():
        mean = models["sd"].encode(images.float() / 255 * 2 - 1).latent_dist.mean
    torch.testing.assert_close(torch.tensor(r.json()["mean"]), mean, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["sd", "tiny"])
def test_decode_json_equals_in_process(client: TestClient, models: Any, name: str) -> None:
    z = latents()
    r = client.post(f"/models/{name}/decode?format=npy", json={"z": z.tolist()})
    assert r.status_code == 200, r.text
    out = read_npy(r.content).permute(0, 3, 1, 2)
    torch.testing.assert_close(out, in_process_decode(models[name], z), atol=1e-4, rtol=0)


def test_decode_npy_latents_equal_in_process(client: TestClient, models: Any) -> None:
    z = latents(16, n=1)
    r = client.post(
        "/models/flux/decode?format=npy", content=npy(z.numpy()), headers={"content-type": NPY}
    )
    assert r.status_code == 200, r.text
    out = read_npy(r.content).permute(0, 3, 1, 2)
    torch.testing.assert_close(out, in_process_decode(models["flux"], z), atol=1e-4, rtol=0)


def test_decode_answers_pngs_of_the_decoded_size(client: TestClient) -> None:
    r = client.post("/decode", json={"z": latents(n=1).tolist()})
    assert r.status_code == 200, r.text
    r = client.post("/decode?format=png", json={"z": latents(n=1).tolist()})
    assert Image.open(io.BytesIO(r.content)).size == (24, 16)


@pytest.mark.parametrize("name", ["sd", "tiny"])
def test_reconstruct_is_decode_of_encode(client: TestClient, models: Any, name: str) -> None:
    images = pixels(n=1)
    r = client.post(
        f"/models/{name}/reconstruct?format=npy",
        content=as_body(images),
        headers={"content-type": NPY},
    )
    assert r.status_code == 200, r.text
    model = models[name]
    with torch.no_grad():
        encoded = model.encode(images * 2 - 1)
        z = encoded.latent_dist.mean if name == "sd" else encoded.latents
    out = read_npy(r.content).permute(0, 3, 1, 2)
    torch.testing.assert_close(out, in_process_decode(model, z), atol=1e-4, rtol=0)


def test_interpolate_between_two_latents(client: TestClient, models: Any) -> None:
    z = latents()
    r = client.post("/models/sd/interpolate?steps=3", json={"z": z.tolist()})
    assert r.status_code == 200, r.text
    points = torch.tensor(r.json()["z"])
    assert points.shape == (3, 4, 4, 6)
    torch.testing.assert_close(points[1], (z[0] + z[1]) / 2, atol=1e-6, rtol=0)
    r = client.post("/models/sd/interpolate?steps=3&format=npy", json={"z": z.tolist()})
    out = read_npy(r.content).permute(0, 3, 1, 2)
    torch.testing.assert_close(out[[0, 2]], in_process_decode(models["sd"], z), atol=1e-4, rtol=0)


def test_interpolate_between_two_images(client: TestClient) -> None:
    files = [("images", (f"{i}.png", png(16, 16, i))) for i in range(2)]
    r = client.post("/models/sd/interpolate?steps=4", files=files)
    assert r.status_code == 200, r.text
    assert torch.tensor(r.json()["z"]).shape == (4, 4, 4, 4)


# Bad input: each its own 4xx, and the server keeps serving.


def refused(r: Any, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    assert words in r.json()["detail"], r.json()["detail"]


def test_sample_is_refused_naming_the_family(client: TestClient) -> None:
    refused(client.get("/models/sd/sample"), 422, "diffusers AutoencoderKL")
    refused(client.get("/models/tiny/sample"), 422, "diffusers AutoencoderTiny")


def test_score_is_refused_naming_the_family(client: TestClient) -> None:
    body = as_body(pixels())
    r = client.post("/models/tiny/score", content=body, headers={"content-type": NPY})
    refused(r, 422, "diffusers AutoencoderTiny")


def test_decode_wrong_latent_shape(client: TestClient) -> None:
    refused(client.post("/models/sd/decode", json={"z": latents()[0].tolist()}), 422, "N x C")


def test_decode_wrong_channel_count(client: TestClient) -> None:
    refused(client.post("/models/sd/decode", json={"z": latents(16).tolist()}), 422, "channels")


def test_decode_npy_wrong_channel_count(client: TestClient) -> None:
    body = npy(latents(3).numpy())
    r = client.post("/models/flux/decode", content=body, headers={"content-type": NPY})
    refused(r, 422, "16")


def test_decode_ragged_latents(client: TestClient) -> None:
    z = latents().tolist()
    z[1][0] = z[1][0][:-1]
    refused(client.post("/models/sd/decode", json={"z": z}), 422, "nested lists")


def test_decode_non_finite_or_too_large_latents(client: TestClient) -> None:
    z = latents(n=1)
    z[0, 0, 0, 0] = float("nan")
    body = npy(z.numpy())
    r = client.post("/models/sd/decode", content=body, headers={"content-type": NPY})
    refused(r, 422, "finite")
    refused(client.post("/models/sd/decode", json={"z": [[[[1e300]]] * 4]}), 422, "VAE_MAX")


def test_decode_over_the_pixel_limit_is_refused_before_reading(client: TestClient) -> None:
    header = npy(np.zeros((1, 4, 1, 1), "<f4"))[:-16].replace(b"1, 1)", b"999, 999)")
    r = client.post("/models/sd/decode", content=header, headers={"content-type": NPY})
    refused(r, 422, "VAE_MAX_PIXELS_PER_IMAGE")


def test_decode_npy_wrong_dtype(client: TestClient) -> None:
    body = npy(latents(n=1).numpy().astype("<f8"))
    refused(
        client.post("/models/sd/decode", content=body, headers={"content-type": NPY}),
        422,
        "float32",
    )


def test_encode_image_size_not_a_multiple(client: TestClient) -> None:
    r = client.post(
        "/models/sd/encode", content=as_body(pixels(h=16, w=18)), headers={"content-type": NPY}
    )
    refused(r, 422, "not a multiple of 4")
    r = client.post("/models/sd/reconstruct", files=[("images", ("a.png", png(15, 16)))])
    refused(r, 422, "not a multiple of 4")


def test_encode_images_of_different_sizes(client: TestClient) -> None:
    files = [("images", ("a.png", png(16, 16))), ("images", ("b.png", png(16, 24)))]
    refused(client.post("/models/sd/encode", files=files), 422, "share one size")


def test_encode_sample_on_tiny_is_refused(client: TestClient) -> None:
    r = client.post(
        "/models/tiny/encode?sample=true", content=as_body(pixels()), headers={"content-type": NPY}
    )
    refused(r, 422, "no posterior")


def test_interpolate_needs_two_latents_of_the_models_shape(client: TestClient) -> None:
    refused(client.post("/models/sd/interpolate", json={"z": latents(n=3).tolist()}), 422, "either")
    refused(client.post("/models/sd/interpolate", json={"z": latents(3).tolist()}), 422, "channels")
    assert client.get("/healthz").status_code == 200

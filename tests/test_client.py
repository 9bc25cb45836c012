"""The Python client against a live server (uvicorn on a free port, tiny weights)."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import uvicorn
from PIL import Image

from service.client import AsyncVAEClient, VAEClient, VAEError
from service.main import create_app
from service.settings import Settings


@pytest.fixture
def server_url(api_settings: Settings) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(api_settings), port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def vae(server_url: str) -> Iterator[VAEClient]:
    with VAEClient(server_url) as client:
        yield client


def pixels(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def test_health_ready_and_model(vae: VAEClient) -> None:
    assert vae.health() == {"status": "ok"}
    assert vae.ready() is True
    info = vae.model()
    assert info["latent_dim"] == 4 and info["image_size"] == 28


def test_encode_agrees_across_json_multipart_and_npy(vae: VAEClient) -> None:
    images = pixels(3)
    files = [png(image) for image in images]
    by_json, by_parts, by_npy = (
        vae.encode(files),
        vae.encode(files, multipart=True),
        vae.encode(images),
    )
    assert by_json.mean.shape == (3, 4) and by_json.z is None
    np.testing.assert_allclose(by_parts.mean, by_json.mean, atol=1e-6)
    np.testing.assert_allclose(by_npy.mean, by_json.mean, atol=1e-6)
    np.testing.assert_allclose(by_npy.logvar, by_json.logvar, atol=1e-6)


def test_seeded_draws_come_back_with_their_seed(vae: VAEClient) -> None:
    images = pixels(2)
    by_json = vae.encode([png(image) for image in images], sample=True, seed=9)
    by_npy = vae.encode(images, sample=True, seed=9)
    assert by_json.seed == by_npy.seed == 9
    assert by_json.z is not None and by_npy.z is not None
    np.testing.assert_allclose(by_npy.z, by_json.z, atol=1e-6)


def test_decode_sample_reconstruct_and_interpolate(
    vae: VAEClient, make_image: Callable[..., bytes]
) -> None:
    z = np.zeros((2, 4), np.float32)
    pngs = vae.decode(z).images
    assert isinstance(pngs, list) and len(pngs) == 2 and pngs[0].startswith(b"\x89PNG")
    array = vae.decode(z, as_array=True).images
    assert isinstance(array, np.ndarray) and array.shape == (2, 28, 28, 1)
    drawn = vae.sample(3, seed=5)
    assert drawn.seed == 5 and drawn.z is not None and drawn.z.shape == (3, 4)
    again = vae.sample(3, seed=5, as_array=True)
    assert again.seed == 5
    np.testing.assert_allclose(again.images, vae.decode(drawn.z, as_array=True).images, atol=1e-6)
    assert len(vae.reconstruct([make_image(seed=1)]).images) == 1
    assert vae.reconstruct(pixels(2)).images.shape == (2, 28, 28, 1)  # type: ignore[union-attr]
    line = vae.interpolate([0.0] * 4, [1.0] * 4, steps=5)
    assert line.z is not None and line.z.shape == (5, 4) and len(line.images) == 5
    assert len(vae.interpolate(make_image(seed=1), make_image(seed=2), steps=3).images) == 3


def test_errors_raise_with_status_and_detail(vae: VAEClient) -> None:
    with pytest.raises(VAEError) as err:
        vae.decode([[0.0, 1.0]])
    assert err.value.status_code == 422 and "latent_dim is 4" in str(err.value.detail)
    with pytest.raises(VAEError, match="HTTP 422"):
        vae.encode(np.zeros((1, 32, 32), np.uint8))


def test_async_client_speaks_the_same(server_url: str) -> None:
    async def main() -> None:
        async with AsyncVAEClient(server_url) as vae:
            assert await vae.ready()
            answers = await asyncio.gather(*(vae.encode(pixels(1 + i % 3)) for i in range(12)))
            assert [a.mean.shape[0] for a in answers] == [1 + i % 3 for i in range(12)]
            drawn = await vae.sample(2, seed=1, as_array=True)
            assert drawn.images.shape == (2, 28, 28, 1)  # type: ignore[union-attr]
            with pytest.raises(VAEError):
                await vae.sample(10_000)

    asyncio.run(main())

"""The Python client against a live server (uvicorn on a free port, tiny weights)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vae_service.client import AsyncVAEClient, VAEClient, VAEError
from vae_service.model import VAE, VAEConfig, save_weights
from vae_service.server.settings import Settings

ServeInThread = Callable[[Settings], contextlib.AbstractContextManager[str]]
ADMIN_KEY = "admin-key-for-tests"


@pytest.fixture
def server_url(api_settings: Settings, serve_in_thread: ServeInThread) -> Iterator[str]:
    with serve_in_thread(api_settings) as where:
        yield f"http://{where}"


def tiny_weights_file(folder: Path, name: str, config: VAEConfig, seed: int) -> Path:
    torch.manual_seed(seed)
    meta = {"data": {"name": "synthetic", "shape": [1, 28, 28]}, "training": {"epochs": 0}}
    return save_weights(folder / f"{name}.safetensors", VAE(config).eval(), meta)


@pytest.fixture
def model_dir(tmp_path: Path, tiny_config: VAEConfig) -> Path:
    """A repository of two tiny models with different weights: alpha and beta."""
    folder = tmp_path / "models"
    folder.mkdir()
    for seed, name in enumerate(("alpha", "beta")):
        tiny_weights_file(folder, name, tiny_config, seed)
    return folder


@pytest.fixture
def repository_url(
    api_settings: Settings, model_dir: Path, serve_in_thread: ServeInThread
) -> Iterator[str]:
    """A server of the repository, alpha the default, with an admin key; the folder is
    scanned once a minute, so that only reloads change what serves."""
    settings = Settings(
        **{
            **api_settings.model_dump(),
            "model_dir": model_dir,
            "default_model": "alpha",
            "model_poll_s": 60,
            "admin_keys": [ADMIN_KEY],
        }
    )
    with serve_in_thread(settings) as where:
        yield f"http://{where}"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def test_models_are_listed_and_described(repository_url: str, model_dir: Path) -> None:
    with VAEClient(repository_url) as vae:
        listing = vae.models()
        assert listing["default"] == "alpha"
        by_name = {entry["name"]: entry for entry in listing["models"]}
        assert sorted(by_name) == ["alpha", "beta"]
        for name, entry in by_name.items():
            assert entry["state"] == "ready" and entry["error"] is None
            assert entry["sha256"] == sha256_of(model_dir / f"{name}.safetensors")
            assert entry["latent_dim"] == 4 and entry["image_shape"] == [1, 28, 28]
        assert by_name["alpha"]["default"] and not by_name["beta"]["default"]
        info = vae.model_info("beta")
        assert info["name"] == "beta" and info["weights"] == "beta.safetensors"
        assert info["sha256"] == by_name["beta"]["sha256"]
        assert vae.model()["name"] == "alpha"  # unbound: the default model
        assert vae.for_model("beta").model() == info


def test_a_bound_client_is_answered_by_its_model(repository_url: str, model_dir: Path) -> None:
    images = pixels(2)
    with VAEClient(repository_url) as vae, VAEClient(repository_url, model="beta") as beta:
        alpha = vae.for_model("alpha")
        assert alpha.ready() and beta.ready()
        by_alpha, by_beta, by_default = (
            alpha.encode(images),
            beta.encode(images),
            vae.encode(images),
        )
        assert (by_alpha.model, by_beta.model, by_default.model) == ("alpha", "beta", "alpha")
        assert by_alpha.sha256 == sha256_of(model_dir / "alpha.safetensors")
        assert by_beta.sha256 == sha256_of(model_dir / "beta.safetensors")
        assert not np.allclose(by_alpha.mean, by_beta.mean)  # different weights
        np.testing.assert_array_equal(by_default.mean, by_alpha.mean)
        drawn = beta.sample(2, seed=3)  # JSON answers carry the headers too
        assert drawn.model == "beta" and drawn.sha256 == by_beta.sha256
        assert beta.decode(np.zeros((1, 4)), as_array=True).model == "beta"
        assert beta.reconstruct(images).model == "beta"
        assert beta.interpolate([0.0] * 4, [1.0] * 4, steps=2).model == "beta"
        alpha.close()  # a bound view leaves the shared connections open
        assert vae.health() == {"status": "ok"}


def test_an_unknown_model_is_a_404_naming_the_known_ones(repository_url: str) -> None:
    with VAEClient(repository_url) as vae:
        gamma = vae.for_model("gamma")
        for call in (gamma.model, lambda: gamma.encode(pixels(1)), lambda: gamma.sample(1)):
            with pytest.raises(VAEError) as err:
                call()
            assert err.value.status_code == 404
            assert "gamma" in str(err.value.detail) and "alpha, beta" in str(err.value.detail)
        assert gamma.ready() is False
        with pytest.raises(VAEError) as err:
            vae.reload("gamma", admin_key=ADMIN_KEY)
        assert err.value.status_code == 404
    with pytest.raises(ValueError, match="not a model name"):
        VAEClient(repository_url, model="..")


def test_reload_needs_an_admin_key(repository_url: str, server_url: str) -> None:
    with VAEClient(repository_url) as vae:
        for key in (None, "wrong"):
            with pytest.raises(VAEError) as err:
                vae.reload("beta", admin_key=key)
            assert err.value.status_code == 403 and "admin key" in str(err.value.detail)
    with VAEClient(server_url) as single, pytest.raises(VAEError) as err:
        single.reload(single.model()["name"], admin_key="any")  # no VAE_ADMIN_KEYS at all
    assert err.value.status_code == 403 and "VAE_ADMIN_KEYS" in str(err.value.detail)


def test_reload_swaps_in_a_new_file_and_keeps_the_old_on_a_bad_one(
    repository_url: str, model_dir: Path, tiny_config: VAEConfig
) -> None:
    beta_file = model_dir / "beta.safetensors"
    with VAEClient(repository_url, model="beta") as beta:
        old = beta.encode(pixels(1))
        tiny_weights_file(model_dir, "beta", tiny_config, seed=7)
        swapped = beta.reload("beta", admin_key=ADMIN_KEY)
        assert swapped["state"] == "ready" and swapped["sha256"] == sha256_of(beta_file)
        new = beta.encode(pixels(1))
        assert new.sha256 == swapped["sha256"] != old.sha256
        beta_file.write_bytes(b"not a safetensors file")
        with pytest.raises(VAEError) as err:
            beta.reload("beta", admin_key=ADMIN_KEY)
        assert err.value.status_code == 422 and "beta.safetensors" in str(err.value.detail)
        assert beta.encode(pixels(1)).sha256 == new.sha256  # the old version serves on
        (entry,) = [m for m in beta.models()["models"] if m["name"] == "beta"]
        assert entry["state"] == "ready" and "beta.safetensors" in entry["error"]


def test_async_client_binds_to_a_model(repository_url: str) -> None:
    async def main() -> None:
        async with AsyncVAEClient(repository_url, model="beta") as beta:
            assert await beta.ready()
            assert (await beta.model())["name"] == "beta"
            assert [m["name"] for m in (await beta.models())["models"]] == ["alpha", "beta"]
            assert (await beta.model_info("alpha"))["name"] == "alpha"
            answers = await asyncio.gather(
                beta.encode(pixels(1)), beta.for_model("alpha").sample(1)
            )
            assert [a.model for a in answers] == ["beta", "alpha"]
            with pytest.raises(VAEError) as err:
                await beta.reload("beta")
            assert err.value.status_code == 403

    asyncio.run(main())

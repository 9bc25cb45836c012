"""VAEClient.remote_decode and remote_encode (and the async client's) against the service
on uvicorn, serving tiny diffusers folders: each answer equals diffusers in process."""

from __future__ import annotations

import asyncio
import contextlib
import io
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.diffusers_vaes import settings, write_models
from vae_service.client import AsyncVAEClient, VAEClient, VAEError
from vae_service.server.settings import Settings

pytest.importorskip("diffusers")
Serve = Callable[[Settings], contextlib.AbstractContextManager[str]]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("client-remote-vaes")
    return folder, write_models(folder, ("sd", "flux", "tiny"))


@pytest.fixture(scope="module")
def where(models: Any, serve_in_thread: Serve) -> Iterator[str]:
    with serve_in_thread(settings(models[0], default_model="sd")) as host_port:
        yield f"http://{host_port}"


@pytest.fixture
def vae(where: str) -> Iterator[VAEClient]:
    with VAEClient(where) as client:
        yield client


def latents(channels: int, n: int = 1, h: int = 4, w: int = 6) -> np.ndarray:
    z = torch.randn((n, channels, h, w), generator=torch.Generator().manual_seed(5))
    return z.numpy()


def decoded(model: Any, z: np.ndarray, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    with torch.no_grad():
        return model.decode(torch.from_numpy(z) / scale + shift).sample.numpy()


def encoded(model: Any, x: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        out = model.encode(torch.from_numpy(x))
    return out.latent_dist.mode() if hasattr(out, "latent_dist") else out.latents


def test_decode_pt_equals_in_process(vae: VAEClient, models: Any) -> None:
    z = latents(4, n=2)
    out = vae.for_model("sd").remote_decode(z, scaling_factor=0.18215)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 3, 16, 24)
    np.testing.assert_allclose(out, decoded(models[1]["sd"], z, 0.18215), atol=1e-4, rtol=0)


def test_decode_default_model_own_factors_and_float16(vae: VAEClient, models: Any) -> None:
    z = latents(4)
    out = vae.remote_decode(z, do_scaling=True)  # the default model, sd, by its own factor
    np.testing.assert_allclose(out, decoded(models[1]["sd"], z, 0.18215), atol=1e-4, rtol=0)
    half = vae.remote_decode(z.astype(np.float16), do_scaling=True)
    assert half.dtype == np.float16  # answered in the latents' dtype
    expected = decoded(models[1]["sd"], z.astype(np.float16).astype(np.float32), 0.18215)
    np.testing.assert_allclose(half.astype(np.float32), expected, atol=2e-2, rtol=0)


def test_decode_partial_postprocess_and_pil(vae: VAEClient, models: Any) -> None:
    z = latents(4)
    tiny = vae.for_model("tiny")
    expected = decoded(models[1]["tiny"], z)
    as_uint8 = np.rint(np.clip(expected / 2 + 0.5, 0, 1) * 255).astype(int).transpose(0, 2, 3, 1)
    pixels = tiny.remote_decode(z, partial_postprocess=True)
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 16, 24, 3)
    assert np.abs(pixels.astype(int) - as_uint8).max() <= 1
    png = tiny.remote_decode(z, output_type="pil")
    assert isinstance(png, bytes) and png.startswith(b"\x89PNG")
    image = Image.open(io.BytesIO(png))
    assert image.size == (24, 16) and np.abs(np.asarray(image).astype(int) - as_uint8[0]).max() <= 1
    jpeg = tiny.remote_decode(z, output_type="pil", image_format="jpg")
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"


def test_decode_packed_flux_latents(vae: VAEClient, models: Any) -> None:
    z = latents(16, h=4, w=6)
    n, c, h, w = z.shape
    packed = z.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3, 5)
    packed = packed.reshape(n, (h // 2) * (w // 2), c * 4)
    out = vae.for_model("flux").remote_decode(
        packed, scaling_factor=0.3611, shift_factor=0.1159, height=8, width=12
    )
    expected = decoded(models[1]["flux"], z, 0.3611, 0.1159)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def test_encode_tensor_and_file_equal_in_process(vae: VAEClient, models: Any) -> None:
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand((2, 3, 16, 24), generator=gen) * 2 - 1).numpy()
    sd = vae.for_model("sd")
    z = sd.remote_encode(x, scaling_factor=0.18215)
    expected = encoded(models[1]["sd"], x).numpy() * 0.18215
    assert z.dtype == np.float32 and z.shape == (2, 4, 4, 6)
    np.testing.assert_allclose(z, expected, atol=1e-4, rtol=0)
    flux = vae.for_model("flux").remote_encode(x, scaling_factor=0.3611, shift_factor=0.1159)
    expected = (encoded(models[1]["flux"], x).numpy() - 0.1159) * 0.3611
    np.testing.assert_allclose(flux, expected, atol=1e-4, rtol=0)
    pixels = (np.clip(x[0] / 2 + 0.5, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    from_file = sd.remote_encode(png.getvalue())
    exact = (pixels.astype(np.float32) / 255 * 2 - 1).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(from_file, encoded(models[1]["sd"], exact), atol=1e-4, rtol=0)


def test_encode_sample_is_seeded(vae: VAEClient, models: Any) -> None:
    x = (torch.rand((1, 3, 16, 16), generator=torch.Generator().manual_seed(3)) * 2 - 1).numpy()
    z = vae.remote_encode(x, sample=True, seed=7)
    with torch.no_grad():
        drawn = models[1]["sd"].encode(torch.from_numpy(x)).latent_dist
        expected = drawn.sample(torch.Generator().manual_seed(7)).numpy()
    np.testing.assert_allclose(z, expected, atol=1e-4, rtol=0)


def test_errors_raise_vae_error(vae: VAEClient) -> None:
    with pytest.raises(VAEError) as caught:
        vae.for_model("sd").remote_decode(latents(16))  # 16 channels for a 4-channel model
    assert caught.value.status_code == 422 and "channels" in str(caught.value.detail)
    with pytest.raises(VAEError) as caught:
        vae.for_model("tiny").remote_encode(np.zeros((1, 3, 16, 16), np.float32), sample=True)
    assert caught.value.status_code == 422
    with pytest.raises(ValueError, match="output_type"):
        vae.remote_decode(latents(4), output_type="mp4")  # type: ignore[call-overload]
    assert vae.remote_decode(latents(4)).shape == (1, 3, 16, 24)  # still serving


def test_async_client_equals_in_process(where: str, models: Any) -> None:
    z = latents(4)
    x = (torch.rand((1, 3, 16, 24), generator=torch.Generator().manual_seed(4)) * 2 - 1).numpy()

    async def main() -> tuple[np.ndarray, bytes, np.ndarray]:
        async with AsyncVAEClient(where, model="sd") as vae:
            return await asyncio.gather(
                vae.remote_decode(z, scaling_factor=0.18215),
                vae.remote_decode(z, scaling_factor=0.18215, output_type="pil"),
                vae.remote_encode(x),
            )

    images, png, z_out = asyncio.run(main())
    model = models[1]["sd"]
    np.testing.assert_allclose(images, decoded(model, z, 0.18215), atol=1e-4, rtol=0)
    assert Image.open(io.BytesIO(png)).size == (24, 16)
    np.testing.assert_allclose(z_out, encoded(model, x), atol=1e-4, rtol=0)


def test_client_needs_no_torch() -> None:
    code = (
        "import sys; import vae_service.client; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'PIL' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

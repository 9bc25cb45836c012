"""diffusers' own remote_decode and remote_encode, unchanged, against the service on
uvicorn; and every bad input the wire format can carry, each its own clear 4xx, after
which the server still serves."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import make_tiny_model, save_tiny_weights
from tests.diffusers_vaes import raw, settings, write_models
from vae_service.server.settings import Settings

remote = pytest.importorskip("diffusers.utils.remote_utils")
Serve = Callable[[Settings], contextlib.AbstractContextManager[str]]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The diffusers models, and one of this service's own VAEs as "ours"."""
    folder = tmp_path_factory.mktemp("remote-vaes")
    ours = make_tiny_model()
    save_tiny_weights(folder, ours).rename(folder / "ours.safetensors")
    return folder, write_models(folder) | {"ours": ours}


@pytest.fixture(scope="module")
def where(models: Any, serve_in_thread: Serve) -> Iterator[str]:
    with serve_in_thread(settings(models[0], default_model="sd")) as host_port:
        yield f"http://{host_port}"


def decoded(model: Any, z: torch.Tensor, scale: float, shift: float = 0.0) -> torch.Tensor:
    with torch.no_grad():
        return model.decode(z / scale + shift).sample


def as_uint8(images: torch.Tensor) -> np.ndarray:
    return (
        ((images / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    )


def latents(channels: int, n: int = 1, h: int = 4, w: int = 6) -> torch.Tensor:
    return torch.randn((n, channels, h, w), generator=torch.Generator().manual_seed(5))


def test_decode_pt_float32_equals_in_process(where: str, models: Any) -> None:
    z, model = latents(4, n=2), models[1]["sd"]
    out = remote.remote_decode(
        f"{where}/models/sd/remote-decode",
        z,
        scaling_factor=0.18215,
        output_type="pt",
        return_type="pt",
    )
    torch.testing.assert_close(out, decoded(model, z, 0.18215), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_pt_half_dtypes_answer_in_kind(where: str, models: Any, dtype: torch.dtype) -> None:
    z = latents(4).to(dtype)
    out = remote.remote_decode(f"{where}/remote-decode", z, output_type="pt", return_type="pt")
    assert out.dtype == dtype  # the default model (sd), scaled by its own factor (do_scaling)
    expected = decoded(models[1]["sd"], z.float(), 0.18215)
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=0)


def test_decode_partial_postprocess_is_uint8_nhwc(where: str, models: Any) -> None:
    z = latents(4)
    out = remote.remote_decode(
        f"{where}/models/sd/remote-decode",
        z,
        scaling_factor=0.18215,
        output_type="pt",
        partial_postprocess=True,
        return_type="pt",
    )
    assert out.dtype == torch.uint8 and tuple(out.shape) == (1, 16, 24, 3)
    expected = as_uint8(decoded(models[1]["sd"], z, 0.18215))
    assert np.abs(out.numpy().astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("image_format", ["png", "jpg"])
def test_decode_pil(where: str, models: Any, image_format: str) -> None:
    z = latents(4)
    image = remote.remote_decode(
        f"{where}/models/tiny/remote-decode", z, do_scaling=False, image_format=image_format
    )
    assert image.size == (24, 16) and image.format == ("png" if image_format == "png" else "jpeg")
    if image_format == "png":
        expected = as_uint8(decoded(models[1]["tiny"], z, 1.0))[0]
        assert np.abs(np.asarray(image).astype(int) - expected.astype(int)).max() <= 1


def pack(z: torch.Tensor) -> torch.Tensor:
    """FLUX's _pack_latents."""
    n, c, h, w = z.shape
    z = z.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(n, (h // 2) * (w // 2), c * 4)


def test_decode_packed_flux_latents(where: str, models: Any) -> None:
    z = latents(16, h=4, w=6)
    out = remote.remote_decode(
        f"{where}/models/flux/remote-decode",
        pack(z),
        scaling_factor=0.3611,
        shift_factor=0.1159,
        output_type="pt",
        return_type="pt",
        height=8,
        width=12,
    )
    expected = decoded(models[1]["flux"], z, 0.3611, 0.1159)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_encode_tensor_and_pil(where: str, models: Any) -> None:
    model = models[1]["stats"]
    x = torch.rand((1, 3, 16, 16), generator=torch.Generator().manual_seed(6)) * 2 - 1
    z = remote.remote_encode(f"{where}/models/stats/remote-encode", x, scaling_factor=0.5)
    with torch.no_grad():
        mode = model.encode(x).latent_dist.mode()
    torch.testing.assert_close(z, mode * 0.5, atol=1e-4, rtol=0)
    pixels = as_uint8(x)[0]
    z = remote.remote_encode(f"{where}/models/stats/remote-encode", Image.fromarray(pixels))
    with torch.no_grad():
        image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255 * 2 - 1
        torch.testing.assert_close(z, model.encode(image).latent_dist.mode(), atol=1e-4, rtol=0)
    half = remote.remote_encode(f"{where}/models/tiny/remote-encode", x.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16 and tuple(half.shape) == (1, 4, 4, 4)


def post(where: str, path: str, body: bytes, **params: Any) -> httpx.Response:
    return httpx.post(f"{where}{path}", content=body, params=params, timeout=10)


def refused(reply: httpx.Response, status: int, words: str) -> None:
    assert reply.status_code == status, reply.text
    assert words in str(reply.json()["detail"]), reply.json()


ZEROS = raw(torch.zeros((1, 4, 4, 4)))
DECODE = "/models/sd/remote-decode"
ENCODE = "/models/sd/remote-encode"
# (path, body, params) -> (status, words in the detail)
BAD_INPUTS: dict[str, tuple[str, bytes, dict[str, Any], int, str]] = {
    "unknown dtype": (DECODE, ZEROS, {"shape": [1, 4, 4, 4], "dtype": "int8"}, 422, "dtype"),
    "wrong channels": (DECODE, ZEROS, {"shape": [1, 16, 2, 2]}, 422, "16 channels"),
    "zero dim": (DECODE, ZEROS, {"shape": [1, 4, 0, 4]}, 422, "greater than or equal to 1"),
    "negative dim": (DECODE, ZEROS, {"shape": [1, 4, -4, 4]}, 422, "greater than or equal to 1"),
    "one dim": (DECODE, ZEROS, {"shape": [64]}, 422, "at least 2"),
    "two dims": (DECODE, ZEROS, {"shape": [1, 64]}, 422, "N x C x h x w"),
    "bytes short": (DECODE, ZEROS[:-4], {"shape": [1, 4, 4, 4]}, 422, "the body has 252"),
    "huge latent": (DECODE, ZEROS, {"shape": [1, 4, 100_000, 100_000]}, 422, "pixels per image"),
    "huge claim": (ENCODE, ZEROS, {"shape": [4, 3, 128, 128]}, 413, "VAE_MAX_BODY_BYTES"),
    "non-finite": (
        DECODE,
        raw(torch.full((1, 4, 4, 4), float("nan"))),
        {"shape": [1, 4, 4, 4]},
        422,
        "finite",
    ),
    "packed, no size": (DECODE, ZEROS, {"shape": [1, 4, 16]}, 422, "height and width"),
    "packed, wrong size": (
        DECODE,
        ZEROS,
        {"shape": [1, 4, 16], "height": 8, "width": 8},
        422,
        "packed latents",
    ),
    "pil of two": (DECODE, ZEROS, {"shape": [2, 4, 2, 2]}, 422, "one image"),
    "too many": (
        DECODE,
        raw(torch.zeros((5, 4, 1, 1))),
        {"shape": [5, 4, 1, 1]},
        422,
        "limit is 4",
    ),
    "not a multiple": (
        ENCODE,
        raw(torch.zeros((1, 3, 6, 8))),
        {"shape": [1, 3, 6, 8]},
        422,
        "multiple of 4",
    ),
    "outside [-1, 1]": (
        ENCODE,
        raw(torch.full((1, 3, 4, 4), 2.0)),
        {"shape": [1, 3, 4, 4]},
        422,
        "[0, 1]",
    ),
    "not an image": (ENCODE, b"not an image", {}, 400, "not an image file"),
    "mp4": (DECODE, ZEROS, {"shape": [1, 4, 4, 4], "output_type": "mp4"}, 422, "output_type"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_a_clear_4xx(where: str, case: str) -> None:
    path, body, params, status, words = BAD_INPUTS[case]
    started = time.monotonic()
    refused(post(where, path, body, **params), status, words)
    assert time.monotonic() - started < 2  # nothing was allocated for a claimed size


def test_image_file_not_a_multiple_and_body_limit(where: str) -> None:
    png = io.BytesIO()
    Image.new("RGB", (10, 8)).save(png, format="PNG")
    refused(post(where, ENCODE, png.getvalue()), 422, "10")
    reply = post(where, ENCODE, bytes(300 * 1024), shape=[1, 3, 160, 160])
    assert reply.status_code == 413


def test_client_sees_errors_and_server_keeps_serving(where: str) -> None:
    with pytest.raises(RuntimeError, match="channels"):
        remote.remote_decode(
            f"{where}/remote-decode", latents(16), output_type="pt", return_type="pt"
        )
    out = remote.remote_decode(
        f"{where}/remote-decode", latents(4), output_type="pt", return_type="pt"
    )
    assert tuple(out.shape) == (1, 3, 16, 24)


# ---------------------------------------------------------------- our own VAEs (N x D)

OURS_DECODE, OURS_ENCODE = "/models/ours/remote-decode", "/models/ours/remote-encode"


def test_ours_decode_pt_and_pil_equal_in_process(where: str, models: Any) -> None:
    model = models[1]["ours"]
    z = torch.randn((2, model.cfg.latent_dim), generator=torch.Generator().manual_seed(7))
    out = remote.remote_decode(
        f"{where}{OURS_DECODE}", z, scaling_factor=2.0, output_type="pt", return_type="pt"
    )
    with torch.no_grad():
        expected = model.decode(z / 2.0) * 2 - 1  # our images are [0, 1]; the wire's [-1, 1]
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    image = remote.remote_decode(f"{where}{OURS_DECODE}", z[:1], image_format="png")
    size = model.cfg.image_size
    assert image.size == (size, size)
    grey = np.asarray(image)[..., 0]  # diffusers' client converts every image to RGB
    assert np.abs(grey.astype(int) - as_uint8(expected[:1])[0, ..., 0]).max() <= 1


def test_ours_encode_tensor_file_and_sample(where: str, models: Any) -> None:
    model, size = models[1]["ours"], models[1]["ours"].cfg.image_size
    x = torch.rand((2, 1, size, size), generator=torch.Generator().manual_seed(8))
    z = remote.remote_encode(f"{where}{OURS_ENCODE}", x * 2 - 1)
    with torch.no_grad():
        mean, _ = model.encode(x)
    torch.testing.assert_close(z, mean, atol=1e-4, rtol=0)
    pixels = (x[0, 0] * 255).round().to(torch.uint8).numpy()
    from_file = remote.remote_encode(f"{where}{OURS_ENCODE}", Image.fromarray(pixels))
    assert tuple(from_file.shape) == (1, model.cfg.latent_dim)
    params = {"shape": [2, 1, size, size], "sample": "true", "seed": 3}
    draws = [post(where, OURS_ENCODE, raw(x * 2 - 1), **params) for _ in range(2)]
    assert draws[0].status_code == 200 and draws[0].headers["X-Seed"] == "3"
    assert draws[0].content == draws[1].content != raw(mean)


OURS_BAD: dict[str, tuple[str, bytes, dict[str, Any], str]] = {
    "4-D latents": (OURS_DECODE, ZEROS, {"shape": [1, 4, 4, 4]}, "are N x 4"),
    "packed latents": (OURS_DECODE, ZEROS, {"shape": [1, 4, 16], "height": 8}, "are N x 4"),
    "wrong latent dim": (OURS_DECODE, ZEROS, {"shape": [1, 64]}, "are N x 4"),
    "tile": (OURS_DECODE, raw(torch.zeros(1, 4)), {"shape": [1, 4], "tile": "true"}, "cannot tile"),
    "wrong image size": (
        OURS_ENCODE,
        raw(torch.zeros(1, 1, 8, 8)),
        {"shape": [1, 1, 8, 8]},
        "takes N x 1 x 28 x 28",
    ),
}


@pytest.mark.parametrize("case", sorted(OURS_BAD))
def test_ours_bad_input_gets_a_clear_422(where: str, models: Any, case: str) -> None:
    path, body, params, words = OURS_BAD[case]  # the tiny config: N x 4 latents, 28 x 28
    refused(post(where, path, body, **params), 422, words)

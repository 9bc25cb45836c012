"""The Open Inference Protocol on diffusers models, through the real ``tritonclient``:
the encoder and decoder of an AutoencoderKL and an AutoencoderTiny folder, their
metadata (any image size: -1), answers equal to diffusers in process (fp32, within
1e-4), and each bad shape refused before any model work."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.diffusers_vaes import settings, write_models
from vae_service.server.settings import Settings

triton = pytest.importorskip("tritonclient.http")
Serve = Callable[[Settings], contextlib.AbstractContextManager[str]]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("oip-diffusers")
    return folder, write_models(folder, ("sd", "tiny"))


@pytest.fixture(scope="module")
def address(models: Any, serve_in_thread: Serve) -> Iterator[str]:
    with serve_in_thread(settings(models[0], default_model="sd")) as where:
        yield where


@pytest.fixture(scope="module")
def client(address: str) -> Iterator[Any]:
    with contextlib.closing(triton.InferenceServerClient(address)) as tc:
        yield tc


def pixels(n: int = 2, h: int = 16, w: int = 24) -> np.ndarray:
    return np.random.default_rng(1).random((n, 3, h, w), dtype=np.float32)


def infer(client: Any, model: str, name: str, array: np.ndarray, *outputs: str) -> Any:
    tensor = triton.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    wanted = [triton.InferRequestedOutput(o) for o in outputs] or None
    return client.infer(model, [tensor], outputs=wanted)


def test_metadata_takes_any_image_size(client: Any) -> None:
    meta = client.get_model_metadata("sd-encoder")
    assert meta["inputs"][0]["shape"] == [-1, 3, -1, -1]
    assert [(o["name"], o["shape"]) for o in meta["outputs"]] == [
        (name, [-1, 4, -1, -1]) for name in ("mean", "logvar", "z")
    ]
    tiny = client.get_model_metadata("tiny-encoder")
    assert [o["name"] for o in tiny["outputs"]] == ["mean"]  # no posterior
    assert client.get_model_metadata("tiny-decoder")["inputs"][0]["shape"] == [-1, 4, -1, -1]


def test_encode_and_decode_equal_in_process(client: Any, models: Any) -> None:
    model, x = models[1]["sd"], pixels()
    result = infer(client, "sd-encoder", "images", x)
    with torch.no_grad():
        posterior = model.encode(torch.from_numpy(x) * 2 - 1).latent_dist
    np.testing.assert_allclose(result.as_numpy("mean"), posterior.mean.numpy(), atol=1e-4)
    np.testing.assert_allclose(result.as_numpy("logvar"), posterior.logvar.numpy(), atol=1e-4)
    z = posterior.mean.numpy()
    images = infer(client, "sd-decoder", "z", z).as_numpy("images")
    with torch.no_grad():
        expected = (model.decode(torch.from_numpy(z)).sample + 1) / 2
    np.testing.assert_allclose(images, expected.clamp(0, 1).numpy(), atol=1e-4)


def test_tiny_encodes_image_files(client: Any, models: Any) -> None:
    grid = (pixels(1)[0].transpose(1, 2, 0) * 255).round().astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(grid).save(out, format="PNG")
    tensor = triton.InferInput("images", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([out.getvalue()], dtype=np.object_))
    latents = client.infer("tiny-encoder", [tensor]).as_numpy("mean")
    with torch.no_grad():
        x = torch.from_numpy(grid).permute(2, 0, 1)[None].float() / 255 * 2 - 1
        expected = models[1]["tiny"].encode(x).latents
    np.testing.assert_allclose(latents, expected.numpy(), atol=1e-4)


def test_z_draw_is_seeded(address: str) -> None:
    x = pixels(1)
    body = {
        "inputs": [
            {
                "name": "images",
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": x.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "z", "parameters": {"seed": 5}}],
    }
    replies = [
        httpx.post(f"http://{address}/v2/models/sd-encoder/infer", json=body) for _ in range(2)
    ]
    assert replies[0].status_code == 200 and replies[0].json()["parameters"] == {"seed": 5}
    assert replies[0].json()["outputs"] == replies[1].json()["outputs"]


BAD: dict[str, tuple[str, str, list[int], int, str]] = {
    "not a multiple of 4": ("sd-encoder", "images", [1, 3, 10, 8], 422, "multiple of 4"),
    "wrong image channels": ("sd-encoder", "images", [1, 1, 16, 16], 400, "shape"),
    "wrong latent channels": ("sd-decoder", "z", [1, 16, 2, 2], 400, "shape"),
    "latents over the pixel limit": ("sd-decoder", "z", [1, 4, 100_000, 100_000], 422, "pixels"),
    "images over the pixel limit": ("sd-encoder", "images", [1, 3, 40_000, 40_000], 422, "pixels"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_shape_is_refused_before_its_data(address: str, case: str) -> None:
    model, name, shape, status, words = BAD[case]
    body = {"inputs": [{"name": name, "datatype": "FP32", "shape": shape, "data": [0.0]}]}
    reply = httpx.post(f"http://{address}/v2/models/{model}/infer", json=body, timeout=10)
    assert reply.status_code == status and words in reply.json()["error"], reply.text

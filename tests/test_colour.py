"""Colour end to end (issue 17): a 64x64 RGB model of the shapes architecture, randomly
initialised, through the app's real lifespan. Every kind of input file is converted to
the pixels the rules in server/imaging.py promise, every image answer is an RGB PNG, and
a grey 28x28 model serves beside it from one VAE_MODEL_DIR."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import settings_for
from vae_service.model import VAE, VAEConfig, save_weights
from vae_service.server.imaging import decode_image
from vae_service.server.main import create_app

SIZE = 64
SHAPES = VAEConfig(
    image_size=SIZE, channels=3, latent_dim=10, widths=(16, 32, 64, 64), hidden_dim=256
)
NPY = {"content-type": "application/x-npy"}
ORANGE = (200, 100, 50)
HALF_ORANGE = (100, 50, 25)  # ORANGE at alpha 128 over black: v * 128 / 255, rounded


def save_rgb_weights(folder: Path, name: str = "shapes") -> Path:
    torch.manual_seed(0)
    meta = {
        "data": {"name": "synthetic", "shape": [3, SIZE, SIZE]},
        "training": {"epochs": 0, "note": "random init for tests"},
    }
    return save_weights(folder / f"{name}.safetensors", VAE(SHAPES).eval(), meta)


@pytest.fixture(scope="module")
def rgb_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_rgb_weights(tmp_path_factory.mktemp("rgb"))


@pytest.fixture(scope="module")
def rgb_client(rgb_weights: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(rgb_weights)), raise_server_exceptions=False) as c:
        yield c


# --- input files and the pixels they must become --------------------------------------


def png(img: Image.Image, **options: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG", **options)
    return out.getvalue()


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def banded(*colours: tuple[int, ...]) -> np.ndarray:
    """SIZE x SIZE x len(colour) uint8 pixels: one vertical band per colour, left to right."""
    pixels = np.zeros((SIZE, SIZE, len(colours[0])), np.uint8)
    for columns, colour in zip(np.array_split(np.arange(SIZE), len(colours)), colours, strict=True):
        pixels[:, columns] = colour
    return pixels


def grey_levels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)


def as_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def palette_file(transparency: bytes | None) -> tuple[bytes, np.ndarray]:
    """Random palette colours at random indices, or three bands: opaque, half, clear."""
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    if transparency is not None:
        palette[:3] = [(10, 20, 30), ORANGE, (255, 255, 255)]
        indices = banded((0,), (1,), (2,))[..., 0]
    img = Image.frombytes("P", (SIZE, SIZE), np.ascontiguousarray(indices).tobytes())
    img.putpalette(palette.tobytes())
    if transparency is None:
        return png(img), palette[indices]
    return png(img, transparency=transparency), banded((10, 20, 30), HALF_ORANGE, (0, 0, 0))


def input_cases() -> dict[str, tuple[bytes, np.ndarray]]:
    """Mode -> (a PNG of that mode, the SIZE x SIZE x 3 pixels an RGB model must see)."""
    rgb = np.random.default_rng(2).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    grey = grey_levels()
    return {
        "RGB": (png(Image.fromarray(rgb)), rgb),
        "RGBA": (
            png(Image.fromarray(banded((*ORANGE, 255), (*ORANGE, 128), (*ORANGE, 0)))),
            banded(ORANGE, HALF_ORANGE, (0, 0, 0)),
        ),
        "L": (png(Image.fromarray(grey)), as_rgb(grey)),
        "LA": (
            png(Image.fromarray(banded((200, 255), (200, 128), (200, 0)))),
            banded((200,) * 3, (100,) * 3, (0,) * 3),
        ),
        "P": palette_file(None),
        "P with transparency": palette_file(bytes([255, 128, 0])),
        # 16-bit level g * 257 is 8-bit level g exactly: scaled, not clipped at 255
        "I;16": (png(Image.fromarray(grey.astype(np.uint16) * 257)), as_rgb(grey)),
    }


CASES = input_cases()


@pytest.mark.parametrize("mode", CASES)
def test_every_mode_gives_the_promised_rgb_pixels(mode: str) -> None:
    blob, expected = CASES[mode]
    assert Image.open(io.BytesIO(blob)).mode == mode.split()[0]
    pixels = decode_image(blob, SIZE, 3, SIZE * SIZE)
    assert pixels.shape == (3, SIZE, SIZE)
    np.testing.assert_array_equal(np.rint(pixels * 255).transpose(1, 2, 0), expected)


def test_a_half_transparent_pixel_is_composited_on_black() -> None:
    blob = png(Image.new("RGBA", (SIZE, SIZE), (*ORANGE, 128)))
    pixel = decode_image(blob, SIZE, 3, SIZE * SIZE)[:, 0, 0]
    np.testing.assert_allclose(pixel, np.array(ORANGE) * 128 / 255 / 255, atol=0.5 / 255)


def encoded(client: TestClient, blob: bytes, prefix: str = "") -> dict[str, Any]:
    reply = client.post(f"{prefix}/encode", json={"images": [b64(blob)]})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


@pytest.mark.parametrize("mode", CASES)
def test_encode_accepts_every_mode_as_its_rgb_pixels(rgb_client: TestClient, mode: str) -> None:
    blob, expected = CASES[mode]
    got, want = encoded(rgb_client, blob), encoded(rgb_client, png(Image.fromarray(expected)))
    assert len(got["mean"][0]) == SHAPES.latent_dim
    np.testing.assert_allclose(got["mean"], want["mean"], atol=1e-6)
    np.testing.assert_allclose(got["logvar"], want["logvar"], atol=1e-6)


def test_a_grey_model_sees_colour_as_luma(client: TestClient) -> None:
    """The conftest's 28x28 grey model: (200, 100, 50) is grey 124 (ITU-R 601-2 luma)."""
    colour = png(Image.new("RGB", (28, 28), ORANGE))
    assert np.rint(decode_image(colour, 28, 1, 28 * 28) * 255).max() == 124
    got, want = encoded(client, colour), encoded(client, png(Image.new("L", (28, 28), 124)))
    np.testing.assert_allclose(got["mean"], want["mean"], atol=1e-6)


# --- colour out ------------------------------------------------------------------------


def image_call(client: TestClient, route: str, fmt: str, prefix: str = "") -> Any:
    """A valid request to a route that answers images, in ``fmt`` (json, png or npy)."""
    url, z = f"{prefix}/{route}?format={fmt}", np.linspace(-1, 1, SHAPES.latent_dim)
    if route == "sample":
        return client.get(f"{url}&n=3&seed=4")
    if route == "decode":
        return client.post(url, json={"z": [z.tolist(), (-z).tolist()]})
    if route == "interpolate":
        return client.post(f"{url}&steps=3", json={"z": [z.tolist(), (-z).tolist()]})
    return client.post(url, json={"images": [b64(CASES["RGB"][0]), b64(CASES["L"][0])]})


ROUTES = ["sample", "decode", "interpolate", "reconstruct"]


def opened(blob: bytes) -> Image.Image:
    return Image.open(io.BytesIO(blob))


def colourful(pixels: np.ndarray) -> bool:
    """Some pixel whose channels differ: not grey stored as RGB."""
    return bool(
        (pixels[..., 0] != pixels[..., 1]).any() or (pixels[..., 1] != pixels[..., 2]).any()
    )


@pytest.mark.parametrize("route", ROUTES)
def test_json_answers_carry_rgb_pngs(rgb_client: TestClient, route: str) -> None:
    reply = image_call(rgb_client, route, "json")
    assert reply.status_code == 200, reply.text
    images = [opened(base64.b64decode(text)) for text in reply.json()["images"]]
    assert len(images) >= 2
    assert {(i.format, i.mode, i.size) for i in images} == {("PNG", "RGB", (SIZE, SIZE))}
    assert any(colourful(np.asarray(i)) for i in images)


@pytest.mark.parametrize("route", ROUTES)
def test_png_answers_are_rgb(rgb_client: TestClient, route: str) -> None:
    reply = image_call(rgb_client, route, "png")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "image/png"
    grid = opened(reply.content)
    assert grid.mode == "RGB" and grid.width > SIZE  # a grid or a row of 64x64 images
    assert colourful(np.asarray(grid)), "the colour model's images came out grey"


@pytest.mark.parametrize("route", ROUTES)
def test_npy_answers_are_rgb(rgb_client: TestClient, route: str) -> None:
    reply = image_call(rgb_client, route, "npy")
    assert reply.status_code == 200, reply.text
    array = np.load(io.BytesIO(reply.content), allow_pickle=False)
    assert array.shape[1:] == (SIZE, SIZE, 3)


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def test_npy_in_either_layout_encodes_like_the_same_pngs(rgb_client: TestClient) -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    by_png = rgb_client.post(
        "/encode", json={"images": [b64(png(Image.fromarray(i))) for i in rgb]}
    )
    for layout in (rgb, rgb.transpose(0, 3, 1, 2)):  # N x H x W x 3, N x 3 x H x W
        reply = rgb_client.post("/encode", content=npy(np.ascontiguousarray(layout)), headers=NPY)
        assert reply.status_code == 200, reply.text
        np.testing.assert_allclose(reply.json()["mean"], by_png.json()["mean"], atol=1e-6)


# --- a grey and a colour model side by side ---------------------------------------------


@pytest.fixture(scope="module")
def shelf_client(
    tmp_path_factory: pytest.TempPathFactory, served_weights: Path, rgb_weights: Path
) -> Iterator[TestClient]:
    """VAE_MODEL_DIR with fashion-mnist (1x28x28, the default) and shapes (3x64x64)."""
    folder = tmp_path_factory.mktemp("colour-shelf")
    shutil.copy(served_weights, folder / "fashion-mnist.safetensors")
    shutil.copy(rgb_weights, folder / "shapes.safetensors")
    settings = settings_for(folder / "unused.safetensors").model_copy(update={"model_dir": folder})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_models_lists_the_grey_and_the_colour_model(shelf_client: TestClient) -> None:
    reply = shelf_client.get("/models").json()
    shapes = {m["name"]: (m["state"], m["image_shape"]) for m in reply["models"]}
    assert shapes == {"fashion-mnist": ("ready", [1, 28, 28]), "shapes": ("ready", [3, 64, 64])}
    assert reply["default"] == "fashion-mnist"


def test_each_model_encodes_its_own_kind_of_input(
    shelf_client: TestClient, make_image: Callable[..., bytes]
) -> None:
    grey = encoded(shelf_client, make_image(28, 28, "L"), "/models/fashion-mnist")
    colour = encoded(shelf_client, CASES["RGBA"][0], "/models/shapes")
    assert len(grey["mean"][0]) == 4 and len(colour["mean"][0]) == SHAPES.latent_dim
    arrays = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    reply = shelf_client.post("/models/shapes/encode", content=npy(arrays), headers=NPY)
    assert reply.status_code == 200, reply.text
    # arrays are not resized: the grey model's own size is checked, not the colour one's
    reply = shelf_client.post("/models/fashion-mnist/encode", content=npy(arrays), headers=NPY)
    assert reply.status_code == 422 and "28×28" in reply.text


def test_each_model_samples_its_own_mode(shelf_client: TestClient) -> None:
    modes = {}
    for name in ("fashion-mnist", "shapes"):
        reply = shelf_client.get(f"/models/{name}/sample?n=1&seed=0&format=png")
        assert reply.status_code == 200, reply.text
        modes[name] = (opened(reply.content).mode, opened(reply.content).size)
    assert modes == {"fashion-mnist": ("L", (28, 28)), "shapes": ("RGB", (SIZE, SIZE))}

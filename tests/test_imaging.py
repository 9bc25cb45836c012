"""Image files to tensors and back: formats, modes, sizes, and refusals."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from vae_service.server.errors import BadImage, Unprocessable
from vae_service.server.imaging import (
    GRID_PAD,
    decode_image,
    decode_images,
    encode_grid_png,
    encode_pngs,
)

MAX_PIXELS = 1_000_000


def save(img: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **options)
    return out.getvalue()


def decode(blob: bytes, channels: int = 1, size: int = 28) -> np.ndarray:
    return decode_image(blob, size, channels, MAX_PIXELS)


def with_declared_size(png: bytes, width: int, height: int) -> bytes:
    """The same PNG with its IHDR rewritten (and re-checksummed) to claim another size."""
    ihdr_data = struct.pack(">II", width, height) + png[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr_data))
    return png[:16] + ihdr_data + crc + png[33:]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_common_format_decodes_to_model_shape(
    fmt: str, make_image: Callable[..., bytes]
) -> None:
    array = decode(make_image(40, 30, "RGB" if fmt != "GIF" else "P", fmt), channels=1)
    assert array.shape == (1, 28, 28)
    assert array.dtype == np.float32
    assert array.min() >= 0.0 and array.max() <= 1.0


def test_grey_image_becomes_three_channels_for_an_rgb_model(
    make_image: Callable[..., bytes],
) -> None:
    array = decode(make_image(28, 28, "L"), channels=3)
    assert array.shape == (3, 28, 28)
    assert np.array_equal(array[0], array[1]) and np.array_equal(array[1], array[2])


def test_pixels_are_scaled_to_unit_range_exactly() -> None:
    pixels = np.arange(28 * 28, dtype=np.uint32).reshape(28, 28) % 256
    array = decode(save(Image.fromarray(pixels.astype(np.uint8))))
    assert np.allclose(array[0], pixels / 255.0)


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    img = Image.fromarray(np.full((28, 28), 32768, dtype=np.uint16))
    assert img.mode == "I;16"
    array = decode(save(img))
    assert array[0, 0, 0] == pytest.approx(128 / 255, abs=1 / 255)


def test_cmyk_jpeg_is_converted(make_image: Callable[..., bytes]) -> None:
    white = Image.new("CMYK", (28, 28), (0, 0, 0, 0))
    assert decode(save(white, "JPEG"), channels=3).min() > 0.95


def test_transparent_pixels_become_black() -> None:
    rgba = Image.new("RGBA", (28, 28), (255, 255, 255, 0))
    rgba.paste((255, 255, 255, 255), (0, 0, 14, 28))
    array = decode(save(rgba))
    assert array[0, :, :10].min() > 0.99 and array[0, :, 18:].max() < 0.01


def test_palette_with_transparency_is_composited_on_black() -> None:
    img = Image.new("P", (28, 28), 1)
    img.putpalette([255, 255, 255, 200, 200, 200] + [0] * 762)
    img.info["transparency"] = 1
    blob = save(img, transparency=1)
    assert decode(blob).max() < 0.01


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("L", (28, 28), v) for v in (255, 0, 0)]
    blob = save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert decode(blob).min() > 0.99


def test_one_pixel_image_is_resized() -> None:
    array = decode(save(Image.new("L", (1, 1), 255)))
    assert array.shape == (1, 28, 28) and array.min() > 0.99


def test_images_are_stacked_in_order(make_image: Callable[..., bytes]) -> None:
    blobs = [make_image(seed=i) for i in range(3)]
    batch = decode_images(blobs, 28, 1, MAX_PIXELS)
    assert batch.shape == (3, 1, 28, 28)
    assert np.array_equal(batch[2], decode(blobs[2]))


def test_empty_file_is_a_bad_image() -> None:
    with pytest.raises(BadImage, match="empty"):
        decode(b"")


def test_text_is_a_bad_image() -> None:
    with pytest.raises(BadImage, match="not an image"):
        decode(b"hello, I am not a picture")


def test_truncated_png_is_a_bad_image(make_image: Callable[..., bytes]) -> None:
    blob = make_image(64, 64)
    with pytest.raises(BadImage, match="could not be decoded"):
        decode(blob[: len(blob) // 2])


def test_bad_image_names_its_position(make_image: Callable[..., bytes]) -> None:
    with pytest.raises(BadImage, match=r"images\[1\]"):
        decode_images([make_image(), b"junk"], 28, 1, MAX_PIXELS)


def test_declared_size_over_limit_is_refused_before_decoding(
    make_image: Callable[..., bytes],
) -> None:
    bomb = with_declared_size(make_image(8, 8), 50_000, 50_000)
    with pytest.raises(Unprocessable, match="pixels; the limit is"):
        decode(bomb)


def test_size_just_over_limit_is_refused() -> None:
    with pytest.raises(Unprocessable, match="limit is 100"):
        decode_image(save(Image.new("L", (11, 10))), 28, 1, 100)


def test_png_round_trip_is_exact() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8)).astype(np.float32) / 255
    pngs = encode_pngs(images)
    back = np.stack([decode(png, channels=3, size=8) for png in pngs])
    assert np.array_equal(np.rint(back * 255), np.rint(images * 255))  # every 8-bit level kept
    assert np.abs(back - images).max() < 1e-6


def test_png_bytes_are_deterministic() -> None:
    images = np.random.default_rng(1).random((2, 1, 8, 8), dtype=np.float32)
    assert encode_pngs(images) == encode_pngs(images.copy())


def test_grid_of_one_is_the_image_itself() -> None:
    image = np.random.default_rng(2).random((1, 1, 8, 8), dtype=np.float32)
    assert encode_grid_png(image) == encode_pngs(image)[0]


def test_grid_is_near_square_with_gutters() -> None:
    grid = Image.open(io.BytesIO(encode_grid_png(np.ones((5, 1, 8, 8), np.float32))))
    side = 3 * (8 + GRID_PAD) + GRID_PAD
    assert grid.size == (side, 2 * (8 + GRID_PAD) + GRID_PAD) and side == 32


def test_grid_with_given_columns() -> None:
    grid = Image.open(io.BytesIO(encode_grid_png(np.ones((5, 1, 8, 8), np.float32), columns=5)))
    assert grid.size == (5 * (8 + GRID_PAD) + GRID_PAD, 8 + 2 * GRID_PAD)

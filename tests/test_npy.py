"""The application/x-npy fast path: parsing bodies safely, writing float32 answers."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch

from vae_service.server.npy import NpyError, images_to_npy, parse_images, to_npy


def npy(array: np.ndarray, **kwargs: bool) -> bytes:
    out = io.BytesIO()
    np.save(out, array, **kwargs)
    return out.getvalue()


def test_uint8_grey_images_become_unit_floats() -> None:
    array = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)
    images = parse_images(npy(array), image_size=28, channels=1, max_images=8)
    assert images.shape == (3, 1, 28, 28) and images.dtype == torch.float32
    torch.testing.assert_close(images[:, 0], torch.from_numpy(array).float() / 255)


def test_float32_nhwc_round_trips_through_the_answer_layout() -> None:
    array = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    images = parse_images(npy(array), image_size=8, channels=3, max_images=8)
    assert images.shape == (2, 3, 8, 8)
    back = np.load(io.BytesIO(images_to_npy(images)))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, array)


def test_nchw_reads_as_the_same_images_as_nhwc() -> None:
    nhwc = np.random.default_rng(2).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    nchw = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
    for channels in (3, 1):  # as it is, and made grey
        torch.testing.assert_close(
            parse_images(npy(nchw), 8, channels, 8), parse_images(npy(nhwc), 8, channels, 8)
        )
    with pytest.raises(NpyError, match=r"must be 8×8 .* got 4×4"):
        parse_images(npy(np.zeros((1, 3, 4, 4), np.uint8)), 8, 3, 8)


def test_fortran_order_is_read_correctly() -> None:
    array = np.asfortranarray(np.random.default_rng(1).random((2, 8, 8), dtype=np.float32))
    images = parse_images(npy(array), image_size=8, channels=1, max_images=8)
    np.testing.assert_array_equal(images[:, 0].numpy(), array)


def test_channels_are_converted_to_the_models() -> None:
    rgb = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red: Pillow's luma gives 0.299
    grey = parse_images(npy(rgb), image_size=4, channels=1, max_images=1)
    torch.testing.assert_close(grey, torch.full((1, 1, 4, 4), 0.299))
    colour = parse_images(npy(np.full((1, 4, 4), 51, np.uint8)), 4, 3, 1)
    torch.testing.assert_close(colour, torch.full((1, 3, 4, 4), 0.2))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((1, 28, 28), np.float64), "dtype must be uint8 or little-endian float32"),
        (np.zeros((1, 28, 28), ">f4"), "dtype must be"),
        (np.zeros((28, 28), np.uint8), "must be N×H×W or N×H×W×C"),
        (np.zeros((1, 28, 28, 2), np.uint8), "C in (1, 3)"),
        (np.zeros((0, 28, 28), np.uint8), "holds no images"),
        (np.zeros((1, 32, 32), np.uint8), "must be 28×28"),
        (np.full((1, 28, 28), 1.5, np.float32), "must lie in [0, 1]"),
        (np.full((1, 28, 28), np.nan, np.float32), "must be finite"),
    ],
)
def test_unusable_arrays_are_refused_with_422(array: np.ndarray, message: str) -> None:
    with pytest.raises(NpyError, match=re.escape(message)) as err:
        parse_images(npy(array), image_size=28, channels=1, max_images=8)
    assert err.value.status_code == 422


def test_too_many_images_is_refused_before_the_data_is_read() -> None:
    header_only = npy(np.zeros((100, 28, 28), np.uint8))[:128]
    with pytest.raises(NpyError, match="100 images; the limit is 8") as err:
        parse_images(header_only, image_size=28, channels=1, max_images=8)
    assert err.value.status_code == 422


def test_truncated_data_is_refused() -> None:
    body = npy(np.zeros((2, 28, 28), np.uint8))[:-10]
    with pytest.raises(NpyError, match="declares 1568"):
        parse_images(body, image_size=28, channels=1, max_images=8)


def test_pickled_objects_are_never_loaded() -> None:
    body = npy(np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(NpyError, match=r"dtype must be .* got \|O"):
        parse_images(body, image_size=28, channels=1, max_images=8)


@pytest.mark.parametrize("body", [b"", b"not an array", b"\x93NUMPY\x01\x00\xff\xff{garbage"])
def test_malformed_bodies_are_400(body: bytes) -> None:
    with pytest.raises(NpyError) as err:
        parse_images(body, image_size=28, channels=1, max_images=8)
    assert err.value.status_code == 400


def test_to_npy_writes_float32() -> None:
    latents = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    back = np.load(io.BytesIO(to_npy(latents)))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, latents.numpy())

"""The binary fast path: ``application/x-npy`` bodies in, float32 ``.npy`` answers out.

A request body is one NumPy ``.npy`` array of images at the model's size, no resizing:
``uint8`` (0..255) or ``float32`` (0..1), shaped N×H×W (grey), N×H×W×C or N×C×H×W with
C = 1 or 3 (converted to the model's channels as for image files). The two 4-D layouts
cannot be confused: image sides are at least 4, so a last axis of 1 or 3 is channels.
The header is checked, shape, dtype and image count included, before any pixel is read,
and nothing is ever unpickled. Answers are little-endian float32 arrays.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch
from numpy.lib import format as npy_format
from torch import Tensor

from vae_service.server.validation import unit_interval_error

MEDIA_TYPE = "application/x-npy"
# ITU-R 601-2 luma, the weights Pillow uses for RGB -> L, so arrays and files agree.
_LUMA = torch.tensor([0.299, 0.587, 0.114])
_ACCEPTED = {np.dtype("<f4"): "float32", np.dtype("|u1"): "uint8"}


class NpyError(ValueError):
    """An unusable array body; ``status_code`` is the HTTP status that says why."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


def parse_images(body: bytes, image_size: int | None, channels: int, max_images: int) -> Tensor:
    """Images in ``body`` as a float32 N×C×H×W tensor in [0, 1]; of any size when
    ``image_size`` is None (a diffusers model's, whose caller checks the size)."""
    stream = io.BytesIO(body)
    shape, fortran_order, dtype = _read_header(stream)
    first = _channels_first(shape)
    # Checked as channels-last, so that one set of rules and messages covers both layouts.
    _check_layout(_channels_last(shape) if first else shape, dtype, image_size, max_images)
    data = memoryview(body)[stream.tell() :]
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise NpyError(f"npy body holds {len(data)} data bytes; its header declares {expected}")
    array = np.ndarray(shape, dtype, buffer=data, order="F" if fortran_order else "C")
    pixels = _to_unit_float(array)
    if pixels.ndim == 3:
        pixels = pixels.unsqueeze(-1)
    if not first:
        pixels = pixels.permute(0, 3, 1, 2)
    return _convert_channels(pixels, channels).contiguous()


def parse_array(body: bytes, check: Callable[[tuple[int, ...]], None]) -> Tensor:
    """A little-endian float32 array in ``body`` (latents), once ``check`` has accepted
    the shape its header declares."""
    stream = io.BytesIO(body)
    shape, fortran_order, dtype = _read_header(stream)
    if dtype != np.dtype("<f4"):
        raise NpyError(f"npy latents must be little-endian float32, got {dtype.str}")
    check(shape)
    data = memoryview(body)[stream.tell() :]
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise NpyError(f"npy body holds {len(data)} data bytes; its header declares {expected}")
    array = np.ndarray(shape, dtype, buffer=data, order="F" if fortran_order else "C")
    return torch.from_numpy(np.ascontiguousarray(array).copy())


def to_npy(array: Tensor | np.ndarray) -> bytes:
    """A float32 ``.npy`` file holding ``array``."""
    if isinstance(array, Tensor):
        array = array.detach().cpu().numpy()
    out = io.BytesIO()
    npy_format.write_array(out, np.ascontiguousarray(array, dtype="<f4"), allow_pickle=False)
    return out.getvalue()


def images_to_npy(images: Tensor) -> bytes:
    """N×C×H×W images as an N×H×W×C float32 ``.npy`` file, the layout requests use."""
    return to_npy(images.permute(0, 2, 3, 1))


def _read_header(stream: io.BytesIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            return npy_format.read_array_header_1_0(stream)
        if version in ((2, 0), (3, 0)):
            return npy_format.read_array_header_2_0(stream)
    except (ValueError, SyntaxError, EOFError) as exc:
        raise NpyError(f"not a valid .npy body: {exc}", 400) from None
    raise NpyError(f"unsupported .npy format version {version}", 400)


def _channels_first(shape: tuple[int, ...]) -> bool:
    """N×C×H×W (PyTorch's layout): 4-D, C = 1 or 3 second, and a last axis that is not."""
    return len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3)


def _channels_last(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], *shape[2:], shape[1])


def _check_layout(
    shape: tuple[int, ...], dtype: np.dtype, image_size: int | None, max_images: int
) -> None:
    if dtype not in _ACCEPTED:
        raise NpyError(f"npy dtype must be uint8 or little-endian float32, got {dtype.str}")
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)):
        raise NpyError(
            f"npy array must be N×H×W or N×H×W×C (or N×C×H×W) with C in (1, 3), got {shape}"
        )
    if shape[0] < 1:
        raise NpyError("npy array holds no images")
    if shape[0] > max_images:
        # 422 like every other count over its limit in this API.
        raise NpyError(f"npy array holds {shape[0]} images; the limit is {max_images}")
    if image_size is not None and shape[1:3] != (image_size, image_size):
        raise NpyError(
            f"npy images must be {image_size}×{image_size} (the model's size; arrays are "
            f"not resized), got {shape[1]}×{shape[2]}"
        )


def _to_unit_float(array: np.ndarray) -> Tensor:
    if array.dtype == np.uint8:
        return torch.from_numpy(array.astype(np.float32)).mul_(1 / 255)
    pixels = torch.from_numpy(array.copy())
    problem = unit_interval_error(pixels, "float32 npy images")
    if problem is not None:
        raise NpyError(f"{problem} (send uint8 for 0..255)")
    return pixels


def _convert_channels(images: Tensor, channels: int) -> Tensor:
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1)
    return torch.einsum("nchw,c->nhw", images, _LUMA).unsqueeze(1)

"""Image files in, float tensors out, and back to PNG.

Any format Pillow reads is accepted. Every image is converted to the model's channels
and resized to the model's square image size (the aspect ratio is not kept). Animated
files give their first frame. The conversions:

- alpha (RGBA, LA, PA, and palette or grey images with a transparency key) is composited
  over black, the background of MNIST-style data: a pixel of value v and alpha a gives
  v * a / 255, so half-transparent white is mid grey;
- for a grey model, colour becomes grey by ITU-R 601-2 luma (Pillow's convert("L"));
- for an RGB model, grey g becomes (g, g, g) and palette images their palette colours;
- 16-bit greys are scaled to 8 bits (65535 -> 255), not clipped.
"""

from __future__ import annotations

import base64
import io
import math
import struct
import warnings

import numpy as np
from PIL import Image

from vae_service.server.errors import BadImage, Unprocessable

# Our own check (image_pixels_ok) refuses oversize images; Pillow's warning would only
# repeat it in the logs.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# Full-scale value of high-bit-depth modes, which Pillow's convert("L") clips at 255.
_FULL_SCALE = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0}
_HIGH_DEPTH = {"I", "F", *_FULL_SCALE}
GRID_PAD = 2
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def limit_pillow_pixels(max_pixels: int) -> None:
    """Pillow's own bomb guard (an error above twice this) backs up our header check."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def png_pixels(blob: bytes) -> int | None:
    """Width x height from a PNG's header, without Pillow; None if not a PNG."""
    if len(blob) < 24 or not blob.startswith(PNG_SIGNATURE) or blob[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", blob[16:24])
    return int(width) * int(height)


def decode_images(blobs: list[bytes], size: int, channels: int, max_pixels: int) -> np.ndarray:
    """Image files -> float32 array N x C x size x size in [0, 1]."""
    return np.stack(
        [decode_image(blob, size, channels, max_pixels, i) for i, blob in enumerate(blobs)]
    )


def decode_image(
    blob: bytes, size: int, channels: int, max_pixels: int, index: int = 0
) -> np.ndarray:
    """One image file -> float32 array C x size x size; BadImage or Unprocessable if refused."""
    if not blob:
        raise BadImage(f"images[{index}] is empty")
    img = _open_checked(blob, max_pixels, index)
    try:
        img.draft("L" if channels == 1 else "RGB", (size, size))  # JPEG: decode at a lower scale
        img = _to_model_mode(img, channels)
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
        pixels = np.asarray(img)
    except Exception as exc:  # Pillow's decoders raise a zoo of types on bad data
        raise BadImage(f"images[{index}] could not be decoded: {exc}") from None
    return _channels_first(pixels, channels)


def decode_image_as_is(blob: bytes, channels: int, max_pixels: int, index: int = 0) -> np.ndarray:
    """One image file -> float32 array C x H x W in [0, 1] at its own size (diffusers'
    VAEs take any size); BadImage or Unprocessable if refused."""
    if not blob:
        raise BadImage(f"images[{index}] is empty")
    img = _open_checked(blob, max_pixels, index)
    try:
        pixels = np.asarray(_to_model_mode(img, channels))
    except Exception as exc:  # as in decode_image
        raise BadImage(f"images[{index}] could not be decoded: {exc}") from None
    return _channels_first(pixels, channels)


def _channels_first(pixels: np.ndarray, channels: int) -> np.ndarray:
    array = pixels.astype(np.float32) * np.float32(1 / 255)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _open_checked(blob: bytes, max_pixels: int, index: int) -> Image.Image:
    # Image.open reads only the header, so the size check runs before any decoding.
    try:
        img = Image.open(io.BytesIO(blob))
    except Image.DecompressionBombError:
        raise _too_many_pixels(index, None, max_pixels) from None
    except Exception:  # UnidentifiedImageError, or a plugin choking on a bad header
        raise BadImage(f"images[{index}] is not an image file Pillow can read") from None
    if img.width * img.height > max_pixels:
        raise _too_many_pixels(index, img.size, max_pixels)
    if img.width < 1 or img.height < 1:
        raise BadImage(f"images[{index}] has no pixels")
    return img


def _too_many_pixels(index: int, size: tuple[int, int] | None, max_pixels: int) -> Unprocessable:
    declared = f"declares {size[0]}x{size[1]} pixels" if size else "declares too many pixels"
    return Unprocessable(
        f"images[{index}] {declared}; the limit is {max_pixels} (VAE_MAX_PIXELS_PER_IMAGE)"
    )


def _to_model_mode(img: Image.Image, channels: int) -> Image.Image:
    if img.mode in _HIGH_DEPTH:
        img = _high_depth_to_grey(img)
    elif img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    mode = "L" if channels == 1 else "RGB"
    return img if img.mode == mode else img.convert(mode)


def _high_depth_to_grey(img: Image.Image) -> Image.Image:
    values = np.asarray(img, dtype=np.float64)
    peak = float(values.max(initial=0.0))
    # Plain I/F images carry no bit depth: take 8-bit or [0, 1] data at face value.
    default = 1.0 if img.mode == "F" and peak <= 1.0 else 255.0 if peak <= 255 else 65535.0
    scaled = values / _FULL_SCALE.get(img.mode, default) * 255.0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Floats in [0, 1], N x C x H x W -> uint8 N x H x W x C."""
    return np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)


def _png(pixels: np.ndarray) -> bytes:
    """uint8 H x W x C -> PNG bytes (no timestamps, so equal pixels give equal bytes)."""
    img = (
        Image.fromarray(pixels[..., 0], "L")
        if pixels.shape[-1] == 1
        else Image.fromarray(pixels, "RGB")
    )
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def encode_pngs(images: np.ndarray) -> list[bytes]:
    """One PNG per image of an N x C x H x W float array."""
    return [_png(pixels) for pixels in to_uint8(images)]


def encode_base64_pngs(images: np.ndarray) -> list[str]:
    return [base64.b64encode(png).decode("ascii") for png in encode_pngs(images)]


def encode_grid_png(images: np.ndarray, columns: int | None = None) -> bytes:
    """One PNG: the image itself for one image, else a grid with black gutters,
    near-square unless ``columns`` is given."""
    tiles = to_uint8(images)
    n, h, w, c = tiles.shape
    if n == 1:
        return _png(tiles[0])
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros(
        (rows * (h + GRID_PAD) + GRID_PAD, cols * (w + GRID_PAD) + GRID_PAD, c), np.uint8
    )
    for i, tile in enumerate(tiles):
        top = GRID_PAD + (i // cols) * (h + GRID_PAD)
        left = GRID_PAD + (i % cols) * (w + GRID_PAD)
        grid[top : top + h, left : left + w] = tile
    return _png(grid)

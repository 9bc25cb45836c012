"""diffusers' remote VAE wire format: raw tensors in and out, the latents' scaling, FLUX's
packed latents, and the decoded answer as an image file or a tensor.

Every declared size is checked with Python integers, against the limits and the body's
byte count, before anything is allocated: a claimed 100,000 x 100,000 latent is a 413 or
a 422 at once. Images must be a whole multiple of the model's downsampling factor in each
side: they are refused (422), not padded or cropped, so a client never gets back an image
of another size than it sent.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import numpy as np
import torch
from fastapi import Response
from PIL import Image
from torch import Tensor

from vae_service.server.diffusers_models import LatentSpace
from vae_service.server.errors import PayloadTooLarge, Unprocessable
from vae_service.server.imaging import to_uint8
from vae_service.server.remote_query import RemoteDecodeQuery, RemoteQuery, TensorDtype
from vae_service.server.settings import Settings, env_name
from vae_service.server.validation import check_limit, unit_interval_error

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "uint8": torch.uint8,
}
TENSOR_MEDIA_TYPE = "tensor/binary"  # what diffusers' client sends and asks for
JPEG_QUALITY = 95


def read_tensor(body: bytes, shape: list[int], dtype: TensorDtype, max_bytes: int) -> Tensor:
    """The body as float32 of the declared shape: 413 when that shape needs more bytes
    than any body may carry, 422 when it does not match the body's size."""
    need = math.prod(shape) * DTYPES[dtype].itemsize
    if need > max_bytes:
        raise PayloadTooLarge(
            f"shape {shape} of {dtype} needs {need} bytes; the limit is {max_bytes} "
            f"({env_name('max_body_bytes')})"
        )
    if need != len(body):
        raise Unprocessable(
            f"shape {shape} of {dtype} needs {need} bytes; the body has {len(body)}"
        )
    return torch.frombuffer(bytearray(body), dtype=DTYPES[dtype]).reshape(shape).float()


def tensor_reply(tensor: Tensor, headers: dict[str, str]) -> Response:
    """A raw tensor, as diffusers' client reads it: C order, shape and dtype in headers."""
    dtype = str(tensor.dtype).removeprefix("torch.")
    raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()  # bfloat16 has no numpy type
    meta = {"shape": json.dumps(list(tensor.shape)), "dtype": dtype}
    return Response(raw, media_type=TENSOR_MEDIA_TYPE, headers={**headers, **meta})


def check_images(shape: list[int], space: LatentSpace, settings: Settings) -> None:
    """N x C x H x W images this model can encode: the count, channels, size limits."""
    n, channels, height, width = shape
    check_limit(n, settings.max_images_per_request, "images per request", "max_images_per_request")
    if channels != space.image_channels:
        raise Unprocessable(
            f"images have {channels} channels; this model takes {space.image_channels}"
        )
    check_size(height, width, space, settings)


def check_size(height: int, width: int, space: LatentSpace, settings: Settings) -> None:
    """An image size the model can take: a multiple of its factor, within the pixel limit."""
    pixels = height * width
    check_limit(pixels, settings.max_pixels_per_image, "pixels per image", "max_pixels_per_image")
    f = space.factor
    if height % f or width % f:
        raise Unprocessable(
            f"an image of {height}x{width} is not a multiple of {f} (this model's "
            f"downsampling) in each side; pad or crop it"
        )


def signed_images(images: Tensor) -> Tensor:
    """A raw image tensor, once it is finite and within [-1, 1]."""
    problem = unit_interval_error((images + 1) / 2, "image values, mapped from [-1, 1] to [0, 1],")
    if problem:
        raise Unprocessable(problem)
    return images


@dataclass(frozen=True)
class Scaling:
    """Latents as the pipeline holds them <-> as the VAE takes them: model = z / scale +
    shift, per channel where the model has latents_mean/latents_std."""

    scale: Tensor
    shift: Tensor

    def to_model(self, z: Tensor) -> Tensor:
        return z / self.scale + self.shift

    def from_model(self, z: Tensor) -> Tensor:
        return (z - self.shift) * self.scale


def plain_scaling(query: RemoteQuery) -> Scaling | None:
    """The client's own factors, if it gave any."""
    if query.scaling_factor is None and query.shift_factor is None:
        return None
    return _scaling(query.scaling_factor or 1.0, query.shift_factor or 0.0)


def scaling_of(query: RemoteQuery, space: LatentSpace) -> Scaling | None:
    """The client's factors; else, with do_scaling, the model's own; else none."""
    given = plain_scaling(query)
    if given is not None or not query.do_scaling:
        return given
    return model_scaling(space)


def model_scaling(space: LatentSpace) -> Scaling:
    """The model's own normalisation, as its pipelines apply it (also vae-encode-dataset's
    --scale)."""
    if space.latents_mean is not None and space.latents_std is not None:  # as SDXL pipelines
        std = torch.tensor(space.latents_std).view(1, -1, 1, 1)
        return Scaling(
            space.scaling_factor / std, torch.tensor(space.latents_mean).view(1, -1, 1, 1)
        )
    return _scaling(space.scaling_factor, space.shift_factor)


def _scaling(scale: float, shift: float) -> Scaling:
    return Scaling(torch.tensor(scale), torch.tensor(shift))


def latent_grid(query: RemoteDecodeQuery, space: LatentSpace) -> tuple[int, int]:
    """The latents' h x w: from the shape, or for packed latents from height and width,
    whose patches must then match the shape (FLUX packs 2 x 2 positions a patch)."""
    if len(query.shape) == 2:
        raise Unprocessable(
            f"latents have shape {query.shape}; this model's are N x C x h x w, "
            "or packed N x patches x C*4"
        )
    if len(query.shape) == 4:
        _, channels, h, w = query.shape
        if channels != space.latent_channels:
            raise Unprocessable(
                f"latents have {channels} channels; this model's have {space.latent_channels}"
            )
        return h, w
    if query.height is None or query.width is None:
        raise Unprocessable("packed (3-D) latents need the image's height and width")
    h, w = (2 * (size // (space.factor * 2)) for size in (query.height, query.width))
    expected = [query.shape[0], (h // 2) * (w // 2), space.latent_channels * 4]
    if h == 0 or w == 0 or query.shape != expected:
        raise Unprocessable(
            f"packed latents of a {query.height}x{query.width} image have shape {expected}, "
            f"not {query.shape}"
        )
    return h, w


def unpack(packed: Tensor, h: int, w: int) -> Tensor:
    """FLUX's _unpack_latents: N x (h/2 * w/2) x (C*4) -> N x C x h x w."""
    n, _, packed_channels = packed.shape
    patches = packed.view(n, h // 2, w // 2, packed_channels // 4, 2, 2)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(n, packed_channels // 4, h, w)


def check_decode(query: RemoteDecodeQuery, settings: Settings) -> None:
    """What any model's decode request must meet before its body is read: the count."""
    n = query.shape[0]
    check_limit(n, settings.max_images_per_request, "latents per request", "max_images_per_request")
    if query.output_type == "pil" and n != 1:
        raise Unprocessable(f"output_type=pil answers one image, not {n}; use output_type=pt")


def check_tiling(query: RemoteQuery, can_tile: bool, family: str) -> None:
    if query.tile and not can_tile:
        raise Unprocessable(
            f"tile=true: this {family} cannot tile (diffusers' tiling serves AutoencoderKL, "
            "and AutoencoderTiny with 4 latent and 3 image channels)"
        )


def finite(outputs: Tensor) -> Tensor:
    """The model's answer, unless it holds NaN or inf even after the float32 re-run
    (runtime.run_guarded): a black image or NaN latents are refused, never sent."""
    if not bool(torch.isfinite(outputs).all()):
        raise Unprocessable(
            "the model gave NaN or inf for this input, in float32 too; nothing was returned"
        )
    return outputs


def uint8_images(images: Tensor) -> np.ndarray:
    """Decoded images in [-1, 1] -> uint8 N x H x W x C, as diffusers' postprocessing."""
    return to_uint8(((images + 1) / 2).numpy())


def image_file(images: Tensor, image_format: str) -> bytes:
    """The one decoded image as PNG or JPEG bytes."""
    pixels = uint8_images(images)[0]
    img = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    out = io.BytesIO()
    if image_format == "png":
        img.save(out, format="PNG", compress_level=1)
    else:
        img.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()

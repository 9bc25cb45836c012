"""The rules a request's values must meet, one function each, shared by the REST routes
and the Open Inference Protocol's: counts within their limits, latents finite and within
VAE_MAX_ABS_LATENT, float pixels finite and in [0, 1]. Each refusal is a 422."""

from __future__ import annotations

import torch
from torch import Tensor

from vae_service.server.errors import Unprocessable
from vae_service.server.settings import env_name


def check_limit(count: int, limit: int, what: str, setting: str) -> None:
    """422 when a count is over its configured limit."""
    if count > limit:
        raise Unprocessable(f"{what} is {count}; the limit is {limit} ({env_name(setting)})")


def checked_latents(z: Tensor, max_abs: float) -> Tensor:
    """``z`` as float32, once every value is finite and at most ``max_abs`` in size."""
    if not bool(torch.isfinite(z).all()):
        raise Unprocessable("latents must be finite; found NaN or inf")
    largest = float(z.abs().max())
    if largest > max_abs:
        raise Unprocessable(
            f"a latent value of size {largest:g} is over {max_abs:g} ({env_name('max_abs_latent')})"
        )
    return z.float()


def latent_rows(rows: list[list[float]], latent_dim: int, max_rows: int, max_abs: float) -> Tensor:
    """Latents given as JSON rows, as N x latent_dim: each row must have latent_dim values."""
    check_limit(len(rows), max_rows, "latents per request", "max_images_per_request")
    for i, row in enumerate(rows):
        if len(row) != latent_dim:
            raise Unprocessable(
                f"z[{i}] has {len(row)} values; this model's latent_dim is {latent_dim}"
            )
    # float64: a value such as 1e300 stays finite, so it is refused as too large.
    return checked_latents(torch.tensor(rows, dtype=torch.float64), max_abs)


def unit_interval_error(pixels: Tensor, what: str) -> str | None:
    """Why float ``pixels`` are not images (NaN, inf, or outside [0, 1]); None if they are."""
    if not bool(torch.isfinite(pixels).all()):
        return f"{what} must be finite; found NaN or inf"
    if pixels.numel() and (pixels.min() < 0 or pixels.max() > 1):
        return f"{what} must lie in [0, 1]"
    return None

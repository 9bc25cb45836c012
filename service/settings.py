"""Service settings: one typed class, read from ``VAE_*`` environment variables.

``vae-serve`` turns every field into a command-line flag (``--max-body-bytes`` for
``max_body_bytes``) that overrides its variable, so the field descriptions below are
also the ``--help`` text.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.pretrained import DEFAULT_WEIGHTS

ENV_PREFIX = "VAE_"
LogLevel = Literal["critical", "error", "warning", "info", "debug"]


class Settings(BaseSettings):
    """Everything the service can be told at start-up."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True)

    weights: Path = Field(
        default=DEFAULT_WEIGHTS,
        description="Weights file (.safetensors) to serve; default: the bundled Fashion-MNIST VAE.",
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="Where the model runs: auto (GPU if any, else CPU), cpu, cuda or cuda:N.",
    )
    host: str = Field(default="0.0.0.0", description="Interface to listen on.")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port to listen on.")
    log_level: LogLevel = Field(
        default="info", description="Log level: critical, error, warning, info or debug."
    )
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1, description="Largest request body in bytes; more get 413."
    )
    max_images_per_request: int = Field(
        default=1024, ge=1, description="Most images or latents in one request; more get 422."
    )
    max_pixels_per_image: int = Field(
        default=25_000_000,
        ge=1,
        description=(
            "Most pixels (width x height) one input image may declare; checked from the "
            "file header before decoding, so decompression bombs get 422 cheaply."
        ),
    )
    max_sample_n: int = Field(
        default=1024, ge=1, description="Largest n for /sample; more get 422."
    )
    max_interpolation_steps: int = Field(
        default=256, ge=2, description="Largest steps for /interpolate; more get 422."
    )
    max_batch_size: int = Field(
        default=64,
        ge=1,
        description=(
            "Most images (or latents) stacked into one forward pass; a request with more "
            "is run in chunks of this size."
        ),
    )
    max_batch_delay_ms: float = Field(
        default=2.0,
        ge=0.0,
        le=1000.0,
        description=(
            "Longest a request waits for others to join its batch, from the first queued "
            "request; 0 runs each batch as soon as the model is free."
        ),
    )
    max_queue_images: int = Field(
        default=4096,
        ge=1,
        description="Most images (or latents) waiting for the model; more get 503 + Retry-After.",
    )
    torch_threads: int = Field(
        default=0,
        ge=0,
        description="Torch intra-op threads for the model; 0: one per core.",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32",
        description=(
            "Forward-pass precision on CUDA (the CPU always uses fp32); a half-precision "
            "batch that gives NaN or inf is run again in fp32."
        ),
    )


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return ENV_PREFIX + field.upper()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()

"""Service settings: one typed class, read from ``VAE_*`` environment variables.

``vae-serve`` turns every field into a command-line flag (``--max-body-bytes`` for
``max_body_bytes``) that overrides its variable, so the field descriptions below are
also the ``--help`` text.
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from vae_service.model.anomaly import MAX_IWAE_SAMPLES
from vae_service.model.pretrained import DEFAULT_WEIGHTS

ENV_PREFIX = "VAE_"
# What runs a model's forward passes; VAE_BACKEND names one, or "auto" (onnxruntime where
# it can run, else torch).
BackendName = Literal["torch", "onnxruntime"]
BackendChoice = Literal["auto", BackendName]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]


class Settings(BaseSettings):
    """Everything the service can be told at start-up."""

    # An empty variable means "not set": compose passes every VAE_* variable through,
    # empty where the user set none, and each then keeps its default.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, env_ignore_empty=True)

    weights: Path = Field(
        default=DEFAULT_WEIGHTS,
        description="Weights file (.safetensors) to serve; default: the bundled Fashion-MNIST VAE.",
    )
    model_dir: Path | None = Field(
        default=None,
        description=(
            "A model repository: every NAME.safetensors directly in this folder is served "
            "as model NAME (at /models/NAME/...); files that appear, change or go are "
            "picked up while serving. Unset: one model, VAE_WEIGHTS."
        ),
    )
    default_model: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9._-]*$",
        description=(
            "The model the un-prefixed routes (/encode, ...) serve; default: the only "
            "model, else fashion-mnist."
        ),
    )
    model_poll_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description=(
            "How often VAE_MODEL_DIR is scanned for new, changed or removed files; a "
            "change is loaded once it has held still for one scan."
        ),
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="Where the model runs: auto (GPU if any, else CPU), cpu, cuda or cuda:N.",
    )
    host: str = Field(default="0.0.0.0", description="Interface to listen on.")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port to listen on.")
    workers: int = Field(
        default=1,
        ge=1,
        le=256,
        description=(
            "Worker processes on the one port, each with its own models and batchers, for "
            "many-core hosts; /metrics sums over all of them (docs/operations.md)."
        ),
    )
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
    max_score_samples: int = Field(
        default=64,
        ge=1,
        le=MAX_IWAE_SAMPLES,
        description=(
            "Largest k (importance samples of the IWAE bound) for /score; more get 422. "
            f"At most {MAX_IWAE_SAMPLES}."
        ),
    )
    max_batch_size: int = Field(
        default=64,
        ge=1,
        description=(
            "Most images (or latents) stacked into one forward pass; a request with more "
            "is run in chunks of this size."
        ),
    )
    max_batch_pixels: int = Field(
        default=4 * 1024 * 1024,
        ge=1,
        description=(
            "diffusers models: most pixels (decoded image pixels, for latents) in one "
            "forward pass; a batch holds as many images of a size as fit, and one image "
            "over it is decoded or encoded with diffusers' tiling."
        ),
    )
    max_batch_delay_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=1000.0,
        description=(
            "Longest a request waits for others to join its batch, from the first queued "
            "request; 0 (adaptive): a request runs at once on an idle model, and a batch "
            "takes what queued while the model was busy."
        ),
    )
    max_queue_wait_ms: float = Field(
        default=0.0,
        ge=0.0,
        description=(
            "Longest a request should wait for the model; while requests "
            "wait longer, new ones get 503 + Retry-After at once, and one queued past it for "
            "the model gets 503. 0 (the default): no bound; 100 suits interactive clients."
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
        description=(
            "Torch intra-op threads for the model; 0: one per usable CPU (CPU affinity "
            "and the cgroup CPU quota), less one."
        ),
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32",
        description=(
            "Forward-pass precision on CUDA (the CPU always uses fp32); a half-precision "
            "batch that gives NaN or inf is run again in fp32."
        ),
    )
    backend: BackendChoice = Field(
        default="auto",
        description=(
            "What runs each model: torch, or onnxruntime (CPU only; pip install "
            "'vae-service[onnx]'), its ONNX graphs exported at load into "
            "VAE_ONNX_CACHE_DIR or read from there, and checked against torch. auto: "
            "onnxruntime on the CPU when installed, else torch (and torch for a model "
            "onnxruntime cannot run, with the reason in the log)."
        ),
    )
    onnx_cache_dir: Path | None = Field(
        default=None,
        description=(
            "ONNX graphs by the weights' SHA-256 (vae-export --onnx writes this layout); "
            "unset: $XDG_CACHE_HOME/vae-service/onnx, else /tmp/vae-service-<uid>/onnx."
        ),
    )
    max_abs_latent: float = Field(
        default=1e4,
        gt=0,
        description=(
            "Largest |value| in a latent sent to /decode or /interpolate; the prior puts "
            "nearly all mass within ±5, larger values only overflow the decoder. More get 422."
        ),
    )
    request_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description=(
            "Longest a request may take, queueing included; past it the answer is 504 "
            "and its queued work is dropped."
        ),
    )
    graceful_shutdown_s: int = Field(
        default=25,
        gt=0,
        description=(
            "On SIGTERM, how long vae-serve waits for requests in flight before it "
            "cancels them; longer than the request timeout, so none is cut short."
        ),
    )
    keep_alive_s: int = Field(
        default=75,
        gt=0,
        description=(
            "How long an idle keep-alive connection stays open. Longer than the idle "
            "timeout of every client and proxy in front (httpx 5 s, nginx and AWS ALB "
            "60 s), so that they, not the server, close idle connections: a request "
            "sent as the server closes its connection fails (ReadError)."
        ),
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description=(
            "API keys, comma-separated or a JSON list; when set, every endpoint but "
            "/healthz and /readyz needs 'Authorization: Bearer <key>' (else 401)."
        ),
    )
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description=(
            "Keys for admin operations (POST /models/NAME/reload), comma-separated or a "
            "JSON list; they also work as API keys. Unset: admin operations get 403."
        ),
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Origins browsers may call from, comma-separated or a JSON list ('*' for "
            "any); empty (the default) sends no CORS headers."
        ),
    )
    access_log: bool = Field(
        default=True, description="One JSON log line per request (method, path, status, ...)."
    )

    @field_validator("backend")
    @classmethod
    def backend_installed(cls, value: str) -> str:
        """onnxruntime is an optional extra: say so at start-up, not at the first load."""
        if value == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
            raise ValueError(
                "onnxruntime is not installed: pip install 'vae-service[onnx]', "
                "or VAE_BACKEND=torch"
            )
        return value

    @field_validator("api_keys", "admin_keys", "cors_origins", mode="before")
    @classmethod
    def split_list(cls, value: object) -> object:
        """'a,b' or '["a", "b"]' from a variable or a flag; lists pass through."""
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [item.strip() for item in value.split(",") if item.strip()]


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return ENV_PREFIX + field.upper()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()

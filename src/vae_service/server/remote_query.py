"""The query parameters of diffusers' remote VAE protocol (``remote_decode`` and
``remote_encode`` in diffusers/utils/remote_utils.py), declared as the other model routes
declare theirs: ``Annotated[Model, Query()]``, so FastAPI validates and documents them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from vae_service.server.query_models import QueryModel, Seed

TensorDtype = Literal["float32", "float16", "bfloat16"]
# At least 1; the upper bound only keeps products of dims within reach of a quick check.
Dim = Annotated[int, Field(ge=1, le=2**31)]


class RemoteQuery(QueryModel):
    """What both directions share: the raw tensor's layout and the latents' scaling."""

    shape: list[Dim] | None = Field(
        None, description="The raw tensor body's shape, one repeated parameter per dimension"
    )
    dtype: TensorDtype = Field("float32", description="The raw tensor body's element type")
    scaling_factor: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Decode: latents / scaling_factor + shift_factor; encode: the inverse",
    )
    shift_factor: float | None = Field(None, allow_inf_nan=False, description="See scaling_factor")
    tile: bool = Field(
        False,
        description=(
            "Run with diffusers' tiling (enable_tiling), as an image over "
            "VAE_MAX_BATCH_PIXELS always does; AutoencoderKL tiles only images larger "
            "than its config's sample_size"
        ),
    )
    do_scaling: bool = Field(
        False,
        description=(
            "Deprecated (diffusers sends it when no scaling_factor is given): apply the "
            "model's own scaling_factor and shift_factor, or latents_mean/latents_std"
        ),
    )


class RemoteDecodeQuery(RemoteQuery):
    shape: list[Dim] = Field(
        min_length=2,
        max_length=4,
        description=(
            "N, C, h, w; or N, patches, C*4 for packed (FLUX) latents; or N, D for this "
            "service's own VAEs"
        ),
    )
    output_type: Literal["pil", "pt"] = Field(
        "pil", description="pil: one PNG or JPEG; pt: the raw image tensor"
    )
    image_format: Literal["png", "jpg"] = Field("jpg", description="With output_type=pil")
    partial_postprocess: bool = Field(
        False, description="With output_type=pt: uint8 N×H×W×C instead of floats in [-1, 1]"
    )
    height: Dim | None = Field(None, description="Image height, for packed latents")
    width: Dim | None = Field(None, description="Image width, for packed latents")


class RemoteEncodeQuery(RemoteQuery):
    shape: list[Dim] | None = Field(
        None,
        min_length=4,
        max_length=4,
        description="N, C, H, W of a raw tensor in [-1, 1]; absent: the body is an image file",
    )
    sample: bool = Field(False, description="A draw from q(z|x) instead of its mode")
    seed: Seed = None

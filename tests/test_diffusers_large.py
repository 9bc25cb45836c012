"""Large images and half precision on diffusers models: diffusers' own tiling on request
(tile=true) and above VAE_MAX_BATCH_PIXELS, batches that count pixels, weights served in
the dtype they are stored in unless force_upcast says float32, and a float16 overflow
re-run in float32 (or refused), never answered as NaN or a black image."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from tests.diffusers_vaes import diffusers, model_of, settings
from tests.test_diffusers_models import post, tensor_of
from vae_service.server.batch_jobs import Operation
from vae_service.server.batcher import Batcher
from vae_service.server.main import create_app

# The "sd" test config tiles above its sample_size, 32 pixels: 8 latent positions.
BIG_Z = torch.randn((1, 4, 12, 12), generator=torch.Generator().manual_seed(4))
BIG_X = torch.rand((1, 3, 48, 48), generator=torch.Generator().manual_seed(5)) * 2 - 1


def tiny16() -> Any:
    torch.manual_seed(0)
    return diffusers.AutoencoderTiny(
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        latent_channels=16,
    ).eval()


def overflowing_fp16() -> Any:
    """A decoder whose first conv overflows float16 (like the SDXL VAE) but not float32."""
    model = model_of("sd")
    with torch.no_grad():
        model.decoder.conv_in.weight.fill_(30000.0)
    model.register_to_config(force_upcast=False)
    return model


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("large-shelf")
    model_of("sd").save_pretrained(folder / "sd")
    tiny16().save_pretrained(folder / "tiny16")
    model_of("sd").half().save_pretrained(folder / "sd-fp16")  # force_upcast: True
    fixed = model_of("sd")
    fixed.register_to_config(force_upcast=False)  # as sdxl-vae-fp16-fix says
    fixed.half().save_pretrained(folder / "fp16-fix")
    model_of("tiny").to(torch.bfloat16).save_pretrained(folder / "tiny-bf16")
    overflowing_fp16().half().save_pretrained(folder / "overflow")
    broken = model_of("sd")
    with torch.no_grad():
        broken.decoder.conv_out.weight.fill_(float("nan"))
    broken.save_pretrained(folder / "nan")
    return folder


@pytest.fixture(scope="module")
def client(shelf: Path) -> Iterator[TestClient]:
    app = create_app(settings(shelf, max_batch_pixels=64 * 64))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def in_process(model: Any, tiled: bool, z: torch.Tensor = BIG_Z) -> torch.Tensor:
    if tiled:
        model.enable_tiling()
    with torch.no_grad():
        return model.decode(z.to(model.dtype)).sample.float()


def test_tile_true_is_diffusers_tiling(client: TestClient) -> None:
    model = model_of("sd")
    whole, tiled = in_process(model, False), in_process(model, True)
    assert (whole - tiled).abs().max() > 1e-3  # tiling does change the answer
    reply = post(client, "/models/sd/remote-decode", BIG_Z, output_type="pt", tile="true")
    torch.testing.assert_close(tensor_of(reply), tiled, atol=1e-4, rtol=0)
    plain = post(client, "/models/sd/remote-decode", BIG_Z, output_type="pt")
    torch.testing.assert_close(tensor_of(plain), whole, atol=1e-4, rtol=0)
    encoded = post(client, "/models/sd/remote-encode", BIG_X, tile="true")
    model.enable_tiling()
    with torch.no_grad():
        expected = model.encode(BIG_X).latent_dist.mode()
    torch.testing.assert_close(tensor_of(encoded), expected, atol=1e-4, rtol=0)


def test_an_image_over_the_pixel_budget_is_tiled(client: TestClient) -> None:
    z = torch.randn((1, 4, 20, 20), generator=torch.Generator().manual_seed(6))  # 80² > 64²
    reply = post(client, "/models/sd/remote-decode", z, output_type="pt")
    torch.testing.assert_close(
        tensor_of(reply), in_process(model_of("sd"), True, z), atol=1e-4, rtol=0
    )


def test_tile_refused_where_diffusers_cannot_tile(client: TestClient) -> None:
    z = torch.zeros((1, 16, 4, 4))
    reply = post(client, "/models/tiny16/remote-decode", z, output_type="pt", tile="true")
    assert reply.status_code == 422 and "4 latent and 3 image channels" in reply.text
    assert post(client, "/models/tiny16/remote-decode", z, output_type="pt").status_code == 200


def test_tile_not_a_bool(client: TestClient) -> None:
    reply = post(client, "/models/sd/remote-decode", BIG_Z, output_type="pt", tile="maybe")
    assert reply.status_code == 422 and "tile" in reply.text


def test_batches_count_pixels_not_images() -> None:
    seen: list[int] = []

    def double(rows: torch.Tensor) -> torch.Tensor:
        seen.append(len(rows))
        return rows * 2

    async def run() -> None:
        fits = lambda rows: 100 // (rows.shape[-2] * rows.shape[-1])  # noqa: E731
        batcher = Batcher({"op": Operation(double, None, fits)}, max_batch_size=8)
        try:
            assert len((await batcher.submit("op", torch.ones((6, 1, 5, 5))))[0]) == 6
            assert len((await batcher.submit("op", torch.ones((9, 1, 2, 2))))[0]) == 9
            assert len((await batcher.submit("op", torch.ones((2, 1, 20, 20))))[0]) == 2
        finally:
            await batcher.aclose()

    asyncio.run(run())
    # 4 of 25 pixels fit in 100; 8 of 4 pixels (the count limit still holds); 400: one.
    assert seen == [4, 2, 8, 1, 1, 1]


def test_weights_serve_in_their_dtype_unless_force_upcast(client: TestClient) -> None:
    dtypes = {m["name"]: m["dtype"] for m in client.get("/models").json()["models"]}
    assert dtypes["sd-fp16"] == "float32"  # force_upcast, as diffusers' pipelines decode
    assert dtypes["fp16-fix"] == "float16" and dtypes["tiny-bf16"] == "bfloat16"
    z = torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(7))
    for name, dtype in (("fp16-fix", torch.float16), ("sd-fp16", torch.float32)):
        reply = post(client, f"/models/{name}/remote-decode", z, output_type="pt")
        expected = in_process(model_of("sd").half().to(dtype), False, z)
        torch.testing.assert_close(tensor_of(reply), expected, atol=1e-2, rtol=0)


def test_fp16_overflow_is_rerun_in_fp32(client: TestClient) -> None:
    z = torch.rand((1, 4, 4, 4), generator=torch.Generator().manual_seed(8)) + 1
    assert not torch.isfinite(in_process(overflowing_fp16().half(), False, z)).all()
    reply = post(client, "/models/overflow/remote-decode", z, output_type="pt")
    expected = in_process(overflowing_fp16().half().float(), False, z)
    torch.testing.assert_close(tensor_of(reply), expected, atol=1e-3, rtol=0)
    again = post(client, "/models/overflow/remote-decode", z, output_type="pt")
    assert again.status_code == 200  # the weights went back to float16 and still serve


def test_nan_in_fp32_too_is_refused(client: TestClient) -> None:
    reply = post(client, "/models/nan/remote-decode", BIG_Z, output_type="pt")
    assert reply.status_code == 422 and "NaN or inf" in reply.text

"""vae-encode-dataset on tiny diffusers folders: AutoencoderKL's posterior mode (with and
without the model's scaling) and AutoencoderTiny's latents, flattened with their shape;
images at their own size, as /encode takes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.bulk_inputs import encode, rows
from tests.conftest import image_file
from tests.diffusers_vaes import write_models
from vae_service.server.imaging import decode_image_as_is


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("models")
    return folder, write_models(folder, ("sd", "tiny"))


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """Two 32 x 32 RGB images, a 16 x 16 one, and a 30 x 30 one no model here can take."""
    folder = tmp_path / "src"
    folder.mkdir()
    for name, side in (("a", 32), ("b", 32), ("c", 16), ("d", 30)):
        (folder / f"{name}.png").write_bytes(image_file(side, side, "RGB", seed=side))
    return folder


def expected(model: Any, blob: bytes) -> torch.Tensor:
    x = torch.from_numpy(decode_image_as_is(blob, 3, 10**6))[None] * 2 - 1
    with torch.inference_mode():
        encoded = model.encode(x)
    return encoded.latent_dist.mode() if hasattr(encoded, "latent_dist") else encoded.latents


@pytest.mark.parametrize(("name", "scale"), [("sd", False), ("sd", True), ("tiny", False)])
def test_latents_of_each_size_and_the_bad_size_in_errors(models, src, tmp_path, name, scale):
    folder, in_process = models
    flags = ("--scale",) if scale else ()
    assert encode(src, tmp_path / "out", folder / name, *flags) == 0
    got = rows(tmp_path / "out")
    assert [r["id"] for r in got] == ["a.png", "b.png", "c.png"]
    factor = 4  # both: three blocks, two stride-2 stages
    for row in got:
        z = expected(in_process[name], (src / row["id"]).read_bytes())[0]
        if scale:
            z = z * in_process[name].config.scaling_factor
        side = 32 if row["id"] != "c.png" else 16
        assert row["latent_shape"] == [4, side // factor, side // factor]
        latent = np.asarray(row["latent"]).reshape(row["latent_shape"])
        np.testing.assert_allclose(latent, z.numpy(), rtol=1e-4, atol=1e-5)
    assert {r["model"] for r in got} == {name}
    (error,) = [
        json.loads(x) for x in (tmp_path / "out" / "_errors.jsonl").read_text().splitlines()
    ]
    assert error["id"] == "d.png" and f"not a multiple of {factor}" in error["reason"]

"""The bundled weights as shipped: stored in float16, they still give the figures that
training measured in float32, and the sharp model shares the default's encoder and prior."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import settings_for
from vae_service.model import load_weights, save_weights
from vae_service.model.calibration import without_calibration
from vae_service.model.pretrained import BUNDLED_MODELS, DEFAULT_WEIGHTS
from vae_service.model.prior import PRIOR_PREFIX, PRIOR_TENSORS, FittedPrior
from vae_service.model.weights import Checkpoint
from vae_service.server.main import create_app
from vae_service.training.data import load_idx_split
from vae_service.training.metrics import evaluate_elbo

DATA = Path("/usr/share/datasets/fashion-mnist")
SHARP = BUNDLED_MODELS / "fashion-mnist-sharp.safetensors"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"Fashion-MNIST not installed at {DATA}")


@needs_data
def test_float16_default_reproduces_its_float32_test_elbo() -> None:
    """Under its learned prior, as vae-tune-prior measured it in float32 at the end."""
    ckpt = load_weights(DEFAULT_WEIGHTS)
    assert ckpt.metadata["storage"] == "float16"
    recorded = ckpt.metadata["prior_tuning"]["final_test"]
    prior = FittedPrior.from_checkpoint(ckpt)
    assert prior is not None and prior.learned
    images = load_idx_split(DATA, "test").images
    measured = evaluate_elbo(ckpt.model, images, log_prior=prior.log_prob)
    assert measured["neg_elbo"] == pytest.approx(recorded["neg_elbo"], abs=0.05)
    assert measured["kl"] == pytest.approx(recorded["kl"], abs=0.05)


def uncalibrated_sha256(ckpt: Checkpoint, folder: Path) -> str:
    """The SHA-256 of the file less its anomaly calibration: the bytes it had before
    vae-calibrate (weights files are canonical: equal content, equal bytes)."""
    meta, extra, _ = without_calibration(ckpt.metadata, ckpt.extra_tensors)
    meta = {k: v for k, v in meta.items() if k not in ("config", "format_version")}
    return load_weights(save_weights(folder / "bare.safetensors", ckpt.model, meta, extra)).sha256


@pytest.mark.skipif(not SHARP.is_file(), reason="no sharp model bundled")
def test_sharp_model_shares_the_default_encoder_and_prior(tmp_path: Path) -> None:
    """Fine-tuned from the default before either was calibrated; each has its own
    calibration since, as their decoders differ."""
    default, sharp = load_weights(DEFAULT_WEIGHTS), load_weights(SHARP)
    assert sharp.metadata["finetune"]["source_sha256"] == uncalibrated_sha256(default, tmp_path)
    enc = default.model.encoder.state_dict()
    assert all(torch.equal(v, sharp.model.encoder.state_dict()[k]) for k, v in enc.items())
    priors = [
        {k: v for k, v in c.extra_tensors.items() if k.startswith(PRIOR_PREFIX)}
        for c in (default, sharp)
    ]
    assert priors[0].keys() == priors[1].keys() == {PRIOR_PREFIX + n for n in PRIOR_TENSORS}
    assert all(torch.equal(v, priors[1][k]) for k, v in priors[0].items())


@pytest.fixture(scope="module")
def bundled_client() -> Iterator[TestClient]:
    """All bundled models served side by side from their folder, as the README says."""
    settings = settings_for(DEFAULT_WEIGHTS).model_copy(update={"model_dir": BUNDLED_MODELS})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_every_bundled_model_serves_side_by_side(bundled_client: TestClient) -> None:
    models = {m["name"]: m for m in bundled_client.get("/models").json()["models"]}
    assert set(models) == {"fashion-mnist", "fashion-mnist-sharp", "shapes"}
    assert all(m["state"] == "ready" for m in models.values())
    default = bundled_client.get("/model").json()
    assert default["name"] == "fashion-mnist"
    assert default["prior"]["fit"] == "learned" and default["prior"]["components"] == 30
    answer = bundled_client.get(
        "/models/shapes/sample", params={"n": 2, "seed": 1, "format": "png"}
    )
    with Image.open(io.BytesIO(answer.content)) as grid:
        assert grid.mode == "RGB"


def test_the_sharp_decoder_decodes_the_default_encoder_latents(
    bundled_client: TestClient, make_image: Callable[..., bytes]
) -> None:
    files = {"images": ("a.png", make_image(28, 28, "L"), "image/png")}
    default = bundled_client.post("/models/fashion-mnist/encode", files=files).json()
    sharp = bundled_client.post("/models/fashion-mnist-sharp/encode", files=files).json()
    assert default["mean"] == sharp["mean"]  # one encoder: one latent space
    decoded = bundled_client.post("/models/fashion-mnist-sharp/decode", json={"z": default["mean"]})
    assert decoded.status_code == 200

"""The bundled weights as shipped: stored in float16, they still give the figures that
training measured in float32, and the sharp model shares the default's encoder and prior."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model import load_weights
from model.data import load_idx_split
from model.metrics import evaluate_elbo
from model.pretrained import BUNDLED_MODELS, DEFAULT_WEIGHTS

DATA = Path("/usr/share/datasets/fashion-mnist")
SHARP = BUNDLED_MODELS / "fashion-mnist-sharp.safetensors"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"Fashion-MNIST not installed at {DATA}")


@needs_data
def test_float16_default_reproduces_its_float32_test_elbo() -> None:
    ckpt = load_weights(DEFAULT_WEIGHTS)
    assert ckpt.metadata["storage"] == "float16"
    recorded = ckpt.metadata["training"]["final_test"]  # measured in float32 at the end
    measured = evaluate_elbo(ckpt.model, load_idx_split(DATA, "test").images)
    assert measured["neg_elbo"] == pytest.approx(recorded["neg_elbo"], abs=0.05)
    assert measured["kl"] == pytest.approx(recorded["kl"], abs=0.05)


@pytest.mark.skipif(not SHARP.is_file(), reason="no sharp model bundled")
def test_sharp_model_shares_the_default_encoder_and_prior() -> None:
    default, sharp = load_weights(DEFAULT_WEIGHTS), load_weights(SHARP)
    assert sharp.metadata["finetune"]["source_sha256"] == default.sha256
    enc = default.model.encoder.state_dict()
    assert all(torch.equal(v, sharp.model.encoder.state_dict()[k]) for k, v in enc.items())
    assert default.extra_tensors.keys() == sharp.extra_tensors.keys()
    assert all(torch.equal(v, sharp.extra_tensors[k]) for k, v in default.extra_tensors.items())

"""POST /score and /models/{model}/score through the app's real lifespan: a calibrated
tiny model (vae-calibrate on synthetic IDX data) answers what score_images gives in
process, flags at ?fpr=, and the parts at ?k=; an uncalibrated one says what it lacks;
/models and /model say which is which; each bad input is its own 4xx."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from tests.conftest import image_file, settings_for
from vae_service.model import load_weights, save_weights
from vae_service.model.anomaly import (
    UNCALIBRATED_KIND,
    UNCALIBRATED_PART,
    Calibration,
    score_images,
)
from vae_service.model.prior import FittedPrior
from vae_service.server.main import create_app
from vae_service.server.runtime import SCORE_SEED
from vae_service.training import calibrate

NPY = {"content-type": "application/x-npy"}
CALIBRATED_K = 2


def calibrate_tiny(weights: Path, idx_dir: Path) -> Path:
    """``weights`` calibrated with vae-calibrate on the synthetic IDX data, in place."""
    flags = ["--fit-limit", "48", "--components", "2", "--k", str(CALIBRATED_K)]
    argv = [str(weights), "--data-dir", str(idx_dir), "--data", "fashion-mnist", *flags]
    assert calibrate.main(argv) == 0
    return weights


@pytest.fixture
def calibrated(tiny_weights: Path, idx_dir: Path) -> Path:
    return calibrate_tiny(tiny_weights, idx_dir)


@pytest.fixture
def scoring(calibrated: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(calibrated)), raise_server_exceptions=False) as c:
        yield c


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def scored(client: TestClient, array: np.ndarray, query: str = "") -> dict[str, Any]:
    r = client.post(f"/score{query}", content=npy(array), headers=NPY)
    assert r.status_code == 200, r.text
    return dict(r.json())


def in_process(weights: Path, array: np.ndarray, k: int) -> Any:
    ckpt = load_weights(weights)
    x = torch.from_numpy(array).float().div(255).unsqueeze(1)
    prior = FittedPrior.from_checkpoint(ckpt)
    calibration = Calibration.from_checkpoint(ckpt)
    return score_images(ckpt.model, x, calibration, k=k, seed=SCORE_SEED, prior=prior)


def test_calibrated_scores_equal_the_model_in_process(
    scoring: TestClient, calibrated: Path
) -> None:
    array = pixels(5)
    body = scored(scoring, array)
    expected = in_process(calibrated, array, CALIBRATED_K)
    assert body["calibrated"] and body["score_kind"] == "dose" and body["note"] is None
    got = body["scores"]
    assert np.allclose([s["score"] for s in got], expected.score.numpy(), atol=1e-4)
    assert np.allclose([s["p_value"] for s in got], expected.p_value.numpy(), atol=1e-9)
    for name, values in expected.parts.items():
        got_part = [s["parts"][name] for s in got]
        assert np.allclose(got_part, values.numpy(), rtol=1e-5, atol=1e-3), name
    assert body["calibration"]["k"] == CALIBRATED_K
    assert scored(scoring, array) == body  # the same image always scores the same


def test_images_scored_together_score_as_alone(scoring: TestClient) -> None:
    array = pixels(4, seed=1)
    together = [s["score"] for s in scored(scoring, array)["scores"]]
    alone = [scored(scoring, array[i : i + 1])["scores"][0]["score"] for i in range(4)]
    # Equal up to float32 kernels that differ by batch size, which the standardisation of
    # an untrained model's nearly constant statistics magnifies.
    assert np.allclose(together, alone, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("fpr", [0.01, 0.3, 0.9])
def test_the_flag_is_the_p_value_at_the_rate_and_the_threshold_splits_it(
    scoring: TestClient, fpr: float
) -> None:
    body = scored(scoring, pixels(8, seed=2), f"?fpr={fpr}")
    assert body["fpr"] == fpr
    for s in body["scores"]:
        assert s["anomalous"] == (s["p_value"] <= fpr)
        if body["threshold"] is not None:
            assert s["anomalous"] == (s["score"] > body["threshold"])


def test_the_score_stays_at_the_calibrated_k_and_the_parts_follow_k(
    scoring: TestClient, calibrated: Path
) -> None:
    array = pixels(3, seed=3)
    base, more = scored(scoring, array), scored(scoring, array, "?k=8")
    assert more["k"] == 8
    assert [s["score"] for s in more["scores"]] == [s["score"] for s in base["scores"]]
    expected = in_process(calibrated, array, 8).parts["iwae_nats"].numpy()
    got = [s["parts"]["iwae_nats"] for s in more["scores"]]
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-3)


def test_image_files_score_per_model_route_too(scoring: TestClient) -> None:
    files = [("images", (f"{i}.png", image_file(seed=i))) for i in range(2)]
    default = scoring.post("/score", files=files)
    named = scoring.post("/models/tiny/score", files=files)
    assert default.status_code == named.status_code == 200, named.text
    assert default.json() == named.json()
    assert named.headers["x-model"] == "tiny"


def test_an_uncalibrated_model_answers_the_score_and_says_what_it_lacks(
    client: TestClient,
) -> None:
    body = scored(client, pixels(2))
    assert not body["calibrated"] and body["score_kind"] == UNCALIBRATED_KIND
    assert "vae-calibrate" in body["note"] and body["threshold"] is None
    for s in body["scores"]:
        assert s["p_value"] is None and s["anomalous"] is None
        assert s["score"] == pytest.approx(s["parts"][UNCALIBRATED_PART])


def test_models_and_model_say_whether_calibrated(scoring: TestClient, client: TestClient) -> None:
    assert scoring.get("/models").json()["models"][0]["calibrated"] is True
    assert scoring.get("/model").json()["calibration"]["kind"] == "dose"
    assert client.get("/models").json()["models"][0]["calibrated"] is False
    assert client.get("/model").json()["calibration"] is None


# Bad input: each its own 4xx, and the server keeps serving.


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("?k=0", "greater than or equal to 1"),
        ("?k=65", "VAE_MAX_SCORE_SAMPLES"),
        ("?k=two", "valid integer"),
        ("?fpr=0", "greater than 0"),
        ("?fpr=1", "less than 1"),
        ("?fpr=nan", "finite number"),
    ],
)
def test_bad_query_is_422(client: TestClient, query: str, words: str) -> None:
    r = client.post(f"/score{query}", content=npy(pixels(1)), headers=NPY)
    assert r.status_code == 422, r.text
    assert words in str(r.json()["detail"])


def test_not_an_image_is_400(client: TestClient) -> None:
    r = client.post("/score", files=[("images", ("x.png", b"not an image"))])
    assert r.status_code == 400, r.text


def test_wrong_content_type_is_415(client: TestClient) -> None:
    r = client.post("/score", content=b"{}", headers={"content-type": "text/plain"})
    assert r.status_code == 415, r.text


def test_too_many_images_is_422(client: TestClient) -> None:
    r = client.post("/score", content=npy(pixels(9)), headers=NPY)  # the limit is 8
    assert r.status_code == 422 and "8" in r.json()["detail"], r.text


def test_wrong_image_shape_is_422(client: TestClient) -> None:
    r = client.post("/score", content=npy(pixels(1)[:, :20]), headers=NPY)
    assert r.status_code == 422, r.text
    assert client.post("/score", content=npy(pixels(1)), headers=NPY).status_code == 200


def test_a_stale_calibration_stops_the_model_loading(calibrated: Path, tmp_path: Path) -> None:
    ckpt = load_weights(calibrated)
    with torch.no_grad():
        next(ckpt.model.parameters()).add_(0.5)  # the model changed; its calibration did not
    folder = tmp_path / "models"
    folder.mkdir()
    stale = folder / "stale.safetensors"
    meta = {k: v for k, v in ckpt.metadata.items() if k not in ("config", "format_version")}
    save_weights(stale, ckpt.model, meta, ckpt.extra_tensors)
    settings = settings_for(calibrated).model_copy(update={"weights": None, "model_dir": folder})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        entry = c.get("/models").json()["models"][0]
    assert entry["state"] == "failed" and "rerun vae-calibrate" in entry["error"]

"""/score through the clients users have: the encoder's score and p_value outputs over
the Open Inference Protocol with the real ``tritonclient.http``, and ``VAEClient.score``,
against a calibrated tiny model on uvicorn; both equal the route's answers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import make_tiny_model, save_tiny_weights, settings_for, write_idx_dir
from tests.test_score import calibrate_tiny, npy, pixels
from vae_service.client import VAEClient
from vae_service.server.settings import Settings

ServeInThread = Callable[[Settings], contextlib.AbstractContextManager[str]]


@pytest.fixture(scope="module")
def address(
    tmp_path_factory: pytest.TempPathFactory, serve_in_thread: ServeInThread
) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("score-clients")
    weights = calibrate_tiny(save_tiny_weights(folder, make_tiny_model()), write_idx_dir(folder))
    with serve_in_thread(settings_for(weights)) as where:
        yield where


@pytest.fixture(scope="module")
def route(address: str) -> Callable[[np.ndarray], dict]:
    def scored(array: np.ndarray) -> dict:
        with httpx.Client(base_url=f"http://{address}", timeout=30) as http:
            r = http.post(
                "/score", content=npy(array), headers={"content-type": "application/x-npy"}
            )
        assert r.status_code == 200, r.text
        return dict(r.json())

    return scored


def column(answer: dict, name: str) -> list[float]:
    return [s[name] for s in answer["scores"]]


@pytest.mark.parametrize("binary", [True, False])
def test_the_encoder_outputs_the_routes_score_and_p_value(
    address: str, route: Callable[[np.ndarray], dict], binary: bool
) -> None:
    array = pixels(3, seed=5)
    x = triton.InferInput("images", [3, 1, 28, 28], "FP32")
    x.set_data_from_numpy((array[:, None] / 255).astype(np.float32), binary_data=binary)
    wanted = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("score", "p_value")]
    with contextlib.closing(triton.InferenceServerClient(address)) as client:
        result = client.infer("tiny-encoder", [x], outputs=wanted)
        names = [o["name"] for o in client.get_model_metadata("tiny-encoder")["outputs"]]
    answer = route(array)
    assert np.allclose(result.as_numpy("score"), column(answer, "score"), atol=1e-5)
    assert np.allclose(result.as_numpy("p_value"), column(answer, "p_value"), atol=1e-6)
    assert names == ["mean", "logvar", "z", "score", "p_value"]


def test_scores_come_only_on_request_and_unknown_outputs_are_refused(address: str) -> None:
    x = triton.InferInput("images", [1, 1, 28, 28], "FP32")
    x.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float32))
    with contextlib.closing(triton.InferenceServerClient(address)) as client:
        plain = client.infer("tiny-encoder", [x])
        assert plain.as_numpy("score") is None and plain.as_numpy("mean") is not None
        with pytest.raises(InferenceServerException, match="no output named 'anomalous'"):
            client.infer("tiny-encoder", [x], outputs=[triton.InferRequestedOutput("anomalous")])


def test_the_python_client_scores_arrays_and_files(
    address: str, route: Callable[[np.ndarray], dict]
) -> None:
    array = pixels(2, seed=6)
    with VAEClient(f"http://{address}") as vae:
        answer = vae.score(array, fpr=0.5)
        assert answer["fpr"] == 0.5 and answer["calibrated"]
        assert column(answer, "score") == column(route(array), "score")
        bound = vae.for_model("tiny").score(array, k=3)
        assert bound["k"] == 3 and column(bound, "score") == column(answer, "score")

"""The model repository (VAE_MODEL_DIR) through the app's real lifespan, on tiny
models in each test's own folder, polled every 50 ms: several models side by side,
the default model, files that appear, change, break and go, the admin reload, and a
request in flight during a swap. The load test is tests/test_repository_swap.py."""

from __future__ import annotations

import base64
import functools
import gc
import hashlib
import io
import logging
import os
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from tests.conftest import AUTO_BACKEND, TINY, image_file, settings_for
from vae_service.model import VAE, VAEConfig, save_weights
from vae_service.model.prior import fit_prior
from vae_service.model.prior_files import attach_prior
from vae_service.server.main import create_app
from vae_service.server.repository import ModelRepository
from vae_service.server.settings import Settings

POLL_S = 0.05
ADMIN = "admin-key-for-tests"
WIDE = VAEConfig(image_size=28, channels=1, latent_dim=6, widths=(4, 8), hidden_dim=16)
META = {"data": {"name": "synthetic", "shape": [1, 28, 28]}, "training": {"epochs": 0}}
Z = {"z": [[0.5, -0.25, 1.0, 0.0]]}
MODEL_ROUTES = ["encode", "decode", "sample", "reconstruct", "interpolate"]


# --- helpers -------------------------------------------------------------------------


@functools.cache
def weights_bytes(seed: int, config: VAEConfig = TINY) -> bytes:
    """A randomly initialised weights file's bytes (``seed``: which random weights)."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        path = save_weights(Path(scratch) / "w.safetensors", VAE(config).eval(), META)
        return path.read_bytes()


def put(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as ``folder/name`` atomically: a hidden temp file, then os.replace."""
    target = folder / name
    temp = folder / f".{name}.tmp"
    temp.write_bytes(data)
    os.replace(temp, target)
    return target


def add_model(folder: Path, name: str, seed: int, config: VAEConfig = TINY) -> Path:
    return put(folder, f"{name}.safetensors", weights_bytes(seed, config))


def sha(path_or_data: Path | bytes) -> str:
    data = path_or_data.read_bytes() if isinstance(path_or_data, Path) else path_or_data
    return hashlib.sha256(data).hexdigest()


def repo_settings(folder: Path, **changes: Any) -> Settings:
    """settings_for's small limits, serving ``folder`` as the model repository."""
    update = {"model_dir": folder, "model_poll_s": POLL_S, **changes}
    return settings_for(folder / "unused.safetensors").model_copy(update=update)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(POLL_S / 2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def listed(client: TestClient) -> dict[str, dict[str, Any]]:
    """GET /models, by name."""
    reply = client.get("/models")
    assert reply.status_code == 200, reply.text
    return {m["name"]: m for m in reply.json()["models"]}


def metric(client: TestClient, name: str, **labels: str) -> float:
    """A sample's value in /metrics (0 when the series does not exist)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def served(reply: Any) -> tuple[str, str]:
    """(X-Model, X-Model-SHA256) of a 200 answer."""
    assert reply.status_code == 200, reply.text
    return reply.headers["x-model"], reply.headers["x-model-sha256"]


def b64_image(seed: int = 0) -> str:
    return base64.b64encode(image_file(seed=seed)).decode()


def model_call(client: TestClient, route: str, prefix: str = "", headers: Any = None) -> Any:
    """A valid request to one of the model routes, under ``prefix`` (/models/NAME)."""
    url = f"{prefix}/{route}"
    if route == "sample":
        return client.get(f"{url}?n=2&seed=3", headers=headers)
    if route == "decode":
        return client.post(url, json=Z, headers=headers)
    if route == "interpolate":
        return client.post(f"{url}?steps=3", json={"z": [[0.0] * 4, [1.0] * 4]}, headers=headers)
    return client.post(url, json={"images": [b64_image()]}, headers=headers)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


@pytest.fixture
def serve() -> Iterator[Callable[[Settings], TestClient]]:
    """``serve(settings)`` -> a client of a started app, closed after the test."""
    clients: list[TestClient] = []

    def start(settings: Settings) -> TestClient:
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


class Records(logging.Handler):
    """The log records it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def repository(client: TestClient) -> ModelRepository:
    repo: ModelRepository = client.app.state.repository  # type: ignore[attr-defined]
    return repo


# --- one repository of several models, read only --------------------------------------


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fashion-mnist and other (same config, other weights), wide (latent_dim 6),
    fitted (a fitted prior), and files that are not models."""
    folder = tmp_path_factory.mktemp("shelf")
    add_model(folder, "fashion-mnist", seed=0)
    add_model(folder, "other", seed=1)
    add_model(folder, "wide", seed=2, config=WIDE)
    plain = add_model(folder, ".plain", seed=3)  # hidden: not a model either
    latents = torch.randn((90, 4), generator=torch.Generator().manual_seed(5)) * 2
    attach_prior(plain, fit_prior(latents, 3), folder / "fitted.safetensors")
    plain.unlink()
    (folder / "README.txt").write_text("not a model")
    (folder / "Upper.safetensors").write_bytes(weights_bytes(4))
    (folder / "with space.safetensors").write_bytes(weights_bytes(4))
    (folder / "half.safetensors.part").write_bytes(b"partial")
    (folder / "folder.safetensors").mkdir()
    return folder


@pytest.fixture(scope="module")
def shelf_client(shelf: Path) -> Iterator[TestClient]:
    settings = repo_settings(shelf, admin_keys=[SecretStr(ADMIN)])
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_two_models_answer_the_same_input_differently(
    shelf_client: TestClient, shelf: Path
) -> None:
    for route in MODEL_ROUTES:
        a = model_call(shelf_client, route, "/models/fashion-mnist")
        b = model_call(shelf_client, route, "/models/other")
        assert served(a) == ("fashion-mnist", sha(shelf / "fashion-mnist.safetensors")), route
        assert served(b) == ("other", sha(shelf / "other.safetensors")), route
        assert a.json() != b.json(), route
        assert len(a.headers["x-model-sha256"]) == 64


def test_each_model_checks_inputs_against_its_own_config(
    shelf_client: TestClient, shelf: Path
) -> None:
    wide = shelf_client.post("/models/wide/decode", json={"z": [[0.0] * 6]})
    assert served(wide) == ("wide", sha(shelf / "wide.safetensors"))
    short = shelf_client.post("/models/wide/decode", json=Z)  # 4 numbers, wide wants 6
    assert short.status_code == 422


def test_models_lists_every_model_and_its_version(shelf_client: TestClient, shelf: Path) -> None:
    reply = shelf_client.get("/models").json()
    assert reply["default"] == "fashion-mnist"
    models = {m["name"]: m for m in reply["models"]}
    assert sorted(models) == ["fashion-mnist", "fitted", "other", "wide"]
    for name, model in models.items():
        assert model == {
            "name": name,
            "default": name == "fashion-mnist",
            "state": "ready",
            "error": None,
            "sha256": sha(shelf / f"{name}.safetensors"),
            "image_shape": [1, 28, 28],
            "latent_dim": 6 if name == "wide" else 4,
            "prior": "fitted" if name == "fitted" else "standard",
            "backend": AUTO_BACKEND,
            "family": "ours",
            "latent_shape": [6 if name == "wide" else 4],
            "downsampling": None,
            "dtype": "float32",
            "calibrated": False,
        }


def test_model_info_per_model(shelf_client: TestClient, shelf: Path) -> None:
    info = shelf_client.get("/models/wide")
    assert served(info) == ("wide", sha(shelf / "wide.safetensors"))
    assert info.json()["name"] == "wide" and info.json()["latent_dim"] == 6
    assert info.json()["sha256"] == sha(shelf / "wide.safetensors")


def test_files_that_are_not_models_are_ignored(shelf_client: TestClient) -> None:
    names = set(listed(shelf_client))
    assert not names & {"readme", "upper", "Upper", "with space", "half", "folder", ".plain"}


def test_a_file_that_is_not_a_model_is_logged_once(model_dir: Path, serve: Any) -> None:
    add_model(model_dir, "a", seed=0)
    client = serve(repo_settings(model_dir))
    handler = Records()
    records = handler.records
    logging.getLogger("service").addHandler(handler)  # after start-up's logging set-up
    try:
        (model_dir / "notes.txt").write_text("hello")
        wait_until(
            lambda: any("notes.txt" in r.getMessage() for r in records), "the ignoring log line"
        )
        time.sleep(POLL_S * 6)  # several more scans
    finally:
        logging.getLogger("service").removeHandler(handler)
    ignoring = [r.getMessage() for r in records if "notes.txt" in r.getMessage()]
    assert len(ignoring) == 1 and "ignoring" in ignoring[0], ignoring
    assert set(listed(client)) == {"a"}


def test_the_default_model_is_fashion_mnist_among_several(shelf_client: TestClient) -> None:
    assert [n for n, m in listed(shelf_client).items() if m["default"]] == ["fashion-mnist"]
    assert served(shelf_client.get("/sample?n=1"))[0] == "fashion-mnist"


@pytest.mark.parametrize("route", MODEL_ROUTES)
def test_unprefixed_routes_serve_the_default_model(
    shelf_client: TestClient, shelf: Path, route: str
) -> None:
    plain = model_call(shelf_client, route)
    prefixed = model_call(shelf_client, route, "/models/fashion-mnist")
    assert served(plain) == ("fashion-mnist", sha(shelf / "fashion-mnist.safetensors"))
    if route != "encode":  # the rest are deterministic here (encode's seed is drawn)
        assert plain.json() == prefixed.json()
    else:
        assert plain.json()["mean"] == prefixed.json()["mean"]


def test_unprefixed_model_info_is_the_default_model(shelf_client: TestClient, shelf: Path) -> None:
    info = shelf_client.get("/model")
    assert served(info) == ("fashion-mnist", sha(shelf / "fashion-mnist.safetensors"))
    assert info.json()["name"] == "fashion-mnist"


@pytest.mark.parametrize("route", MODEL_ROUTES)
def test_an_unknown_model_is_404_listing_the_known_ones(
    shelf_client: TestClient, route: str
) -> None:
    reply = model_call(shelf_client, route, "/models/nope")
    assert reply.status_code == 404
    detail = reply.json()["detail"]
    assert "nope" in detail
    assert all(name in detail for name in ("fashion-mnist", "fitted", "other", "wide"))
    assert "x-model" not in reply.headers


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/models/nope"),
        ("GET", "/models/nope/ready"),
        ("POST", "/models/nope/reload"),
    ],
)
def test_an_unknown_model_is_404_on_the_model_routes(
    shelf_client: TestClient, method: str, path: str
) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    reply = shelf_client.request(method, path, headers=auth)
    assert reply.status_code == 404
    assert "fashion-mnist" in reply.json()["detail"] and "other" in reply.json()["detail"]


def test_model_ready_is_200_for_a_ready_model(shelf_client: TestClient) -> None:
    reply = shelf_client.get("/models/other/ready")
    assert reply.status_code == 200 and reply.json() == {"status": "ready"}
    assert shelf_client.get("/readyz").status_code == 200


# --- the default model ---------------------------------------------------------------


def test_the_default_model_is_the_only_model(model_dir: Path, serve: Any) -> None:
    path = add_model(model_dir, "solo", seed=1)
    client = serve(repo_settings(model_dir))
    assert client.get("/models").json()["default"] == "solo"
    assert served(client.get("/sample?n=1")) == ("solo", sha(path))
    assert client.get("/readyz").status_code == 200


def test_vae_default_model_names_the_default(model_dir: Path, serve: Any) -> None:
    for seed, name in enumerate(("fashion-mnist", "a", "b")):
        add_model(model_dir, name, seed)
    client = serve(repo_settings(model_dir, default_model="b"))
    assert client.get("/models").json()["default"] == "b"
    assert listed(client)["b"]["default"] and not listed(client)["fashion-mnist"]["default"]
    assert served(client.post("/decode", json=Z)) == ("b", sha(model_dir / "b.safetensors"))


def test_readyz_is_503_until_the_default_model_appears(model_dir: Path, serve: Any) -> None:
    add_model(model_dir, "a", seed=0)
    add_model(model_dir, "b", seed=1)
    client = serve(repo_settings(model_dir))  # two models, neither is fashion-mnist
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "fashion-mnist" in ready.json()["detail"]
    assert ready.headers["retry-after"]
    assert client.post("/decode", json=Z).status_code == 503
    assert served(client.post("/models/a/decode", json=Z))[0] == "a"
    path = add_model(model_dir, "fashion-mnist", seed=2)
    wait_until(lambda: client.get("/readyz").status_code == 200, "/readyz 200")
    assert served(client.post("/decode", json=Z)) == ("fashion-mnist", sha(path))


# --- files that appear, change, break and go ------------------------------------------


def test_a_new_file_is_served_after_a_scan(model_dir: Path, serve: Any) -> None:
    add_model(model_dir, "a", seed=0)
    client = serve(repo_settings(model_dir))
    assert client.get("/models/b/ready").status_code == 404
    path = add_model(model_dir, "b", seed=1)
    wait_until(lambda: client.get("/models/b/ready").status_code == 200, "model b ready")
    assert served(client.post("/models/b/decode", json=Z)) == ("b", sha(path))
    assert listed(client)["b"]["state"] == "ready"
    assert metric(client, "vae_model_loads_total", model="b", outcome="success") == 1


def test_a_replaced_file_is_swapped_in(model_dir: Path, serve: Any) -> None:
    first = add_model(model_dir, "a", seed=0)
    old_sha = sha(first)
    client = serve(repo_settings(model_dir))
    before = client.post("/models/a/decode", json=Z)
    assert served(before) == ("a", old_sha)
    new = weights_bytes(seed=1)
    put(model_dir, "a.safetensors", new)
    wait_until(lambda: listed(client)["a"]["sha256"] == sha(new), "the new version")
    after = client.post("/models/a/decode", json=Z)
    assert served(after) == ("a", sha(new))
    assert after.json() != before.json()
    assert metric(client, "vae_model_swaps_total", model="a") == 1
    assert metric(client, "vae_model_loads_total", model="a", outcome="success") == 2


def test_a_swapped_out_version_is_released(model_dir: Path, serve: Any) -> None:
    """Its batcher thread ends and its weights are freed, also for the version loaded
    at start-up, which the lifespan's gc.freeze() keeps from the cycle collector."""
    add_model(model_dir, "a", seed=0)
    client = serve(repo_settings(model_dir))
    old = repository(client).entries["a"].live
    assert old is not None
    worker, model = old.runtime.batcher._worker, weakref.ref(old.runtime.model)
    del old
    new = weights_bytes(seed=1)
    put(model_dir, "a.safetensors", new)
    wait_until(lambda: not worker.is_alive(), "the old version's batcher to stop")
    wait_until(lambda: gc.collect() >= 0 and model() is None, "the old weights to be freed")


def test_a_corrupt_file_leaves_the_old_version_serving(model_dir: Path, serve: Any) -> None:
    good = add_model(model_dir, "a", seed=0)
    good_sha, good_bytes = sha(good), good.read_bytes()
    client = serve(repo_settings(model_dir))
    corrupt = good_bytes[: len(good_bytes) // 2]
    put(model_dir, "a.safetensors", corrupt)
    wait_until(lambda: listed(client)["a"]["error"] is not None, "the failed load in /models")
    model = listed(client)["a"]
    assert model["state"] == "ready" and model["sha256"] == good_sha
    assert "a.safetensors" in model["error"]
    assert metric(client, "vae_model_loads_total", model="a", outcome="failure") == 1
    for route in MODEL_ROUTES:
        assert served(model_call(client, route, "/models/a")) == ("a", good_sha)
        assert served(model_call(client, route)) == ("a", good_sha)  # a is the only model
    time.sleep(POLL_S * 4)  # an unchanged bad file is not tried again on every scan
    assert metric(client, "vae_model_loads_total", model="a", outcome="failure") == 1
    assert sha(corrupt) not in {m["sha256"] for m in listed(client).values()}


def test_a_good_file_after_a_corrupt_one_serves_and_clears_the_error(
    model_dir: Path, serve: Any
) -> None:
    good = add_model(model_dir, "a", seed=0)
    client = serve(repo_settings(model_dir))
    put(model_dir, "a.safetensors", good.read_bytes()[:100])
    wait_until(lambda: listed(client)["a"]["error"] is not None, "the failed load")
    fixed = weights_bytes(seed=1)
    put(model_dir, "a.safetensors", fixed)
    wait_until(lambda: listed(client)["a"]["sha256"] == sha(fixed), "the fixed version")
    assert listed(client)["a"]["error"] is None
    assert served(client.post("/models/a/decode", json=Z)) == ("a", sha(fixed))


def test_a_corrupt_new_model_fails_and_never_serves(model_dir: Path, serve: Any) -> None:
    add_model(model_dir, "a", seed=0)
    client = serve(repo_settings(model_dir))
    put(model_dir, "broken.safetensors", b"\x00" * 64)
    wait_until(lambda: "broken" in listed(client), "the broken model in /models")
    wait_until(lambda: listed(client)["broken"]["state"] == "failed", "its failed state")
    broken = listed(client)["broken"]
    assert broken["sha256"] is None and "broken.safetensors" in broken["error"]
    assert client.get("/models/broken/ready").status_code == 503
    reply = client.post("/models/broken/decode", json=Z)
    assert reply.status_code == 503 and "x-model" not in reply.headers
    assert metric(client, "vae_model_loads_total", model="broken", outcome="failure") == 1
    assert client.get("/readyz").status_code == 200  # a, the default, is unaffected


def test_a_removed_file_is_unloaded(model_dir: Path, serve: Any) -> None:
    add_model(model_dir, "a", seed=0)
    gone = add_model(model_dir, "b", seed=1)
    client = serve(repo_settings(model_dir, default_model="a"))
    worker = repository(client).entries["b"].live.runtime.batcher._worker  # type: ignore[union-attr]
    assert served(client.post("/models/b/decode", json=Z))[0] == "b"
    gone.unlink()
    wait_until(lambda: client.get("/models/b/ready").status_code == 404, "b unloaded")
    reply = client.post("/models/b/decode", json=Z)
    assert reply.status_code == 404 and "a" in reply.json()["detail"]
    assert set(listed(client)) == {"a"}
    assert metric(client, "vae_model_unloads_total", model="b") == 1
    assert 'vae_queue_rows{model="b"}' not in client.get("/metrics").text
    wait_until(lambda: not worker.is_alive(), "b's batcher thread to stop")
    assert served(client.post("/decode", json=Z))[0] == "a"


# --- the admin reload ----------------------------------------------------------------


def test_reload_is_403_without_admin_keys(model_dir: Path, serve: Any) -> None:
    add_model(model_dir, "a", seed=0)
    client = serve(repo_settings(model_dir))
    reply = client.post("/models/a/reload", headers={"Authorization": "Bearer anything"})
    assert reply.status_code == 403 and "VAE_ADMIN_KEYS" in reply.json()["detail"]


def test_reload_is_403_with_a_wrong_key(model_dir: Path, serve: Any) -> None:
    add_model(model_dir, "a", seed=0)
    client = serve(repo_settings(model_dir, admin_keys=[SecretStr(ADMIN)]))
    assert client.post("/models/a/reload").status_code == 403
    wrong = client.post("/models/a/reload", headers={"Authorization": "Bearer not-it"})
    assert wrong.status_code == 403


def test_reload_with_the_admin_key_swaps_now(model_dir: Path, serve: Any) -> None:
    add_model(model_dir, "a", seed=0)
    # A long poll: only the reload can pick the change up within the test.
    client = serve(repo_settings(model_dir, model_poll_s=60, admin_keys=[SecretStr(ADMIN)]))
    new = weights_bytes(seed=1)
    put(model_dir, "a.safetensors", new)
    reply = client.post("/models/a/reload", headers={"Authorization": f"Bearer {ADMIN}"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["sha256"] == sha(new) and reply.json()["state"] == "ready"
    assert served(client.post("/models/a/decode", json=Z)) == ("a", sha(new))
    assert metric(client, "vae_model_swaps_total", model="a") == 1


def test_the_admin_key_passes_the_api_key_check(model_dir: Path, serve: Any) -> None:
    add_model(model_dir, "a", seed=0)
    settings = repo_settings(
        model_dir, api_keys=[SecretStr("user-key")], admin_keys=[SecretStr(ADMIN)]
    )
    client = serve(settings)
    admin, user = {"Authorization": f"Bearer {ADMIN}"}, {"Authorization": "Bearer user-key"}
    assert client.post("/models/a/reload").status_code == 401
    assert client.post("/models/a/reload", headers=user).status_code == 403
    assert client.post("/models/a/reload", headers=admin).status_code == 200
    assert client.get("/models", headers=admin).status_code == 200
    assert served(client.post("/models/a/decode", json=Z, headers=admin))[0] == "a"


def test_reload_of_a_corrupt_file_is_422_and_the_old_version_serves(
    model_dir: Path, serve: Any
) -> None:
    good = add_model(model_dir, "a", seed=0)
    good_sha = sha(good)
    client = serve(repo_settings(model_dir, model_poll_s=60, admin_keys=[SecretStr(ADMIN)]))
    put(model_dir, "a.safetensors", good.read_bytes()[:1000])
    reply = client.post("/models/a/reload", headers={"Authorization": f"Bearer {ADMIN}"})
    assert reply.status_code == 422 and "a.safetensors" in reply.json()["detail"]
    assert served(client.post("/models/a/decode", json=Z)) == ("a", good_sha)
    assert listed(client)["a"]["error"] is not None
    assert metric(client, "vae_model_loads_total", model="a", outcome="failure") == 1


# --- a request in flight during a swap -----------------------------------------------


def test_a_request_in_flight_during_a_swap_finishes_on_the_old_version(
    model_dir: Path, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_path = add_model(model_dir, "a", seed=0)
    old_sha = sha(old_path)
    client = serve(repo_settings(model_dir))
    old = repository(client).entries["a"].live
    assert old is not None
    old_backend = old.runtime.backend  # torch or onnxruntime, whichever serves it
    with torch.inference_mode():  # npy answers are N x H x W x C
        (images,) = old_backend.decode(torch.tensor(Z["z"]))
    expected = images.numpy().transpose(0, 2, 3, 1)
    entered, release = threading.Event(), threading.Event()
    decode = old_backend.decode

    def held_decode(z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        entered.set()
        assert release.wait(20), "never released"
        return decode(z)

    monkeypatch.setattr(old_backend, "decode", held_decode)
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(client.post, "/decode?format=npy", json=Z)
        assert entered.wait(10), "the request never reached the old version's batch"
        new = weights_bytes(seed=1)
        put(model_dir, "a.safetensors", new)
        wait_until(lambda: listed(client)["a"]["sha256"] == sha(new), "the swap")
        after = client.post("/decode", json=Z)
        assert served(after) == ("a", sha(new))  # while the old one still computes
        assert not in_flight.done()
        assert old.runtime.ready  # held by the request: not closed yet
        release.set()
        reply = in_flight.result(timeout=20)
    assert served(reply) == ("a", old_sha)
    images = np.load(io.BytesIO(reply.content))
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-6)
    wait_until(lambda: not old.runtime.ready, "the old version to be closed once released")
    assert served(client.post("/decode", json=Z)) == ("a", sha(new))


# --- one model, no VAE_MODEL_DIR ------------------------------------------------------


def test_single_model_mode_serves_vae_weights(tiny_weights: Path, serve: Any) -> None:
    client = serve(settings_for(tiny_weights))
    models = client.get("/models").json()
    assert models["default"] == "tiny"
    assert [(m["name"], m["state"], m["sha256"]) for m in models["models"]] == [
        ("tiny", "ready", sha(tiny_weights))
    ]
    for route in MODEL_ROUTES:
        assert served(model_call(client, route)) == ("tiny", sha(tiny_weights))
        assert served(model_call(client, route, "/models/tiny")) == ("tiny", sha(tiny_weights))
    assert client.get("/readyz").status_code == 200
    assert client.get("/model").json()["sha256"] == sha(tiny_weights)


def test_reload_works_on_vae_weights(tiny_weights: Path, serve: Any) -> None:
    client = serve(settings_for(tiny_weights).model_copy(update={"admin_keys": [SecretStr(ADMIN)]}))
    old_sha = sha(tiny_weights)
    new = weights_bytes(seed=7)
    put(tiny_weights.parent, tiny_weights.name, new)
    time.sleep(0.2)  # no folder is watched in this mode: nothing changes by itself
    assert served(client.post("/decode", json=Z)) == ("tiny", old_sha)
    reply = client.post("/models/tiny/reload", headers={"Authorization": f"Bearer {ADMIN}"})
    assert reply.status_code == 200 and reply.json()["sha256"] == sha(new)
    assert served(client.post("/decode", json=Z)) == ("tiny", sha(new))

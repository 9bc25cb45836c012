"""Liveness, readiness, model metadata, the OpenAPI page, start-up and its failures."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from vae_service.model import VAE, VAEConfig, WeightsError, save_weights
from vae_service.model.pretrained import DEFAULT_WEIGHTS
from vae_service.model.weights import encode_metadata, read_safetensors
from vae_service.server.cli import main as serve_main
from vae_service.server.main import create_app
from vae_service.server.settings import Settings, get_settings
from vae_service.training.data import IDX_DIRS, load_idx_split

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60
# Predicting the mean test image scores 10.6 dB; a 2-epoch checkpoint of the default
# training run scored 18.1 dB on these, the first 256 test images.
MIN_PSNR_DB = 18.0


def serve_command() -> list[str]:
    """The installed console script when there is one, else the same entry point."""
    script = shutil.which("vae-serve")
    return [script] if script else [sys.executable, "-m", "vae_service.server.cli"]


def run_serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    merged = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run(
        [*serve_command(), *args],
        env=merged,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        cwd=REPO,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_healthz_answers_before_and_after_loading(api_settings: Settings) -> None:
    app = create_app(api_settings)
    assert TestClient(app).get("/healthz").json() == {"status": "ok"}
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200


def test_readyz_is_503_until_the_model_is_loaded(api_settings: Settings) -> None:
    app = create_app(api_settings)
    before = TestClient(app).get("/readyz")
    assert before.status_code == 503 and "not loaded" in before.json()["detail"]
    assert before.headers["retry-after"] == "1"
    with TestClient(app) as client:
        assert client.get("/readyz").json() == {"status": "ready"}
    assert TestClient(app).get("/readyz").status_code == 503  # after shutdown


def test_model_endpoints_are_503_until_loaded(api_settings: Settings) -> None:
    client = TestClient(create_app(api_settings))
    assert client.post("/decode", json={"z": [[0, 0, 0, 0]]}).status_code == 503
    assert client.get("/sample").status_code == 503
    assert client.get("/model").status_code == 503


def test_model_describes_the_served_weights(client: TestClient, served_weights: Path) -> None:
    info = client.get("/model").json()
    assert info["sha256"] == hashlib.sha256(served_weights.read_bytes()).hexdigest()
    assert info["weights"] == served_weights.name
    assert (info["latent_dim"], info["image_size"], info["channels"]) == (4, 28, 1)
    assert info["device"] == "cpu" and info["format_version"] == 1
    assert info["config"]["widths"] == [4, 8]
    assert info["data"]["name"] == "synthetic" and info["training"]["epochs"] == 0


def test_openapi_documents_bodies_and_examples(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    encode_body = spec["paths"]["/encode"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(encode_body)
    assert "examples" in encode_body["application/json"]["schema"]["properties"]["images"]
    schemas = spec["components"]["schemas"]
    for name in ("EncodeResponse", "SampleResponse", "ModelInfo"):
        assert name in schemas
    decode_body = spec["paths"]["/decode"]["post"]["requestBody"]["content"]["application/json"]
    assert decode_body["schema"]["title"] == "DecodeRequest"  # written in place, like /encode's
    assert decode_body["schema"]["required"] == ["z"]
    assert "413" in spec["paths"]["/encode"]["post"]["responses"]


def test_unexpected_error_is_a_generic_500(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = client.app.state.repository.serving().runtime  # type: ignore[attr-defined]

    async def broken(z: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(runtime, "decode", broken)
    reply = client.post("/decode", json={"z": [[0, 0, 0, 0]]})
    assert reply.status_code == 500
    assert reply.json() == {"detail": "internal server error"}


def test_lifespan_refuses_missing_weights(tmp_path: Path) -> None:
    app = create_app(Settings(weights=tmp_path / "absent.safetensors", device="cpu"))
    with pytest.raises(WeightsError, match="file not found"), TestClient(app):
        pass


def test_building_the_app_does_not_load_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``vae_service.server.main`` does at import, with weights that would fail to load."""
    monkeypatch.setenv("VAE_WEIGHTS", "/nonexistent.safetensors")
    get_settings.cache_clear()
    try:
        assert create_app().state.repository is None
    finally:
        get_settings.cache_clear()


def write_mismatched(path: Path) -> Path:
    """A valid weights file whose tensors do not fit its config."""
    model = VAE(VAEConfig(latent_dim=4, widths=(4, 8), hidden_dim=16))
    save_weights(path, model)
    tensors, meta, _ = read_safetensors(path)
    meta["config"]["latent_dim"] = 5
    save_file(tensors, str(path), metadata=encode_metadata(meta))
    return path


@pytest.mark.parametrize(
    ("kind", "message"), [("missing", "file not found"), ("corrupt", "corrupt")]
)
def test_bad_weights_stop_start_up_with_one_line(tmp_path: Path, kind: str, message: str) -> None:
    path = tmp_path / f"{kind}.safetensors"
    if kind == "corrupt":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    result = run_serve({"VAE_WEIGHTS": str(path), "VAE_PORT": str(free_port())})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vae-serve: cannot start:") and str(path) in lines[0]
    assert message in lines[0]


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """vae-serve in-process must stop before listening; fail instead of serving."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("vae-serve got as far as starting the server")

    monkeypatch.setattr("vae_service.server.cli.uvicorn.run", refuse)


@pytest.mark.usefixtures("no_server")
def test_mismatched_weights_stop_start_up(tmp_path: Path) -> None:
    path = write_mismatched(tmp_path / "mismatched.safetensors")
    with pytest.raises(SystemExit) as exited:
        serve_main(["--weights", str(path)])
    assert re.fullmatch(
        r"vae-serve: cannot start: \S+: tensor .* config expects .*", str(exited.value.code)
    )


@pytest.mark.usefixtures("no_server")
def test_unavailable_device_stops_start_up(tiny_weights: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU, so cuda:0 is available")
    with pytest.raises(SystemExit) as exited:
        serve_main(["--weights", str(tiny_weights), "--device", "cuda:0"])
    assert exited.value.code == (
        "vae-serve: cannot start: device 'cuda:0' requested; this machine has 0 CUDA devices"
    )


def wait_ready(port: int, process: subprocess.Popen[str]) -> httpx.Response:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).raise_for_status()
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"server did not become ready (exit status {process.poll()})")


@pytest.mark.parametrize("launcher", ["vae-serve", "uvicorn"])
def test_server_starts_and_answers(tiny_weights: Path, launcher: str) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "VAE_WEIGHTS": str(tiny_weights)}
    if launcher == "uvicorn":
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "vae_service.server.main:app",
            "--port",
            str(port),
        ]
    else:
        command = [*serve_command(), "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, env=env, cwd=REPO, text=True, stderr=subprocess.DEVNULL)
    try:
        assert wait_ready(port, process).json() == {"status": "ready"}
        sample = httpx.get(f"http://127.0.0.1:{port}/sample?n=2&seed=1", timeout=10)
        assert sample.status_code == 200 and len(sample.json()["images"]) == 2
    finally:
        process.terminate()
        process.wait(timeout=START_TIMEOUT_S)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


@pytest.mark.skipif(
    not DEFAULT_WEIGHTS.exists(),
    reason=f"{DEFAULT_WEIGHTS} is not trained yet (docs/training.md: default weights)",
)
def test_default_weights_reconstruct_fashion_mnist() -> None:
    test_images = load_idx_split(IDX_DIRS["fashion-mnist"], "test").images[:256]
    pngs = []
    for image in test_images:
        out = io.BytesIO()
        Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(out, "PNG")
        pngs.append(base64.b64encode(out.getvalue()).decode())
    with TestClient(create_app(Settings(weights=DEFAULT_WEIGHTS, device="cpu"))) as client:
        mean = client.post("/encode", json={"images": pngs}).json()["mean"]
        decoded = client.post("/decode", json={"z": mean}).json()["images"]
    recon = np.stack(
        [np.asarray(Image.open(io.BytesIO(base64.b64decode(s))), np.float32) / 255 for s in decoded]
    )
    assert psnr(recon, test_images[:, 0].numpy()) >= MIN_PSNR_DB

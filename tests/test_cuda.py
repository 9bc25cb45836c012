"""The service on a CUDA GPU, through its real lifespan, against the same service on the CPU.

Every test here needs CUDA and skips without it; benchmarks/gpu_check.sh runs them on a GPU
machine (``pytest -m cuda``). Tolerances, on posterior means and log-variances and on
images (in [0, 1]):

- fp32 on CUDA against the CPU: atol 1e-4, with TF32 off (IEEE float32 convolutions and
  matrix products: only the order of summation differs). With PyTorch's defaults, which
  the service keeps, cuDNN runs float32 convolutions in TF32 (10-bit mantissa): atol 1e-2.
- bf16 and fp16 (autocast) against fp32: atol 0.05 on images, 0.1 on the posterior (whose
  values reach ±6 with the bundled weights; bf16 keeps 8 significant bits, and CPU autocast
  measured gaps of 0.02), and never NaN or inf: a half-precision batch that overflows runs
  again in fp32 (server/runtime.py run_guarded).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from vae_service.model import load_weights
from vae_service.model.pretrained import DEFAULT_WEIGHTS
from vae_service.server.main import create_app
from vae_service.server.settings import Settings

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU; benchmarks/gpu_check.sh runs these on one",
    ),
]

FP32_ATOL = 1e-4  # TF32 off
TF32_ATOL = 1e-2  # PyTorch's default: TF32 convolutions
# bf16 / fp16 against fp32: images, and the posterior ("encode")
HALF_ATOL = {"encode": 0.1, "reconstruct": 0.05, "decode": 0.05, "sample": 0.05}
NPY = {"content-type": "application/x-npy"}
IMAGES = 8  # the test settings' max_images_per_request
Show = Callable[[str], None]


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """Float32 convolutions and matrix products in IEEE float32, not TF32, for the block."""
    # The new API only (PyTorch >= 2.9): reading a legacy allow_tf32 flag after it raises.
    cudnn: Any = torch.backends.cudnn  # its conv and rnn flags are untyped
    flags: tuple[Any, ...] = (cudnn.conv, cudnn.rnn, torch.backends.cuda.matmul)
    saved = [flag.fp32_precision for flag in flags]
    for flag in flags:
        flag.fp32_precision = "ieee"
    try:
        yield
    finally:
        for flag, value in zip(flags, saved, strict=True):
            flag.fp32_precision = value


def serve(settings: Settings, **changes: object) -> Iterator[TestClient]:
    """A client of the app for ``settings`` with ``changes``, through its real lifespan
    (access logs off: the GPU check's log shows the figures instead)."""
    app = create_app(settings.model_copy(update={"log_level": "warning", **changes}))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def cuda_client(served_settings: Settings) -> Iterator[TestClient]:
    yield from serve(served_settings, device="cuda")


@pytest.fixture(scope="module")
def cpu_client(served_settings: Settings) -> Iterator[TestClient]:
    yield from serve(served_settings, device="cpu")


@pytest.fixture(scope="module", params=["bf16", "fp16"])
def half_client(request: pytest.FixtureRequest, served_settings: Settings) -> Iterator[TestClient]:
    yield from serve(served_settings, device="cuda", precision=request.param)


@pytest.fixture(scope="module")
def bundled_client(served_settings: Settings) -> Iterator[TestClient]:
    """The bundled Fashion-MNIST weights on CUDA, fp32."""
    yield from serve(served_settings, device="cuda", weights=DEFAULT_WEIGHTS)


@pytest.fixture(scope="module")
def bundled_bf16(served_settings: Settings) -> Iterator[TestClient]:
    yield from serve(served_settings, device="cuda", weights=DEFAULT_WEIGHTS, precision="bf16")


def npy_images(n: int = IMAGES, seed: int = 0) -> bytes:
    """n float32 28×28 images in [0, 1] as an .npy body."""
    pixels = np.random.default_rng(seed).random((n, 28, 28), dtype=np.float32)
    out = io.BytesIO()
    np.save(out, pixels)
    return out.getvalue()


def latents(n: int = IMAGES, dim: int = 4, seed: int = 1) -> list[list[float]]:
    return (np.random.default_rng(seed).standard_normal((n, dim)) * 2).tolist()


def answers(client: TestClient, dim: int = 4) -> dict[str, np.ndarray]:
    """Every model endpoint's float32 answer (format=npy) to the same inputs."""
    body = npy_images()
    calls = {
        "encode": client.post("/encode?format=npy", content=body, headers=NPY),
        "reconstruct": client.post("/reconstruct?format=npy", content=body, headers=NPY),
        "decode": client.post("/decode?format=npy", json={"z": latents(dim=dim)}),
        "sample": client.get(f"/sample?n={IMAGES}&seed=5&format=npy&prior=standard"),
    }
    for name, reply in calls.items():
        assert reply.status_code == 200, (name, reply.text)
    return {name: np.load(io.BytesIO(reply.content)) for name, reply in calls.items()}


@pytest.fixture
def show(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> Show:
    """``show(text)`` prints past pytest's capture, so the GPU check's log has the figures."""

    def write(text: str) -> None:
        with capsys.disabled():
            print(f"\n{request.node.name}: {text}")

    return write


def assert_close(
    got: dict[str, np.ndarray],
    want: dict[str, np.ndarray],
    atol: float | dict[str, float],
    show: Show,
) -> None:
    """Every answer finite and within ``atol`` (one for all, or per endpoint) of the
    other's; the largest gaps are shown."""
    limits = {name: atol[name] if isinstance(atol, dict) else atol for name in want}
    gaps = {name: float(np.abs(got[name] - want[name]).max()) for name in want}
    show(", ".join(f"{name} {gaps[name]:.2g} (atol {limits[name]:g})" for name in want))
    for name in want:
        assert got[name].shape == want[name].shape, name
        assert np.isfinite(got[name]).all(), f"{name}: NaN or inf"
    assert all(gaps[name] <= limits[name] for name in want), (gaps, limits)


def test_model_reports_the_cuda_device(cuda_client: TestClient) -> None:
    assert cuda_client.get("/model").json()["device"] == "cuda:0"


def test_fp32_on_cuda_matches_the_cpu(
    cuda_client: TestClient, cpu_client: TestClient, show: Show
) -> None:
    with ieee_fp32():
        on_gpu = answers(cuda_client)
    assert_close(on_gpu, answers(cpu_client), FP32_ATOL, show)


def test_fp32_with_default_tf32_is_close_to_the_cpu(
    cuda_client: TestClient, cpu_client: TestClient, show: Show
) -> None:
    assert_close(answers(cuda_client), answers(cpu_client), TF32_ATOL, show)


def test_half_precision_agrees_with_fp32(
    half_client: TestClient, cuda_client: TestClient, show: Show
) -> None:
    assert_close(answers(half_client), answers(cuda_client), HALF_ATOL, show)


def test_half_precision_never_answers_nan(half_client: TestClient) -> None:
    """Latents at the largest allowed size overflow fp16: that batch runs again in fp32."""
    z = [[1e4, -1e4, 1e4, -1e4]] * 2
    reply = half_client.post("/decode?format=npy", json={"z": z})
    assert reply.status_code == 200
    assert np.isfinite(np.load(io.BytesIO(reply.content))).all()


def bundled_answers(client: TestClient, latent_dim: int) -> dict[str, np.ndarray]:
    body = npy_images()
    posterior = client.post("/encode?format=npy", content=body, headers=NPY)
    images = client.post("/decode?format=npy", json={"z": latents(dim=latent_dim)})
    assert posterior.status_code == images.status_code == 200
    return {
        "encode": np.load(io.BytesIO(posterior.content)),
        "decode": np.load(io.BytesIO(images.content)),
    }


def bundled_on_cpu() -> dict[str, np.ndarray]:
    """The same answers from the bundled model itself, on the CPU."""
    model = load_weights(DEFAULT_WEIGHTS).model
    pixels = torch.from_numpy(np.load(io.BytesIO(npy_images())))[:, None]
    z = torch.tensor(latents(dim=model.cfg.latent_dim), dtype=torch.float32)
    with torch.inference_mode():
        mean, logvar = model.encode(pixels)
        decoded = model.decode(z)
    return {
        "encode": torch.stack([mean, logvar], 1).numpy(),
        "decode": decoded.permute(0, 2, 3, 1).numpy(),  # answers are N×H×W×C
    }


@pytest.mark.parametrize(
    ("tf32", "atol"), [(False, FP32_ATOL), (True, TF32_ATOL)], ids=["ieee", "default-tf32"]
)
def test_bundled_weights_on_cuda_match_the_cpu(
    bundled_client: TestClient, tf32: bool, atol: float, show: Show
) -> None:
    """The default Fashion-MNIST weights: encode and decode on CUDA, fp32, against the
    model itself on the CPU; with TF32 off and with PyTorch's default (TF32 convolutions)."""
    want = bundled_on_cpu()
    with contextlib.nullcontext() if tf32 else ieee_fp32():
        got = bundled_answers(bundled_client, want["encode"].shape[2])
    assert_close(got, want, atol, show)


def test_bundled_weights_in_bf16_agree_with_the_cpu(bundled_bf16: TestClient, show: Show) -> None:
    want = bundled_on_cpu()
    assert_close(bundled_answers(bundled_bf16, want["encode"].shape[2]), want, HALF_ATOL, show)

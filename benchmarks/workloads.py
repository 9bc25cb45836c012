"""The benchmark's workloads: the HTTP request each server gets, and the same work done
in-process (no HTTP): image decoding, the forward pass, and PNG encoding where the
answer carries PNGs. In-process, the forward pass runs as the service runs it: on the
chosen device, under autocast for half precision, and back as CPU float32."""

from __future__ import annotations

import base64
import contextlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import orjson
import torch
from PIL import Image

from benchmarks.load import Request
from vae_service.model import VAE, VAEConfig
from vae_service.server.backends import Backend, TorchBackend
from vae_service.server.batch_jobs import Outputs
from vae_service.server.imaging import decode_images, encode_base64_pngs
from vae_service.server.oip.protocol import HEADER_LENGTH
from vae_service.server.repository import FALLBACK_DEFAULT
from vae_service.server.runtime import run_guarded
from vae_service.training.data import IDX_DIRS, DataError, load_idx_split

BATCH = 256
SEED = 7
NPY = "application/x-npy"
OCTETS = "application/octet-stream"
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Workload:
    name: str
    images: int  # per request
    requests: dict[str, Request]  # server name -> its request; a peer without one skips it
    in_process: Callable[[], object]
    device: torch.device = CPU  # where in_process runs the model


def test_images(n: int, cfg: VAEConfig) -> np.ndarray:
    """n Fashion-MNIST test images (uint8 N×28×28) for a 28×28 grey model, else noise of
    the model's shape (N×H×W or N×H×W×3); noise only changes the pixels, not the work."""
    if (cfg.image_size, cfg.channels) == (28, 1):
        with contextlib.suppress(DataError, OSError):
            images = load_idx_split(IDX_DIRS["fashion-mnist"], "test").images[:n]
            return (images[:, 0].numpy() * 255).round().astype(np.uint8)
    shape = (n, cfg.image_size, cfg.image_size) + ((3,) if cfg.channels == 3 else ())
    return np.random.default_rng(SEED).integers(0, 256, shape, dtype=np.uint8)


def png_base64(image: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def npy_body(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def oip_binary(model: str, name: str, array: np.ndarray, outputs: list[str]) -> Request:
    """An Open Inference Protocol request (KServe v2) with its FP32 input and every output
    as binary tensor data: ``model`` is the protocol's name (NAME-encoder, NAME-decoder)."""
    data = np.ascontiguousarray(array, dtype="<f4").tobytes()
    tensor = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
    header = orjson.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": len(data)}}],
            "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs],
        }
    )
    return Request(
        "POST", f"/v2/models/{model}/infer", header + data, OCTETS,
        ((HEADER_LENGTH, str(len(header))),),
    )  # fmt: skip


def everywhere(request: Request) -> dict[str, Request]:
    return {"ours": request, "litserve": request, "naive": request}


def forward_on(
    device: torch.device, half: torch.dtype | None
) -> Callable[[Callable[[torch.Tensor], Outputs], torch.Tensor], Outputs]:
    """``forward(fn, batch)`` as the service's batcher thread does it (ModelRuntime._forward):
    to the device (through pinned pages on CUDA), through ``fn``, back as CPU float32."""

    def forward(fn: Callable[[torch.Tensor], Outputs], batch: torch.Tensor) -> Outputs:
        if device.type == "cuda":
            batch = batch.pin_memory().to(device, non_blocking=True)
        return run_guarded(fn, batch, half)

    return forward


def build(
    model: VAE,
    device: torch.device = CPU,
    half: torch.dtype | None = None,
    served: str = FALLBACK_DEFAULT,
    backend: Backend | None = None,
) -> list[Workload]:
    """The workloads, with ``model`` (already on ``device``) in-process in ``half`` precision
    (None: float32), run by ``backend`` (None: torch, the model itself); ``served`` is the
    model's name in our server (for the /v2 paths)."""
    cfg = model.cfg
    forward = forward_on(device, half)
    runner = backend or TorchBackend(model)
    images = test_images(BATCH, cfg)
    pngs = [png_base64(image) for image in images]
    latents = torch.randn((BATCH, cfg.latent_dim), generator=torch.Generator().manual_seed(SEED))
    one_png = orjson.dumps({"images": pngs[:1]})
    all_pngs = orjson.dumps({"images": pngs})
    z_json = orjson.dumps({"z": latents.tolist()})
    sample_path = f"/sample?n={BATCH}&seed={SEED}"

    def decode_pngs(encoded: list[str]) -> torch.Tensor:
        blobs = [base64.b64decode(text) for text in encoded]
        return torch.from_numpy(decode_images(blobs, cfg.image_size, cfg.channels, 10**8))

    def prior() -> torch.Tensor:
        return torch.randn((BATCH, cfg.latent_dim), generator=torch.Generator().manual_seed(SEED))

    def pngs_of(images: torch.Tensor) -> list[str]:
        return encode_base64_pngs(images.numpy())

    def encode(batch: torch.Tensor) -> torch.Tensor:
        return forward(runner.encode, batch)[0]

    def decode(z: torch.Tensor) -> torch.Tensor:
        return forward(runner.decode, z)[0]

    pixels = torch.from_numpy(images)
    unit = pixels[:, None] if cfg.channels == 1 else pixels.permute(0, 3, 1, 2)
    unit_floats = (unit.float() / 255).numpy()
    work = [
        Workload(
            "encode 1 image, JSON",
            1,
            everywhere(Request("POST", "/encode", one_png)),
            lambda: encode(decode_pngs(pngs[:1])).tolist(),
        ),
        Workload(
            f"encode {BATCH} images, JSON",
            BATCH,
            everywhere(Request("POST", "/encode", all_pngs)),
            lambda: encode(decode_pngs(pngs)).tolist(),
        ),
        Workload(
            f"encode {BATCH} images, npy",
            BATCH,
            {"ours": Request("POST", "/encode?format=npy", npy_body(images), NPY)},
            lambda: encode(unit.float() / 255).numpy(),
        ),
        Workload(
            f"encode {BATCH} images, OIP binary",
            BATCH,
            {"ours": oip_binary(f"{served}-encoder", "images", unit_floats, ["mean", "logvar"])},
            lambda: encode(unit.float() / 255).numpy(),
        ),
        Workload(
            f"decode {BATCH} latents, JSON",
            BATCH,
            everywhere(Request("POST", "/decode", z_json)),
            lambda: pngs_of(decode(latents)),
        ),
        Workload(
            f"decode {BATCH} latents, npy",
            BATCH,
            {"ours": Request("POST", "/decode?format=npy", z_json)},
            lambda: decode(latents).numpy(),
        ),
        Workload(
            f"decode {BATCH} latents, OIP binary",
            BATCH,
            {"ours": oip_binary(f"{served}-decoder", "z", latents.numpy(), ["images"])},
            lambda: decode(latents).numpy(),
        ),
        Workload(
            f"sample n={BATCH}, JSON",
            BATCH,
            {
                "ours": Request("GET", sample_path),
                "naive": Request("GET", sample_path),
                "litserve": Request("POST", "/sample", orjson.dumps({"n": BATCH, "seed": SEED})),
            },
            lambda: pngs_of(decode(prior())),
        ),
        Workload(
            f"sample n={BATCH}, npy",
            BATCH,
            {"ours": Request("GET", sample_path + "&format=npy")},
            lambda: decode(prior()).numpy(),
        ),
    ]
    return [replace(w, device=device) for w in work]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that the clock covers it all."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(workload: Workload, seconds: float) -> float:
    """Run the in-process work back to back for about ``seconds``."""
    with torch.inference_mode():
        workload.in_process()  # warm-up
        synchronize(workload.device)
        done, started = 0, time.perf_counter()
        while True:
            workload.in_process()
            synchronize(workload.device)
            done += workload.images
            if (elapsed := time.perf_counter() - started) >= seconds:
                return done / elapsed

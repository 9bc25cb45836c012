"""A weights file's encoder and decoder as ONNX models, checked against torch: the
library behind ``vae-export`` (training/export.py) and the server's ONNX Runtime backend.

``export_onnx`` writes ``DIR/<sha256 of the weights>/`` with ``encoder.onnx`` (``images``
N x C x H x W -> ``mean``, ``logvar`` N x latent_dim), ``decoder.onnx`` (``z`` N x
latent_dim -> ``images`` N x C x H x W in [0, 1], the sigmoid included) and
``export.json`` (the weights' SHA-256, the files' SHA-256, opset, versions and the
measured difference to torch). The batch dimension is dynamic. The same layout is the
service's ONNX cache (``VAE_ONNX_CACHE_DIR``), so a folder written here can be served
as it is. ``write_triton_repository`` writes a Triton model repository: ``NAME-encoder`` and
``NAME-decoder``, each with ``config.pbtxt`` (onnxruntime platform, dynamic batching)
and ``1/model.onnx``; the names are those of the service's Open Inference Protocol routes.

Every export is run through onnxruntime on random inputs (batch sizes 1, 3 and 64) and
compared with torch: the largest absolute difference must stay within ``TOLERANCE``.
Exporting needs ``onnxscript`` (torch's exporter) and checking needs ``onnxruntime``:
``pip install 'vae-service[onnx]'``. Never imports the server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vae_service.model.weights import Checkpoint

OPSET = 18
# Largest absolute difference allowed between onnxruntime and torch (fp32, CPU), for the
# latents (mean, logvar) and for the decoded pixels in [0, 1]. Measured on the bundled
# weights: about 2e-6 for both; 1e-4 leaves room for other kernels and thread counts.
TOLERANCE = 1e-4
CHECK_BATCHES = (1, 3, 64)
ENCODER_FILE, DECODER_FILE, MANIFEST = "encoder.onnx", "decoder.onnx", "export.json"
MANIFEST_VERSION = 1
INSTALL_HINT = "pip install 'vae-service[onnx]'"

logger = logging.getLogger("vae_service.model.onnx_export")
# Without torchvision, every export logs four warnings about its operators; not ours.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


class ExportError(ValueError):
    """An export that cannot be made, read or trusted; one line for the user."""


class _Encode(nn.Module):
    def __init__(self, checkpoint: Checkpoint) -> None:
        super().__init__()
        self.vae = checkpoint.model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.vae.encode(images)
        return mean, logvar


class _Decode(nn.Module):
    def __init__(self, checkpoint: Checkpoint) -> None:
        super().__init__()
        self.vae = checkpoint.model

    def forward(self, z: Tensor) -> Tensor:
        return self.vae.decode(z)


@dataclass(frozen=True)
class OnnxExport:
    """One weights file's ONNX models, as written by ``export_onnx``."""

    folder: Path
    manifest: dict[str, Any]

    @property
    def encoder(self) -> Path:
        return self.folder / ENCODER_FILE

    @property
    def decoder(self) -> Path:
        return self.folder / DECODER_FILE


def require(module: str) -> Any:
    """Import an optional dependency, or say which extra brings it."""
    try:
        return __import__(module)
    except ImportError as exc:
        raise ExportError(f"{module} is not installed ({exc}): {INSTALL_HINT}") from None


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cpu_copy(checkpoint: Checkpoint) -> Checkpoint:
    """The checkpoint with its model on the CPU in fp32 (a copy if it lives elsewhere)."""
    param = next(checkpoint.model.parameters())
    if param.device.type == "cpu" and param.dtype == torch.float32:
        return checkpoint
    model = type(checkpoint.model)(checkpoint.config)
    model.load_state_dict({k: v.float().cpu() for k, v in checkpoint.model.state_dict().items()})
    return Checkpoint(model.eval(), checkpoint.config, checkpoint.metadata, {}, checkpoint.path)


def _export_one(
    module: nn.Module, example: Tensor, names: tuple[list[str], list[str]], path: Path
) -> None:
    require("onnxscript")
    inputs, outputs = names
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            module.eval(),
            (example,),
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    if program is None:  # pragma: no cover - the dynamo exporter always returns one
        raise ExportError("torch.onnx.export returned no program")
    program.save(str(path))


def export_onnx(
    checkpoint: Checkpoint, out: str | Path, check: bool = True, keyed: bool = True
) -> OnnxExport:
    """Write the encoder and decoder of ``checkpoint`` to ``out/<sha256>/`` (``keyed``)
    or ``out/``, check them against torch (``check``), and return where they are. The
    folder appears whole or not at all: it is written beside and renamed into place."""
    checkpoint = _cpu_copy(checkpoint)
    sha = checkpoint.sha256 or hashlib.sha256(b"").hexdigest()
    target = Path(out) / sha if keyed else Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        cfg = checkpoint.config
        _export_one(
            _Encode(checkpoint),
            torch.rand((2, *cfg.image_shape)),
            (["images"], ["mean", "logvar"]),
            staging / ENCODER_FILE,
        )
        _export_one(
            _Decode(checkpoint),
            torch.randn((2, cfg.latent_dim)),
            (["z"], ["images"]),
            staging / DECODER_FILE,
        )
        manifest: dict[str, Any] = {
            "manifest_version": MANIFEST_VERSION,
            "weights_sha256": checkpoint.sha256,
            "weights": Path(checkpoint.path).name,
            "config": cfg.to_dict(),
            "opset": OPSET,
            "torch": torch.__version__,
            "files": {name: file_sha256(staging / name) for name in (ENCODER_FILE, DECODER_FILE)},
            "tolerance": TOLERANCE,
        }
        if check:
            manifest["max_abs_diff"] = check_export(checkpoint, staging)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.chmod(staging, 0o755)
        if target.exists():  # an older or partial export of the same weights
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:
            if not (target / MANIFEST).is_file():  # another process won the race: use theirs
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return read_export(target, checkpoint.sha256)


def read_export(folder: str | Path, weights_sha256: str) -> OnnxExport:
    """An export of the weights with ``weights_sha256`` in ``folder``, its files intact;
    ExportError if there is none or it does not match."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"{folder}: no readable {MANIFEST} ({exc})") from None
    if manifest.get("weights_sha256") != weights_sha256:
        raise ExportError(f"{folder}: exported from other weights")
    for name, digest in (manifest.get("files") or {}).items():
        path = folder / name
        if not path.is_file() or file_sha256(path) != digest:
            raise ExportError(f"{folder}: {name} is missing or changed since export")
    if set(manifest.get("files") or {}) != {ENCODER_FILE, DECODER_FILE}:
        raise ExportError(f"{folder}: {MANIFEST} does not list both models")
    return OnnxExport(folder, manifest)


def cached_export(checkpoint: Checkpoint, cache: str | Path) -> OnnxExport:
    """``cache/<sha256>/`` if it holds an intact export of these weights, else a new one
    written there."""
    folder = Path(cache) / checkpoint.sha256
    try:
        return read_export(folder, checkpoint.sha256)
    except ExportError as exc:
        if folder.exists():
            logger.warning("ONNX cache entry unusable, exporting again: %s", exc)
    return export_onnx(checkpoint, cache, check=False)


def session(path: Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session on ``threads`` intra-op threads, graph optimised."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_export(
    checkpoint: Checkpoint,
    folder: Path,
    batches: Sequence[int] = CHECK_BATCHES,
    seed: int = 0,
    encoder: Any = None,
    decoder: Any = None,
) -> dict[str, float]:
    """Largest absolute differences between onnxruntime and torch on random inputs
    (uniform images, standard normal latents); ExportError beyond ``TOLERANCE``."""
    checkpoint = _cpu_copy(checkpoint)
    encoder = encoder or session(folder / ENCODER_FILE)
    decoder = decoder or session(folder / DECODER_FILE)
    gen = torch.Generator().manual_seed(seed)
    cfg = checkpoint.config
    worst = {"mean": 0.0, "logvar": 0.0, "images": 0.0}
    for n in batches:
        images = torch.rand((n, *cfg.image_shape), generator=gen)
        z = torch.randn((n, cfg.latent_dim), generator=gen)
        with torch.inference_mode():
            mean, logvar = checkpoint.model.encode(images)
            decoded = checkpoint.model.decode(z)
        got_mean, got_logvar = encoder.run(None, {"images": images.numpy()})
        (got_images,) = decoder.run(None, {"z": z.numpy()})
        for key, want, got in (
            ("mean", mean, got_mean),
            ("logvar", logvar, got_logvar),
            ("images", decoded, got_images),
        ):
            if got.shape != tuple(want.shape):
                raise ExportError(f"{key}: shape {got.shape}, torch gives {tuple(want.shape)}")
            worst[key] = max(worst[key], float(np.abs(got - want.numpy()).max()))
    bad = {k: v for k, v in worst.items() if not v <= TOLERANCE}
    if bad:
        raise ExportError(f"onnxruntime differs from torch by more than {TOLERANCE}: {bad}")
    return worst


def triton_config(name: str, role: str, checkpoint: Checkpoint, max_batch_size: int) -> str:
    """config.pbtxt for one model; Triton's dims leave out the batch dimension."""
    cfg = checkpoint.config
    image_dims = list(cfg.image_shape)
    latent_dims = [cfg.latent_dim]
    if role == "encoder":
        inputs, outputs = [("images", image_dims)], [("mean", latent_dims), ("logvar", latent_dims)]
    else:
        inputs, outputs = [("z", latent_dims)], [("images", image_dims)]

    def tensors(items: list[tuple[str, list[int]]]) -> str:
        return ",\n".join(
            f'  {{ name: "{n}" data_type: TYPE_FP32 dims: [ {", ".join(map(str, d))} ] }}'
            for n, d in items
        )

    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{tensors(inputs)}\n]\n"
        f"output [\n{tensors(outputs)}\n]\n"
        "dynamic_batching { }\n"
        "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
    )


def write_triton_repository(
    export: OnnxExport, checkpoint: Checkpoint, repository: str | Path, name: str, max_batch: int
) -> list[Path]:
    """NAME-encoder and NAME-decoder in a Triton model repository; returns their folders."""
    written = []
    for role, source in (("encoder", export.encoder), ("decoder", export.decoder)):
        model = f"{name}-{role}"
        folder = Path(repository) / model
        (folder / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / "1" / "model.onnx")
        (folder / "config.pbtxt").write_text(triton_config(model, role, checkpoint, max_batch))
        written.append(folder)
    return written

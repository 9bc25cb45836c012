"""The ONNX Runtime backend: vae-export, the Triton layout, the cache keyed by SHA-256,
VAE_BACKEND=onnxruntime through the service's routes, and agreement with torch within
model/onnx_export.py's TOLERANCE. Needs the onnx extra (skipped without it, except the tests of
the error a missing onnxruntime gives)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import vae_service.model.onnx_export as export_module
from tests.conftest import HAS_ONNX, TINY, settings_for
from vae_service.model import VAE, load_weights, save_weights
from vae_service.model.onnx_export import (
    CHECK_BATCHES,
    DECODER_FILE,
    ENCODER_FILE,
    MANIFEST,
    TOLERANCE,
    ExportError,
    cached_export,
    check_export,
    read_export,
    session,
)
from vae_service.server import backends
from vae_service.server.backends import BackendError, default_cache_dir, load_backend
from vae_service.server.cli import build_parser, read_settings
from vae_service.server.main import create_app
from vae_service.server.settings import Settings
from vae_service.training.export import main

needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="the onnx extra is not installed")
NPY = {"content-type": "application/x-npy"}


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def load_npy(content: bytes) -> np.ndarray:
    return np.load(io.BytesIO(content), allow_pickle=False)


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: each weights file is exported once."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def apps(served_settings: Settings, onnx_cache: Path) -> Iterator[dict[str, TestClient]]:
    """The same tiny weights served by each backend."""
    if not HAS_ONNX:
        pytest.skip("the onnx extra is not installed")
    onnx = served_settings.model_copy(
        update={"backend": "onnxruntime", "onnx_cache_dir": onnx_cache}
    )
    torch_settings = served_settings.model_copy(update={"backend": "torch"})
    with (
        TestClient(create_app(torch_settings)) as torch_client,
        TestClient(create_app(onnx)) as onnx_client,
    ):
        yield {"torch": torch_client, "onnxruntime": onnx_client}


# --- vae-export ------------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    """What one run of vae-export wrote (an ONNX folder and a Triton repository) and printed."""

    weights: Path
    onnx: Path
    triton: Path
    printed: str


@pytest.fixture(scope="module")
def exported(served_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """vae-export of the tiny weights, run once for the tests that read what it wrote
    (none of them changes it): an export takes about 2 s."""
    if not HAS_ONNX:
        pytest.skip("the onnx extra is not installed")
    folder = tmp_path_factory.mktemp("exported")
    out, triton = folder / "onnx", folder / "triton"
    argv = [str(served_weights), "--onnx", str(out), "--triton", str(triton), "--name", "tiny"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*argv, "--max-batch-size", "16"]) == 0
    return Exported(served_weights, out, triton, printed.getvalue())


@needs_onnx
def test_vae_export_writes_checked_models_and_a_triton_repository(exported: Exported) -> None:
    out, triton = exported.onnx, exported.triton
    sha = load_weights(exported.weights).sha256
    folder = out / sha
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["weights_sha256"] == sha
    assert manifest["tolerance"] == TOLERANCE
    assert all(0 <= diff <= TOLERANCE for diff in manifest["max_abs_diff"].values())
    assert f"tolerance {TOLERANCE}" in exported.printed
    # Dynamic batch: sizes the export never saw.
    encoder, decoder = session(folder / ENCODER_FILE), session(folder / DECODER_FILE)
    for n in (1, 7, 130):
        mean, logvar = encoder.run(None, {"images": np.zeros((n, 1, 28, 28), np.float32)})
        (images,) = decoder.run(None, {"z": np.zeros((n, TINY.latent_dim), np.float32)})
        assert mean.shape == logvar.shape == (n, TINY.latent_dim)
        assert images.shape == (n, 1, 28, 28)
    for role in ("encoder", "decoder"):
        model_dir = triton / f"tiny-{role}"
        assert (model_dir / "1" / "model.onnx").read_bytes() == (
            folder / f"{role}.onnx"
        ).read_bytes()
        config = (model_dir / "config.pbtxt").read_text()
        assert f'name: "tiny-{role}"' in config
        assert 'platform: "onnxruntime_onnx"' in config
        assert "max_batch_size: 16" in config
        assert "dynamic_batching { }" in config
    encoder_config = (triton / "tiny-encoder" / "config.pbtxt").read_text()
    assert '{ name: "images" data_type: TYPE_FP32 dims: [ 1, 28, 28 ] }' in encoder_config
    assert '{ name: "logvar" data_type: TYPE_FP32 dims: [ 4 ] }' in encoder_config


@needs_onnx
def test_exported_models_agree_with_torch_within_the_tolerance(exported: Exported) -> None:
    checkpoint = load_weights(exported.weights)
    export = cached_export(checkpoint, exported.onnx)  # vae-export's, read back
    diff = check_export(checkpoint, export.folder, (*CHECK_BATCHES, 256), seed=5)
    assert set(diff) == {"mean", "logvar", "images"}
    assert max(diff.values()) <= TOLERANCE


@needs_onnx
def test_the_check_catches_a_graph_of_other_weights(tmp_path: Path, onnx_cache: Path) -> None:
    torch.manual_seed(1)
    first = load_weights(save_weights(tmp_path / "a.safetensors", VAE(TINY).eval()))
    torch.manual_seed(2)
    second = load_weights(save_weights(tmp_path / "b.safetensors", VAE(TINY).eval()))
    export = cached_export(first, onnx_cache)
    with pytest.raises(ExportError, match="differs from torch"):
        check_export(second, export.folder)


def test_vae_export_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "absent.safetensors"), "--onnx", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("vae-export: error: ")


# --- the cache -------------------------------------------------------------------------


@needs_onnx
def test_the_cache_is_keyed_by_sha256_and_reused(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = load_weights(tiny_weights)
    first = cached_export(checkpoint, tmp_path)
    assert first.folder == tmp_path / checkpoint.sha256
    monkeypatch.setattr(export_module, "export_onnx", _no_export)
    assert cached_export(checkpoint, tmp_path).folder == first.folder


@needs_onnx
def test_a_changed_cache_entry_is_exported_again(exported: Exported, tmp_path: Path) -> None:
    checkpoint = load_weights(exported.weights)
    # A cache of its own, to break: a copy of vae-export's entry (an export saved).
    shutil.copytree(exported.onnx / checkpoint.sha256, tmp_path / checkpoint.sha256)
    export = cached_export(checkpoint, tmp_path)
    export.decoder.write_bytes(export.decoder.read_bytes()[:-10])
    with pytest.raises(ExportError, match="changed since export"):
        read_export(export.folder, checkpoint.sha256)
    again = cached_export(checkpoint, tmp_path)
    check_export(checkpoint, again.folder)
    with pytest.raises(ExportError, match="other weights"):
        read_export(export.folder, "0" * 64)


def _no_export(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("exported again instead of reading the cache")


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "vae-service" / "onnx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir().parent.name == f"vae-service-{os.getuid()}"


# --- the service -----------------------------------------------------------------------


def test_auto_is_the_default_backend() -> None:
    assert Settings.model_fields["backend"].default == "auto"


@needs_onnx
def test_auto_runs_a_cpu_model_on_onnxruntime(tiny_weights: Path, onnx_cache: Path) -> None:
    assert load_backend(load_weights(tiny_weights), "auto", onnx_cache, 1).name == "onnxruntime"


def test_auto_runs_torch_without_onnxruntime_or_on_a_gpu(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = load_weights(tiny_weights)
    monkeypatch.setattr(backends, "onnxruntime_installed", lambda: False)
    assert load_backend(checkpoint, "auto", None, 1).name == "torch"
    monkeypatch.setattr(backends, "onnxruntime_installed", lambda: True)
    fake = torch.nn.Parameter(torch.zeros(1, device="meta"))
    monkeypatch.setattr(checkpoint.model, "parameters", lambda: iter([fake]))
    monkeypatch.setattr(backends, "cached_export", _no_export)  # not even tried on a GPU
    assert load_backend(checkpoint, "auto", None, 1).name == "torch"


def test_auto_falls_back_to_torch_when_onnxruntime_cannot_run_the_model(
    tiny_weights: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ExportError("an operator the exporter does not know")

    monkeypatch.setattr(backends, "onnxruntime_installed", lambda: True)
    monkeypatch.setattr(backends, "cached_export", broken)
    with caplog.at_level("WARNING", logger="service"):
        assert load_backend(load_weights(tiny_weights), "auto", tmp_path, 1).name == "torch"
    assert "serving with torch" in caplog.text and "does not know" in caplog.text
    with pytest.raises(BackendError, match="does not know"):  # asked for by name: an error
        load_backend(load_weights(tiny_weights), "onnxruntime", tmp_path, 1)


def test_a_missing_onnxruntime_is_a_clear_start_up_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tiny_weights: Path
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "onnxruntime" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ValueError, match=r"pip install 'vae-service\[onnx\]'"):
        Settings(backend="onnxruntime")
    with pytest.raises(SystemExit) as exited:
        read_settings(build_parser(), ["--backend", "onnxruntime"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--backend / VAE_BACKEND" in err and "onnxruntime is not installed" in err
    with pytest.raises(BackendError, match="onnxruntime is not installed"):
        load_backend(load_weights(tiny_weights), "onnxruntime", None, 1)


@needs_onnx
def test_model_and_models_report_the_backend(apps: dict[str, TestClient]) -> None:
    for name, client in apps.items():
        assert client.get("/model").json()["backend"] == name
        (summary,) = client.get("/models").json()["models"]
        assert summary["backend"] == name
        assert client.get(f"/models/{summary['name']}").json()["backend"] == name


@needs_onnx
def test_the_routes_agree_across_backends(apps: dict[str, TestClient]) -> None:
    images = np.random.default_rng(3).random((5, 28, 28), dtype=np.float32)  # N x H x W
    z = np.random.default_rng(4).standard_normal((6, TINY.latent_dim)).astype(np.float32)
    calls = [
        ("/encode?format=npy", images),
        ("/decode?format=npy", z),
        ("/reconstruct?format=npy", images),
    ]
    for path, body in calls:
        answers = {}
        for name, client in apps.items():
            if path.startswith("/decode"):
                reply = client.post(path, json={"z": body.tolist()})
            else:
                reply = client.post(path, content=npy(body), headers=NPY)
            assert reply.status_code == 200, (name, path, reply.text)
            answers[name] = load_npy(reply.content)
        assert answers["torch"].shape == answers["onnxruntime"].shape
        np.testing.assert_allclose(
            answers["onnxruntime"], answers["torch"], rtol=0, atol=TOLERANCE, err_msg=path
        )
    for name_path in ("/sample?n=7&seed=9&format=npy", "/sample?n=1&seed=2&format=npy"):
        pair = [load_npy(c.get(name_path).content) for c in apps.values()]
        np.testing.assert_allclose(pair[0], pair[1], rtol=0, atol=TOLERANCE)


@needs_onnx
def test_the_service_serves_vae_exports_output_without_exporting(
    exported: Exported, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "export_onnx", _no_export)
    settings = settings_for(exported.weights).model_copy(
        update={"backend": "onnxruntime", "onnx_cache_dir": exported.onnx}
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/model").json()["backend"] == "onnxruntime"
        assert client.get("/sample?n=2&format=npy").status_code == 200


@needs_onnx
def test_each_model_of_a_repository_gets_the_backend(tmp_path: Path, onnx_cache: Path) -> None:
    folder = tmp_path / "models"
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        save_weights(folder / f"{name}.safetensors", VAE(TINY).eval())
    settings = settings_for(folder / "a.safetensors").model_copy(
        update={"model_dir": folder, "backend": "onnxruntime", "onnx_cache_dir": onnx_cache}
    )
    with TestClient(create_app(settings)) as client:
        models = client.get("/models").json()["models"]
        assert [(m["name"], m["state"], m["backend"]) for m in models] == [
            ("a", "ready", "onnxruntime"),
            ("b", "ready", "onnxruntime"),
        ]
    shas = {m["sha256"] for m in models}
    assert shas <= {p.name for p in onnx_cache.iterdir()}


@needs_onnx
def test_onnxruntime_refuses_a_gpu_model(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = load_weights(tiny_weights)
    fake = torch.nn.Parameter(torch.zeros(1, device="meta"))
    monkeypatch.setattr(checkpoint.model, "parameters", lambda: iter([fake]))
    with pytest.raises(BackendError, match="CPU only"):
        backends.load_backend(checkpoint, "onnxruntime", None, 1)

"""Weights files: a bit-exact round trip, and one clear WeightsError per kind of bad file."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save, save_file

from vae_service.model import VAE, WeightsError, load_weights, save_weights
from vae_service.model.weights import FORMAT_VERSION, MODEL_PREFIX, encode_metadata, write_atomic


def _tensors(model: VAE) -> dict[str, torch.Tensor]:
    return {MODEL_PREFIX + k: v.contiguous() for k, v in model.state_dict().items()}


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    return write_atomic(path, save(tensors, metadata=metadata))


def test_round_trip_is_bit_exact(tmp_path: Path, tiny_model: VAE):
    prior = {"prior.mean": torch.randn(3, 4)}
    path = save_weights(tmp_path / "w.safetensors", tiny_model, {"data": {"name": "x"}}, prior)
    ckpt = load_weights(path)
    for key, tensor in tiny_model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[key], tensor), key
    x = torch.rand(2, 1, 28, 28)
    gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for a, b in zip(tiny_model(x, gen_a), ckpt.model(x, gen_b), strict=True):
        assert torch.equal(a, b)
    assert ckpt.config == tiny_model.cfg
    assert ckpt.metadata["data"] == {"name": "x"}
    assert ckpt.metadata["format_version"] == FORMAT_VERSION
    assert torch.equal(ckpt.extra_tensors["prior.mean"], prior["prior.mean"])
    assert ckpt.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_saving_is_deterministic(tmp_path: Path, tiny_model: VAE):
    a = save_weights(tmp_path / "a.safetensors", tiny_model, {"training": {"epochs": 1}})
    b = save_weights(tmp_path / "b.safetensors", tiny_model, {"training": {"epochs": 1}})
    assert a.read_bytes() == b.read_bytes()


def test_extra_tensor_may_not_use_the_model_prefix(tmp_path: Path, tiny_model: VAE):
    with pytest.raises(ValueError, match="clashes"):
        save_weights(tmp_path / "w.safetensors", tiny_model, None, {"model.x": torch.zeros(1)})


def _missing(tmp: Path, _: Path) -> Path:
    return tmp / "nope.safetensors"


def _directory(tmp: Path, _: Path) -> Path:
    (tmp / "dir.safetensors").mkdir()
    return tmp / "dir.safetensors"


def _truncated(tmp: Path, good: Path) -> Path:
    payload = good.read_bytes()
    (tmp / "cut.safetensors").write_bytes(payload[: len(payload) // 2])
    return tmp / "cut.safetensors"


def _random_bytes(tmp: Path, _: Path) -> Path:
    gen = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=gen)
    (tmp / "noise.safetensors").write_bytes(noise.numpy().tobytes())
    return tmp / "noise.safetensors"


def _empty(tmp: Path, _: Path) -> Path:
    (tmp / "empty.safetensors").write_bytes(b"")
    return tmp / "empty.safetensors"


def _json(tmp: Path, _: Path) -> Path:
    (tmp / "conf.safetensors").write_text(json.dumps({"config": {"latent_dim": 4}}))
    return tmp / "conf.safetensors"


def _foreign(tmp: Path, good: Path) -> Path:
    # A valid safetensors file written by some other program: no format metadata.
    save_file({"weight": torch.zeros(2, 2)}, tmp / "other.safetensors")
    return tmp / "other.safetensors"


def _with_metadata(name: str, **changes: str | None) -> Callable[[Path, Path], Path]:
    """A copy of the good file's tensors under metadata with ``changes`` (None deletes)."""

    def make(tmp: Path, good: Path) -> Path:
        ckpt = load_weights(good)
        meta = encode_metadata({"config": ckpt.config.to_dict()})
        for key, value in changes.items():
            if value is None:
                meta.pop(key)
            else:
                meta[key] = value
        return _write(tmp / name, _tensors(ckpt.model), meta)

    return make


def _config_dict(tmp: Path, good: Path) -> dict[str, object]:
    return load_weights(good).config.to_dict()


def _with_config(name: str, **changes: object) -> Callable[[Path, Path], Path]:
    return lambda tmp, good: _with_metadata(
        name, config=json.dumps({**_config_dict(tmp, good), **changes})
    )(tmp, good)


def _missing_tensor(tmp: Path, good: Path) -> Path:
    ckpt = load_weights(good)
    tensors = _tensors(ckpt.model)
    tensors.pop("model.decoder.to_image.bias")
    return _write(
        tmp / "missing.safetensors", tensors, encode_metadata({"config": ckpt.config.to_dict()})
    )


BAD_FILES = {
    "missing": (_missing, "file not found"),
    "directory": (_directory, "not a regular file"),
    "truncated": (_truncated, "not a valid safetensors file"),
    "random bytes": (_random_bytes, "not a valid safetensors file"),
    "empty": (_empty, "not a valid safetensors file"),
    "json": (_json, "not a valid safetensors file"),
    "foreign safetensors": (_foreign, "not a vae-service weights file"),
    "newer version": (
        _with_metadata("new.safetensors", format_version=str(FORMAT_VERSION + 1)),
        "newer than this code reads",
    ),
    "version not an int": (_with_metadata("v.safetensors", format_version="one"), "format_version"),
    "no config": (_with_metadata("nocfg.safetensors", config=None), "no model config"),
    "config not json": (_with_metadata("cfgjson.safetensors", config="{latent"), "not valid JSON"),
    "invalid config": (_with_config("badcfg.safetensors", latent_dim=0), "invalid model config"),
    "unknown config key": (_with_config("key.safetensors", depth=3), "invalid model config"),
    "float size": (_with_config("float.safetensors", image_size=28.0), "invalid model config"),
    "shape mismatch": (_with_config("shape.safetensors", latent_dim=5), "config expects"),
    "missing tensor": (_missing_tensor, "tensors do not match the config"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_weights_file_gets_a_clear_error(tmp_path: Path, tiny_weights: Path, case: str):
    make, problem = BAD_FILES[case]
    path = make(tmp_path, tiny_weights)
    with pytest.raises(WeightsError) as info:
        load_weights(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert problem in info.value.problem
    assert "\n" not in message

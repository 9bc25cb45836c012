"""Settings: defaults, VAE_* variables, validation, and the vae-serve flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from vae_service.model.pretrained import DEFAULT_WEIGHTS
from vae_service.server.cli import build_parser, read_settings
from vae_service.server.settings import Settings, get_settings


def test_defaults_serve_the_bundled_weights_on_port_8000(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"VAE_{name.upper()}", raising=False)
    settings = Settings()
    assert settings.weights == DEFAULT_WEIGHTS
    assert (settings.device, settings.host, settings.port) == ("auto", "0.0.0.0", 8000)


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_WEIGHTS", "/tmp/other.safetensors")
    monkeypatch.setenv("VAE_PORT", "9001")
    monkeypatch.setenv("VAE_MAX_SAMPLE_N", "5")
    settings = Settings()
    assert settings.weights == Path("/tmp/other.safetensors")
    assert (settings.port, settings.max_sample_n) == (9001, 5)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_device_accepts_the_documented_forms(device: str) -> None:
    assert Settings(device=device).device == device


@pytest.mark.parametrize(
    "bad", [{"device": "gpu"}, {"port": 0}, {"log_level": "loud"}, {"max_sample_n": 0}]
)
def test_invalid_values_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Settings(**bad)


def test_get_settings_is_cached() -> None:
    get_settings.cache_clear()
    assert get_settings() is get_settings()


def test_help_documents_every_setting_and_its_variable() -> None:
    text = build_parser().format_help()
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in text
        assert f"VAE_{name.upper()}" in text


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_PORT", "9001")
    monkeypatch.setenv("VAE_DEVICE", "cpu")
    settings = read_settings(build_parser(), ["--port", "9002", "--max-images-per-request", "3"])
    assert (settings.port, settings.device, settings.max_images_per_request) == (9002, "cpu", 3)


def test_bad_flag_value_exits_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        read_settings(build_parser(), ["--port", "not-a-port"])
    assert exited.value.code == 2
    assert "--port / VAE_PORT" in capsys.readouterr().err

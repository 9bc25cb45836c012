"""docker-compose.yml passes every setting through, and its drain time agrees with the
service's: checked from the file itself, so a new or renamed setting fails here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from vae_service.server.settings import Settings, env_name

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"
PINNED_BY_THE_IMAGE = {"host", "port"}  # the image's CMD listens on 0.0.0.0:8000


@pytest.fixture(scope="module")
def api() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"]["api"])


def test_every_setting_reaches_the_api_container(api: dict[str, Any]) -> None:
    environment = api["environment"]
    for name in set(Settings.model_fields) - PINNED_BY_THE_IMAGE:
        variable = env_name(name)
        assert environment.get(variable) == f"${{{variable}:-}}", variable
    assert set(environment) == {env_name(n) for n in Settings.model_fields} - {
        env_name(n) for n in PINNED_BY_THE_IMAGE
    }


def test_an_empty_variable_keeps_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """What compose passes for a variable the user did not set."""
    for name in Settings.model_fields:
        monkeypatch.setenv(env_name(name), "")
    assert Settings() == Settings.model_construct()


def test_stop_grace_period_outlasts_the_drain(api: dict[str, Any]) -> None:
    grace_s = int(api["stop_grace_period"].removesuffix("s"))
    drain_s = Settings.model_fields["graceful_shutdown_s"].default
    assert grace_s > drain_s


def test_every_setting_is_documented() -> None:
    """docs/operations.md's settings table names every VAE_* variable."""
    reference = (COMPOSE.parent / "docs" / "operations.md").read_text()
    missing = [env_name(n) for n in Settings.model_fields if f"`{env_name(n)}`" not in reference]
    assert not missing, missing

"""GET /sample?prior=standard|fitted and /model's prior, through the app's real lifespan on
tiny weights with a mixture fitted to random latents; a corrupt prior stops start-up."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from vae_service.client import VAEClient
from vae_service.model import VAE, WeightsError, load_weights, save_weights
from vae_service.model.prior import FittedPrior, fit_prior
from vae_service.model.prior_files import attach_prior
from vae_service.server.cli import main as serve_main
from vae_service.server.main import create_app
from vae_service.server.settings import Settings

COMPONENTS = 3


@pytest.fixture
def prior_weights(tiny_weights: Path, tmp_path: Path) -> Path:
    latents = torch.randn((90, 4), generator=torch.Generator().manual_seed(5)) * 2
    out = tmp_path / "with-prior.safetensors"
    attach_prior(tiny_weights, fit_prior(latents, COMPONENTS), out)
    return out


@pytest.fixture
def fitted_client(api_settings: Settings, prior_weights: Path) -> Iterator[TestClient]:
    settings = api_settings.model_copy(update={"weights": prior_weights})
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def the_prior(path: Path) -> FittedPrior:
    prior = FittedPrior.from_checkpoint(load_weights(path))
    assert prior is not None
    return prior


def decoded(model: VAE, z: list[list[float]]) -> np.ndarray:
    with torch.inference_mode():
        return model.decode(torch.tensor(z)).numpy()


def test_the_default_is_the_fitted_prior_when_the_weights_carry_one(
    fitted_client: TestClient, prior_weights: Path, tiny_model: VAE
) -> None:
    body = fitted_client.get("/sample?n=5&seed=3&temperature=0.7").json()
    assert body["prior"] == "fitted" and body["seed"] == 3
    expected = the_prior(prior_weights).sample(5, 0.7, torch.Generator().manual_seed(3))
    assert np.allclose(body["z"], expected.numpy(), atol=1e-6)
    explicit = fitted_client.get("/sample?n=5&seed=3&temperature=0.7&prior=fitted").json()
    assert explicit == body


def test_standard_prior_on_weights_with_a_fitted_one(
    fitted_client: TestClient, client: TestClient
) -> None:
    standard = fitted_client.get("/sample?n=4&seed=9&prior=standard").json()
    expected = torch.randn((4, 4), generator=torch.Generator().manual_seed(9))
    assert standard["prior"] == "standard"
    assert np.allclose(standard["z"], expected.numpy(), atol=1e-6)
    fitted = fitted_client.get("/sample?n=4&seed=9").json()
    assert fitted["z"] != standard["z"] and fitted["images"] != standard["images"]
    # Same model, same seed, same prior: the weights without a prior answer the same.
    assert client.get("/sample?n=4&seed=9").json()["images"] == standard["images"]


@pytest.mark.parametrize("prior", ["standard", "fitted"])
def test_seed_and_temperature_are_deterministic_for_both_priors(
    fitted_client: TestClient, prior: str
) -> None:
    query = f"/sample?n=6&prior={prior}"
    first = fitted_client.get(f"{query}&seed=1&temperature=0.5").json()
    assert fitted_client.get(f"{query}&seed=1&temperature=0.5").json() == first
    assert fitted_client.get(f"{query}&seed=2&temperature=0.5").json()["z"] != first["z"]
    assert fitted_client.get(f"{query}&seed=1&temperature=1.5").json()["z"] != first["z"]


def test_temperature_zero_gives_the_component_means(
    fitted_client: TestClient, prior_weights: Path
) -> None:
    z = torch.tensor(fitted_client.get("/sample?n=20&seed=0&temperature=0").json()["z"])
    assert (torch.cdist(z, the_prior(prior_weights).means).min(dim=1).values < 1e-5).all()


@pytest.mark.parametrize("fmt", ["png", "npy"])
def test_binary_answers_name_the_prior_in_a_header(
    fitted_client: TestClient, tiny_model: VAE, fmt: str
) -> None:
    for prior in ("standard", "fitted"):
        reply = fitted_client.get(f"/sample?n=2&seed=4&format={fmt}&prior={prior}")
        assert reply.status_code == 200
        assert reply.headers["x-prior"] == prior and reply.headers["x-seed"] == "4"
    default = fitted_client.get(f"/sample?n=2&seed=4&format={fmt}")
    assert default.headers["x-prior"] == "fitted"
    if fmt == "npy":
        z = fitted_client.get("/sample?n=2&seed=4").json()["z"]
        array = np.load(io.BytesIO(default.content))
        assert np.allclose(array, decoded(tiny_model, z).transpose(0, 2, 3, 1), atol=1e-6)


def test_weights_without_a_prior_serve_standard_and_refuse_fitted(client: TestClient) -> None:
    assert client.get("/sample?n=2&seed=1").json()["prior"] == "standard"
    assert client.get("/sample?n=2&seed=1&prior=standard").json()["prior"] == "standard"
    reply = client.get("/sample?n=2&seed=1&prior=fitted")
    assert reply.status_code == 422
    detail = reply.json()["detail"]
    assert "no fitted prior" in detail and "prior=standard" in detail
    assert client.get("/sample?n=2&format=png&prior=fitted").status_code == 422


def test_an_unknown_prior_is_422(fitted_client: TestClient) -> None:
    reply = fitted_client.get("/sample?n=2&prior=vamp")
    assert reply.status_code == 422 and "prior" in str(reply.json()["detail"])


def test_model_reports_the_fitted_prior(
    fitted_client: TestClient, client: TestClient, prior_weights: Path
) -> None:
    prior = fitted_client.get("/model").json()["prior"]
    assert prior == the_prior(prior_weights).describe()
    assert prior["components"] == COMPONENTS and prior["covariance_type"] == "full"
    assert client.get("/model").json()["prior"] is None


def test_the_client_chooses_the_prior_and_reads_which_was_used(
    fitted_client: TestClient,
) -> None:
    vae = VAEClient()
    vae.http = fitted_client  # a TestClient is an httpx.Client on the app
    assert vae.sample(2, seed=1).prior == "fitted"
    drawn = vae.sample(2, seed=1, prior="standard")
    assert drawn.prior == "standard" and drawn.seed == 1
    assert vae.sample(2, seed=1, prior="standard", as_array=True).prior == "standard"


def corrupt_prior_weights(prior_weights: Path, tmp_path: Path) -> Path:
    ckpt = load_weights(prior_weights)
    tensors = {k: v.clone() for k, v in ckpt.extra_tensors.items()}
    tensors["prior.scale_tril"][0, 1, 1] = -1.0
    meta = {k: v for k, v in ckpt.metadata.items() if k not in ("config", "format_version")}
    return save_weights(tmp_path / "corrupt-prior.safetensors", ckpt.model, meta, tensors)


def test_a_corrupt_prior_stops_the_lifespan(
    api_settings: Settings, prior_weights: Path, tmp_path: Path
) -> None:
    path = corrupt_prior_weights(prior_weights, tmp_path)
    app = create_app(api_settings.model_copy(update={"weights": path}))
    with pytest.raises(WeightsError, match="corrupt fitted prior: scale_tril"), TestClient(app):
        pass


def test_a_corrupt_prior_stops_vae_serve_with_one_line(
    prior_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("vae-serve got as far as starting the server")

    monkeypatch.setattr("vae_service.server.cli.uvicorn.run", refuse)
    path = corrupt_prior_weights(prior_weights, tmp_path)
    with pytest.raises(SystemExit) as exited:
        serve_main(["--weights", str(path), "--device", "cpu"])
    message = str(exited.value.code)
    assert message.startswith(f"vae-serve: cannot start: {path}: corrupt fitted prior:")
    assert "non-positive diagonal" in message and "\n" not in message

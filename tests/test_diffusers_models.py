"""diffusers folders in the model repository: listed, served equal to diffusers in process
(fp32, within 1e-4), swapped by a rename under load, and a broken folder keeps the old
version serving."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from tests.diffusers_vaes import KL_CONFIGS, model_of, raw, settings, write_models
from vae_service.model.pretrained import DEFAULT_WEIGHTS
from vae_service.server.batch_jobs import Operation
from vae_service.server.batcher import Batcher
from vae_service.server.main import create_app
from vae_service.server.schemas import ModelInfo

NAMES = (*KL_CONFIGS, "tiny")


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("diffusers-shelf")
    models = write_models(folder)
    shutil.copy(DEFAULT_WEIGHTS, folder / "ours.safetensors")
    return folder, models


@pytest.fixture(scope="module")
def client(shelf: tuple[Path, dict[str, Any]]) -> Iterator[TestClient]:
    with TestClient(create_app(settings(shelf[0])), raise_server_exceptions=False) as c:
        yield c


def folder_sha(folder: Path) -> str:
    data = (folder / "config.json").read_bytes()
    return hashlib.sha256(
        data + (folder / "diffusion_pytorch_model.safetensors").read_bytes()
    ).hexdigest()


def pipeline_unscale(model: Any, z: torch.Tensor) -> torch.Tensor:
    """What a diffusers pipeline does to latents before vae.decode."""
    cfg = model.config
    if cfg.get("latents_mean") is not None:
        mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1)
        std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1)
        return z * std / cfg.scaling_factor + mean
    return z / cfg.scaling_factor + (cfg.get("shift_factor") or 0.0)


def post(client: TestClient, path: str, tensor: torch.Tensor, **params: Any) -> httpx.Response:
    dtype = str(tensor.dtype).removeprefix("torch.")
    query = {"shape": list(tensor.shape), "dtype": dtype, **params}
    return client.post(path, content=raw(tensor), params=query)


def tensor_of(reply: httpx.Response) -> torch.Tensor:
    assert reply.status_code == 200, reply.text
    dtype = getattr(torch, reply.headers["dtype"])
    shape = [int(d) for d in reply.headers["shape"].strip("[]").split(",")]
    return torch.frombuffer(bytearray(reply.content), dtype=dtype).reshape(shape)


def test_models_lists_diffusers_folders_beside_ours(client: TestClient, shelf: Any) -> None:
    listed = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert sorted(listed) == sorted([*NAMES, "ours"])
    assert listed["ours"]["family"] == "ours" and listed["ours"]["latent_shape"] == [32]
    expected = {"sd": (4, 4), "flux": (16, 2), "stats": (4, 2), "grey": (4, 1), "tiny": (4, 4)}
    for name, (channels, factor) in expected.items():
        model = listed[name]
        assert model["state"] == "ready", model
        assert model["family"] == ("AutoencoderTiny" if name == "tiny" else "AutoencoderKL")
        assert model["latent_shape"] == [channels, -1, -1] and model["downsampling"] == factor
        assert model["dtype"] == "float32" and model["sha256"] == folder_sha(shelf[0] / name)


@pytest.mark.parametrize("name", NAMES)
def test_model_info_describes_the_folder(client: TestClient, shelf: Any, name: str) -> None:
    reply = client.get(f"/models/{name}")
    assert reply.status_code == 200, reply.text
    info, folder = reply.json(), shelf[0] / name
    config = json.loads((folder / "config.json").read_text())
    assert info["config"] == config and info["weights"] == name
    assert info["sha256"] == folder_sha(folder) == reply.headers["x-model-sha256"]
    assert info["family"] == config["_class_name"] and info["dtype"] == "float32"
    assert info["device"] == "cpu" and info["backend"] == "torch"
    space = shelf[1][name].config
    assert info["latent_shape"] == [space.latent_channels, -1, -1]
    assert info["image_shape"] == [space.in_channels, -1, -1]
    assert info["downsampling"] == {"flux": 2, "stats": 2, "grey": 1}.get(name, 4)
    assert info["scaling_factor"] == pytest.approx(space.get("scaling_factor") or 1.0)
    assert info["shift_factor"] == pytest.approx(space.get("shift_factor") or 0.0)
    expected_mean = list(space["latents_mean"]) if name == "stats" else None
    assert info["latents_mean"] == expected_mean


def test_model_info_of_ours_is_unchanged(client: TestClient) -> None:
    info = client.get("/models/ours").json()
    assert "family" not in info and info["latent_dim"] == 32 and info["format_version"] >= 0
    assert set(info) == set(ModelInfo.model_fields)


@pytest.mark.parametrize("name", NAMES)
def test_decode_equals_diffusers_in_process(client: TestClient, shelf: Any, name: str) -> None:
    model = shelf[1][name]
    z = torch.randn(
        (2, model.config.latent_channels, 5, 3), generator=torch.Generator().manual_seed(1)
    )
    reply = post(client, f"/models/{name}/remote-decode", z, output_type="pt", do_scaling=True)
    with torch.no_grad():
        expected = model.decode(pipeline_unscale(model, z)).sample
    torch.testing.assert_close(tensor_of(reply), expected, atol=1e-4, rtol=0)
    assert reply.headers["x-model"] == name


@pytest.mark.parametrize("name", NAMES)
def test_encode_equals_diffusers_in_process(client: TestClient, shelf: Any, name: str) -> None:
    model = shelf[1][name]
    shape = (2, model.config.in_channels, 16, 24)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(2)) * 2 - 1
    reply = post(client, f"/models/{name}/remote-encode", x, scaling_factor=0.5, shift_factor=0.25)
    with torch.no_grad():
        encoded = model.encode(x)
    z = encoded.latents if name == "tiny" else encoded.latent_dist.mode()
    torch.testing.assert_close(tensor_of(reply), (z - 0.25) * 0.5, atol=1e-4, rtol=0)


def test_encode_sample_equals_diffusers_draw(client: TestClient, shelf: Any) -> None:
    model = shelf[1]["sd"]
    x = torch.rand((1, 3, 16, 16), generator=torch.Generator().manual_seed(3)) * 2 - 1
    reply = post(client, "/models/sd/remote-encode", x, sample="true", seed=7)
    with torch.no_grad():
        drawn = model.encode(x).latent_dist.sample(torch.Generator().manual_seed(7))
    torch.testing.assert_close(tensor_of(reply), drawn, atol=1e-4, rtol=0)
    assert reply.headers["x-seed"] == "7"
    tiny = post(client, "/models/tiny/remote-encode", x, sample="true")
    assert tiny.status_code == 422 and "no posterior" in tiny.text


def test_each_family_refuses_the_others_latents(client: TestClient) -> None:
    z = torch.zeros((1, 4, 2, 2))
    ours = post(client, "/models/ours/remote-decode", z, output_type="pt")
    assert ours.status_code == 422 and "N x " in ours.text
    theirs = client.post("/models/sd/decode", json={"z": [[0.0] * 4]})  # N×D: ours
    assert theirs.status_code == 422 and "N x C x h x w" in theirs.text
    assert client.get("/models/sd/sample").status_code == 422


def test_requests_of_different_sizes_share_the_batcher() -> None:
    seen: list[tuple[int, ...]] = []

    def double(rows: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(rows.shape))
        return rows * 2

    async def run() -> list[torch.Tensor]:
        batcher = Batcher({"op": Operation(double, None)}, max_batch_size=8, max_delay_s=0.05)
        try:
            shapes = [(1, 2, 3), (1, 2, 3), (2, 5, 1), (1, 2, 3)]
            futures = [batcher.submit("op", torch.ones(s)) for s in shapes]
            return [(await f)[0] for f in futures]
        finally:
            await batcher.aclose()

    answers = asyncio.run(run())
    assert [tuple(a.shape) for a in answers] == [(1, 2, 3), (1, 2, 3), (2, 5, 1), (1, 2, 3)]
    assert all(bool((a == 2).all()) for a in answers)
    # Consecutive requests of one shape stack; another shape leads the next batch.
    assert seen == [(2, 2, 3), (2, 5, 1), (1, 2, 3)]


def wait_for(condition: Any, what: str, timeout_s: float = 20) -> None:
    deadline = threading.Event()
    timer = threading.Timer(timeout_s, deadline.set)
    timer.start()
    try:
        while not deadline.is_set():
            if condition():
                return
            deadline.wait(0.05)
    finally:
        timer.cancel()
    raise AssertionError(f"timed out waiting for {what}")


def decode_pt(client: TestClient) -> httpx.Response:
    z = torch.full((1, 4, 2, 2), 0.5)
    return post(client, "/models/swap/remote-decode", z, output_type="pt")


def test_swap_by_rename_under_load_and_a_broken_folder_keeps_serving(tmp_path: Path) -> None:
    model_of("sd", seed=0).save_pretrained(tmp_path / "swap")
    statuses: list[int] = []
    stop = threading.Event()
    with TestClient(create_app(settings(tmp_path)), raise_server_exceptions=False) as client:

        def load() -> None:
            while not stop.is_set():
                statuses.append(decode_pt(client).status_code)

        first = decode_pt(client).headers["x-model-sha256"]
        worker = threading.Thread(target=load)
        worker.start()
        try:
            model_of("sd", seed=1).save_pretrained(tmp_path / ".swap-new")
            os.rename(tmp_path / "swap", tmp_path / ".swap-old")
            os.rename(tmp_path / ".swap-new", tmp_path / "swap")
            wait_for(
                lambda: decode_pt(client).headers.get("x-model-sha256") not in (None, first),
                "the swap",
            )
        finally:
            stop.set()
            worker.join()
        second = folder_sha(tmp_path / "swap")
        assert decode_pt(client).headers["x-model-sha256"] == second
        assert statuses and set(statuses) <= {200, 404, 503}, set(statuses)
        (tmp_path / "swap" / "config.json").write_text("{not json")
        entry = lambda: client.get("/models").json()["models"][0]  # noqa: E731
        wait_for(lambda: entry()["error"] is not None, "the broken folder's error")
        assert "config.json" in entry()["error"] and entry()["sha256"] == second
        assert decode_pt(client).status_code == 200

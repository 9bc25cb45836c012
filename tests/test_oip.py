"""The Open Inference Protocol (KServe v2) through the real ``tritonclient.http`` client,
against the app on uvicorn (tiny weights): the answers equal the existing routes'."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from vae_service.server.settings import Settings

ENCODER, DECODER = "tiny-encoder", "tiny-decoder"  # tests/conftest.py's tiny.safetensors
LATENT_DIM = 4
ServeInThread = Callable[[Settings], contextlib.AbstractContextManager[str]]


@pytest.fixture(scope="module")
def address(served_settings: Settings, serve_in_thread: ServeInThread) -> Iterator[str]:
    with serve_in_thread(served_settings) as where:
        yield where


@pytest.fixture(scope="module")
def client(address: str) -> Iterator[triton.InferenceServerClient]:
    with contextlib.closing(triton.InferenceServerClient(address)) as tc:
        yield tc


@pytest.fixture(scope="module")
def http(address: str) -> Iterator[httpx.Client]:
    """The existing routes, to compare with."""
    with httpx.Client(base_url=f"http://{address}", timeout=30) as hc:
        yield hc


def grey_pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def unit(pixels: np.ndarray) -> np.ndarray:
    """N x 28 x 28 grey pixels as N x 1 x 28 x 28 floats in [0, 1], as the service
    converts image files (server/imaging.py), so that both give the same tensor."""
    return pixels[:, None].astype(np.float32) * np.float32(1 / 255)


def unit_images(n: int, seed: int = 0) -> np.ndarray:
    return unit(grey_pixels(n, seed))


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def existing_encode(http: httpx.Client, pixels: np.ndarray, query: str = "") -> dict[str, Any]:
    """/encode of N x 28 x 28 grey pixels sent as PNG files: mean, logvar (and z), as
    float32 arrays. (Not its .npy body: the tensor that path builds has other strides,
    and the model's answer can differ from it in the last bit.)"""
    response = http.post(f"/encode{query}", files=[("images", png(p)) for p in pixels])
    response.raise_for_status()
    return {k: np.float32(v) if isinstance(v, list) else v for k, v in response.json().items()}


def existing_decode(http: httpx.Client, z: np.ndarray) -> np.ndarray:
    """/decode?format=npy, as N x C x H x W."""
    response = http.post("/decode?format=npy", json={"z": z.tolist()})
    response.raise_for_status()
    return np.load(io.BytesIO(response.content)).transpose(0, 3, 1, 2)


def fp32_input(name: str, array: np.ndarray, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def bytes_input(files: list[bytes], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("images", [len(files)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(files, dtype=np.object_), binary_data=True)
    else:  # an image file is not UTF-8 text: base64 strings in JSON
        encoded = [base64.b64encode(f) for f in files]
        tensor.set_data_from_numpy(np.array(encoded, dtype=np.object_), binary_data=False)
    return tensor


def outputs(*names: str, binary: bool) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(name, binary_data=binary) for name in names]


def test_server_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "vae-serve"
    assert "binary_tensor_data" in metadata["extensions"]
    assert client.is_model_ready(ENCODER) and client.is_model_ready(DECODER)
    assert not client.is_model_ready("tiny") and not client.is_model_ready("nope-encoder")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_encode_equals_the_encode_route(
    client: triton.InferenceServerClient, http: httpx.Client, binary: bool
) -> None:
    pixels = grey_pixels(3)
    result = client.infer(
        ENCODER,
        [fp32_input("images", unit(pixels), binary)],
        outputs=outputs("mean", "logvar", binary=binary),
    )
    expected = existing_encode(http, pixels)
    np.testing.assert_array_equal(result.as_numpy("mean"), expected["mean"])
    np.testing.assert_array_equal(result.as_numpy("logvar"), expected["logvar"])
    for output in result.get_response()["outputs"]:
        assert ("data" in output) is not binary
        assert output["shape"] == [3, LATENT_DIM] and output["datatype"] == "FP32"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_decode_equals_the_decode_route(
    client: triton.InferenceServerClient, http: httpx.Client, binary: bool
) -> None:
    z = np.random.default_rng(1).standard_normal((5, LATENT_DIM)).astype(np.float32)
    result = client.infer(
        DECODER, [fp32_input("z", z, binary)], outputs=outputs("images", binary=binary)
    )
    images = result.as_numpy("images")
    assert images.shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(images, existing_decode(http, z))


@pytest.mark.parametrize("binary", [False, True], ids=["base64-json", "binary"])
def test_png_files_as_bytes_equal_the_encode_route(
    client: triton.InferenceServerClient, http: httpx.Client, binary: bool
) -> None:
    pixels = grey_pixels(2, seed=2)
    result = client.infer(ENCODER, [bytes_input([png(p) for p in pixels], binary)])
    by_route = existing_encode(http, pixels)
    np.testing.assert_array_equal(result.as_numpy("mean"), by_route["mean"])
    np.testing.assert_array_equal(result.as_numpy("logvar"), by_route["logvar"])
    # the same images as FP32 pixels in [0, 1]: the same latents
    as_floats = client.infer(ENCODER, [fp32_input("images", unit(pixels), True)])
    np.testing.assert_array_equal(as_floats.as_numpy("mean"), result.as_numpy("mean"))


def test_seeded_z_is_reproducible_and_equals_the_route(
    client: triton.InferenceServerClient, http: httpx.Client
) -> None:
    pixels = grey_pixels(2, seed=3)
    images = unit(pixels)

    def draw(seed: int | None, binary: bool = True) -> triton.InferResult:
        parameters = None if seed is None else {"seed": seed}
        return client.infer(
            ENCODER,
            [fp32_input("images", images, binary)],
            outputs=outputs("z", binary=binary),
            parameters=parameters,
        )

    first, again, json_again, other = draw(7), draw(7), draw(7, binary=False), draw(8)
    np.testing.assert_array_equal(first.as_numpy("z"), again.as_numpy("z"))
    np.testing.assert_array_equal(first.as_numpy("z"), json_again.as_numpy("z"))
    assert not np.array_equal(first.as_numpy("z"), other.as_numpy("z"))
    assert first.get_response()["parameters"] == {"seed": 7}
    by_route = existing_encode(http, pixels, "?sample=true&seed=7")
    np.testing.assert_array_equal(first.as_numpy("z"), by_route["z"])
    chosen = draw(None)  # a seed is chosen, and said, so that the draw can be repeated
    seed = chosen.get_response()["parameters"]["seed"]
    np.testing.assert_array_equal(chosen.as_numpy("z"), draw(seed).as_numpy("z"))


def test_only_the_requested_outputs_come_back(
    client: triton.InferenceServerClient, http: httpx.Client
) -> None:
    images = [fp32_input("images", unit_images(2), True)]
    only_logvar = client.infer(ENCODER, images, outputs=outputs("logvar", binary=True))
    assert [o["name"] for o in only_logvar.get_response()["outputs"]] == ["logvar"]
    assert only_logvar.as_numpy("mean") is None and only_logvar.as_numpy("z") is None
    mixed = client.infer(
        ENCODER,
        images,
        outputs=[
            triton.InferRequestedOutput("z", binary_data=False),
            triton.InferRequestedOutput("mean", binary_data=True),
        ],
        parameters={"seed": 1},
    )
    by_name = {o["name"]: o for o in mixed.get_response()["outputs"]}
    assert list(by_name) == ["z", "mean"]  # in the order asked for
    assert "data" in by_name["z"] and by_name["mean"]["parameters"]["binary_data_size"] == 32
    # none named: the model's default outputs, mean and logvar (z is a draw, on request),
    # all binary (tritonclient sets binary_data_output)
    default = client.infer(ENCODER, images).get_response()
    assert [o["name"] for o in default["outputs"]] == ["mean", "logvar"]
    assert all("binary_data_size" in o["parameters"] for o in default["outputs"])
    pixels = [0.5] * 784  # an empty list of outputs names none, too
    body = {
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": pixels}]
    }
    answer = http.post(f"/v2/models/{ENCODER}/infer", json={**body, "outputs": []}).json()
    assert [o["name"] for o in answer["outputs"]] == ["mean", "logvar"]


def test_the_request_id_is_echoed(client: triton.InferenceServerClient) -> None:
    z = np.zeros((1, LATENT_DIM), np.float32)
    result = client.infer(DECODER, [fp32_input("z", z, True)], request_id="req-42")
    assert result.get_response()["id"] == "req-42"
    assert "id" not in client.infer(DECODER, [fp32_input("z", z, True)]).get_response()


def concrete(shape: list[int], batch: int) -> list[int]:
    return [batch if d == -1 else d for d in shape]


@pytest.mark.parametrize("model", [ENCODER, DECODER])
def test_metadata_states_exactly_what_the_server_accepts(
    client: triton.InferenceServerClient, http: httpx.Client, model: str
) -> None:
    metadata = client.get_model_metadata(model)
    sha256 = http.get("/model").json()["sha256"]
    assert metadata["name"] == model and metadata["versions"] == [sha256[:12]]
    assert client.get_model_metadata(model, model_version=sha256[:12]) == metadata
    (spec,) = metadata["inputs"]
    shape = concrete(spec["shape"], 3)
    values = np.random.default_rng(4).random(shape, dtype=np.float32)
    tensor = triton.InferInput(spec["name"], shape, spec["datatype"])
    tensor.set_data_from_numpy(values)
    names = [o["name"] for o in metadata["outputs"]]
    result = client.infer(
        model, [tensor], model_version=sha256[:12], outputs=outputs(*names, binary=True)
    )
    for output in metadata["outputs"]:  # every output as stated, batch dimension 3
        answer = result.get_output(output["name"])
        assert answer["datatype"] == output["datatype"]
        assert answer["shape"] == concrete(output["shape"], 3)
    # any other shape, datatype or name is refused, with the protocol's 400
    wrong = [
        (spec["name"], [*shape[:-1], shape[-1] + 1], "FP32"),
        (spec["name"], shape[1:], "FP32"),
        (spec["name"], shape, "FP64"),
        (spec["name"] + "x", shape, "FP32"),
    ]
    for name, bad_shape, datatype in wrong:
        bad = triton.InferInput(name, bad_shape, datatype)
        bad.set_data_from_numpy(
            np.zeros(bad_shape, dtype=np.float64 if datatype == "FP64" else np.float32)
        )
        with pytest.raises(InferenceServerException) as refused:
            client.infer(model, [bad])
        assert refused.value.status() == "400", (name, bad_shape, datatype)


def test_unknown_models_and_versions_are_404(client: triton.InferenceServerClient) -> None:
    z = [fp32_input("z", np.zeros((1, LATENT_DIM), np.float32), True)]
    for model, version in (("tiny", ""), ("nope-decoder", ""), (DECODER, "000000000000")):
        with pytest.raises(InferenceServerException) as missing:
            client.infer(model, z, model_version=version)
        assert missing.value.status() == "404"
        assert model in missing.value.message()
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_metadata(DECODER, model_version="1")
    assert missing.value.status() == "404"
    assert "no version '1'" in missing.value.message()


def test_compressed_requests_and_answers(client: triton.InferenceServerClient) -> None:
    images = [fp32_input("images", unit_images(2), True)]
    plain = client.infer(ENCODER, images)
    for algorithm in ("gzip", "deflate"):
        squeezed = client.infer(
            ENCODER,
            images,
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,  # may be answered plain, and is
        )
        np.testing.assert_array_equal(squeezed.as_numpy("mean"), plain.as_numpy("mean"))


def test_headers_and_metrics_name_the_repository_model(
    client: triton.InferenceServerClient, http: httpx.Client
) -> None:
    sha256 = http.get("/model").json()["sha256"]
    z = np.zeros((1, LATENT_DIM), np.float32)
    result = client.infer(DECODER, [fp32_input("z", z, True)])
    assert result.as_numpy("images").shape == (1, 1, 28, 28)
    header = b'{"inputs":[{"name":"z","datatype":"FP32","shape":[1,4],"data":[0,0,0,0]}]}'
    raw = http.post(f"/v2/models/{DECODER}/infer", content=header)
    assert raw.headers["x-model"] == "tiny" and raw.headers["x-model-sha256"] == sha256
    metrics = http.get("/metrics").text
    line = (
        'vae_http_requests_total{endpoint="/v2/models/{model_name}/infer",method="POST",'
        'model="tiny",status="200"}'
    )
    assert line in metrics
    assert 'vae_batch_size_count{model="tiny",operation="decode"}' in metrics


def tiny_file(folder: Path, name: str, seed: int) -> Path:
    import torch

    from tests.conftest import TINY
    from vae_service.model import VAE, save_weights

    torch.manual_seed(seed)
    meta = {"data": {"name": "synthetic", "shape": [1, 28, 28]}, "training": {"epochs": 0}}
    return save_weights(folder / f"{name}.safetensors", VAE(TINY).eval(), meta)


def test_every_repository_model_is_an_encoder_and_a_decoder(
    served_settings: Settings, tmp_path: Path, serve_in_thread: ServeInThread
) -> None:
    files = [tiny_file(tmp_path, name, seed) for seed, name in enumerate(("alpha", "beta"))]
    settings = served_settings.model_copy(
        update={"model_dir": tmp_path, "default_model": "alpha", "model_poll_s": 60}
    )
    z = np.random.default_rng(5).standard_normal((2, LATENT_DIM)).astype(np.float32)
    with (
        serve_in_thread(settings) as where,
        contextlib.closing(triton.InferenceServerClient(where)) as tc,
    ):
        decoded = {}
        for path in files:
            name = path.stem
            version = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            assert tc.get_model_metadata(f"{name}-encoder")["versions"] == [version]
            assert tc.is_model_ready(f"{name}-decoder", model_version=version)
            result = tc.infer(f"{name}-decoder", [fp32_input("z", z, True)], model_version=version)
            decoded[name] = result.as_numpy("images")
        assert not np.array_equal(decoded["alpha"], decoded["beta"])
        with pytest.raises(InferenceServerException) as missing:
            tc.get_model_metadata("gamma-encoder")
        message = missing.value.message()
        assert all(f"{n}-{r}" in message for n in ("alpha", "beta") for r in ("encoder", "decoder"))


def test_api_keys_cover_the_protocol_but_not_its_health(
    served_settings: Settings, serve_in_thread: ServeInThread
) -> None:
    settings = served_settings.model_copy(update={"api_keys": Settings(api_keys="k1").api_keys})
    z = [fp32_input("z", np.zeros((1, LATENT_DIM), np.float32), True)]
    with (
        serve_in_thread(settings) as where,
        contextlib.closing(triton.InferenceServerClient(where)) as tc,
    ):
        assert tc.is_server_live() and tc.is_server_ready()  # probes need no key
        with pytest.raises(InferenceServerException) as refused:
            tc.infer(DECODER, z)
        assert refused.value.status() == "401"  # and the body is {"error": ...}:
        assert refused.value.message().startswith("missing or invalid API key")
        with pytest.raises(InferenceServerException):
            tc.get_server_metadata()
        key = {"Authorization": "Bearer k1"}
        assert tc.infer(DECODER, z, headers=key).as_numpy("images").shape == (1, 1, 28, 28)
        assert tc.get_server_metadata(headers=key)["name"] == "vae-serve"

"""The Docker image and the compose stack, built and run for real.

Where Docker cannot be had, every test here is skipped with a reason that says so;
CI runs ../shared/tools/docker-offline first, which makes Docker available offline.
One compose project (unique name, free host ports) is shared by the tests in file
order and is always taken down with its volumes, also when a test fails. It runs
docker-compose.yml as it is but for the health checks' interval (tests/docker-compose.test.yml:
every second, so that `up --wait` returns once the service is ready).
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILES = ("-f", "docker-compose.yml", "-f", "tests/docker-compose.test.yml")
IMAGE = "vae-service:test"
TRAIN_IMAGE = "vae-service:test-train"  # compose's `train`: the same Dockerfile, EXTRAS=train,onnx
BASE_IMAGE = "python:3.11-slim"  # the Dockerfile's FROM
# The target: the CPU image at most 1.3 GB, on docker-offline's 477 MB stand-in for
# python:3.11-slim (the official one is about 130 MB): at most 825 MB on top of the base.
ADDED_TO_BASE_MAX = 825_000_000
# The train extra's packages (scikit-learn brings SciPy): in the training image only.
TRAIN_EXTRA = ("sklearn", "matplotlib", "tqdm", "scipy")
TRAINED = "/weights/custom.safetensors"
BUILD_TIMEOUT_S = 1500

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(2400)]


def docker_unavailable() -> str | None:
    """Why Docker cannot be used here, or None when it can."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed (../shared/tools/docker-offline installs it)"
    for args in (["info"], ["compose", "version"]):
        done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            last_line = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return f"`docker {' '.join(args)}` failed: {last_line}"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_pair() -> int:
    """The first of two adjacent free ports, for a two-replica host port range."""
    while True:
        port = free_port()
        if port < 65535 and port_is_free(port + 1):
            return port


class Stack:
    """One compose project of this repository's docker-compose.yml."""

    def __init__(self) -> None:
        self.project = f"vaetest-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.env = {
            **os.environ,
            "VAE_IMAGE": IMAGE,
            "VAE_TRAIN_IMAGE": TRAIN_IMAGE,
            "VAE_HOST_PORT": f"127.0.0.1:{self.port}",
            "VAE_CPUS": "1",
        }
        self.env.pop("VAE_WEIGHTS", None)
        # docker-offline's base image finds the CPU torch wheel locally: no index needed.
        self.env.setdefault("VAE_TORCH_INDEX", "")

    def compose(self, *args: str, timeout: float = 600, **env: str) -> str:
        """Run `docker compose` for this project; a failure shows its output."""
        cmd = ["docker", "compose", "-p", self.project, *COMPOSE_FILES, *args]
        done = subprocess.run(
            cmd,
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {done.returncode}\n"
                f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
            )
        return done.stdout

    @contextlib.contextmanager
    def env_file(self, folder: Path, *lines: str) -> Iterator[None]:
        """``api`` recreated with these VAE_* lines in an .env file, then without them."""
        path = folder / ".env"
        path.write_text("".join(f"{line}\n" for line in lines))
        up = ("up", "-d", "--wait", "--wait-timeout", "240", "api")
        self.compose("--env-file", str(path), *up)
        try:
            yield
        finally:
            self.compose(*up)

    def client(self, port: int | None = None) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{port or self.port}", timeout=60)

    def down(self) -> None:
        """Remove the project's containers, networks and volumes, whatever state it is in."""
        self.compose("--profile", "train", "--profile", "lb", "down", "-v", "-t", "10")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    reason = docker_unavailable()
    if reason is not None:
        pytest.skip(f"Docker is unavailable, so the image and compose stack go untested: {reason}")
    stack = Stack()
    try:
        stack.compose("build", "api", timeout=BUILD_TIMEOUT_S)
        stack.compose("up", "-d", "--wait", "--wait-timeout", "240", "api")
        yield stack
    finally:
        try:
            print(stack.compose("logs", "--no-color", "--tail", "60"))
        finally:
            stack.down()


def image_size(image: str) -> int:
    inspect = ["docker", "image", "inspect", image, "--format", "{{.Size}}"]
    return int(subprocess.run(inspect, capture_output=True, text=True, check=True).stdout)


def installed(image: str, modules: tuple[str, ...]) -> list[str]:
    """Which of these modules the image's Python can import."""
    probe = f"import importlib.util as u; print(*[m for m in {modules!r} if u.find_spec(m)])"
    run = ["docker", "run", "--rm", "--entrypoint", "python", image, "-c", probe]
    return subprocess.run(run, capture_output=True, text=True, check=True).stdout.split()


def png_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (28, 28), color=value).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_pngs(encoded: list[str], count: int) -> None:
    assert len(encoded) == count
    for item in encoded:
        assert Image.open(io.BytesIO(base64.b64decode(item))).size == (28, 28)


def test_image_is_unprivileged_and_checks_readiness(stack: Stack) -> None:
    config = stack.compose("config", "--format", "json")
    assert '"read_only": true' in config
    inspect = subprocess.run(
        ["docker", "image", "inspect", IMAGE, "--format", "{{json .Config}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert '"User":"vae"' in inspect
    assert '"Cmd":["vae-serve","--host","0.0.0.0","--port","8000"]' in inspect
    assert "/readyz" in inspect


def test_the_serving_image_has_no_training_dependencies(stack: Stack) -> None:
    """The image installs the serve and onnx extras, not train: no scikit-learn, SciPy,
    matplotlib or tqdm, and it stays within the size target."""
    assert installed(IMAGE, (*TRAIN_EXTRA, "fastapi", "onnxruntime")) == [
        "fastapi",
        "onnxruntime",
    ]
    added = image_size(IMAGE) - image_size(BASE_IMAGE)
    assert added <= ADDED_TO_BASE_MAX, f"the image adds {added / 1e6:.0f} MB to {BASE_IMAGE}"


def test_api_serves_requests_from_the_host(stack: Stack) -> None:
    with stack.client() as http:
        assert http.get("/readyz").status_code == 200
        files = [("images", (f"{v}.png", png_bytes(v), "image/png")) for v in (0, 200)]
        encoded = http.post("/encode", files=files)
        assert encoded.status_code == 200, encoded.text
        latents = encoded.json()["mean"]
        assert len(latents) == 2
        decoded = http.post("/decode", json={"z": latents})
        assert decoded.status_code == 200, decoded.text
        assert_pngs(decoded.json()["images"], 2)
        sampled = http.get("/sample", params={"n": 3, "seed": 7})
        assert sampled.status_code == 200, sampled.text
        assert_pngs(sampled.json()["images"], 3)


def test_root_filesystem_is_read_only_except_tmp(stack: Stack) -> None:
    stack.compose("exec", "-T", "api", "touch", "/tmp/scratch")
    with pytest.raises(AssertionError, match="Read-only file system"):
        stack.compose("exec", "-T", "api", "touch", "/opt/venv/scratch")


def test_the_image_serves_with_onnx_runtime(stack: Stack) -> None:
    """The image carries the onnx extra, so VAE_BACKEND=auto (the default) exports the
    bundled weights at start-up (into /tmp, the one writable place) and serves them with
    ONNX Runtime (VAE_BACKEND=torch from an .env file: the next test)."""
    with stack.client() as http:
        assert http.get("/model").json()["backend"] == "onnxruntime"
        encoded = http.post("/encode", files=[("images", ("0.png", png_bytes(90), "image/png"))])
        assert encoded.status_code == 200, encoded.text
        assert len(encoded.json()["mean"][0]) == 32


def test_settings_from_an_env_file_reach_the_container(stack: Stack, tmp_path: Path) -> None:
    """Settings written into an .env file reach the container (docker-compose.yml passes
    every VAE_* variable): API keys protect the API, and VAE_BACKEND=torch turns ONNX
    Runtime off, with the same latents; then back to the open API on ONNX Runtime for the
    tests after. One recreation of `api` for both settings."""
    files = [("images", ("0.png", png_bytes(90), "image/png"))]
    with stack.client() as http:
        by_onnx = http.post("/encode", files=files)
        assert by_onnx.status_code == 200, by_onnx.text
    keys = "VAE_API_KEYS=env-file-key-1,env-file-key-2"
    with stack.env_file(tmp_path, keys, "VAE_BACKEND=torch"), stack.client() as http:
        assert http.get("/model").status_code == 401
        key = {"Authorization": "Bearer env-file-key-2"}
        keyed = http.get("/model", headers=key)
        assert keyed.status_code == 200, keyed.text
        assert http.get("/readyz").status_code == 200  # probes need no key
        assert keyed.json()["backend"] == "torch"
        by_torch = http.post("/encode", files=files, headers=key)
        assert by_torch.status_code == 200, by_torch.text
        assert by_torch.json()["mean"][0] == pytest.approx(by_onnx.json()["mean"][0], abs=1e-4)
    with stack.client() as http:
        served = http.get("/model")
        assert served.status_code == 200
        assert served.json()["backend"] == "onnxruntime"


def test_api_serves_weights_trained_in_the_train_container(stack: Stack) -> None:
    with stack.client() as http:
        bundled = http.get("/model").json()["sha256"]
    # `train` has an image of its own, with the train extra the serving image leaves out.
    stack.compose("--profile", "train", "build", "train", timeout=BUILD_TIMEOUT_S)
    assert installed(TRAIN_IMAGE, TRAIN_EXTRA) == list(TRAIN_EXTRA)
    tiny_run = ["--limit-train", "256", "--limit-test", "64", "--epochs", "1", "--device", "cpu"]
    stack.compose("--profile", "train", "run", "--rm", "train", *tiny_run)
    digest = stack.compose(
        "--profile", "train", "run", "--rm", "--no-deps", "--entrypoint", "sha256sum", "train",
        TRAINED,
    ).split()[0]  # fmt: skip
    stack.compose("up", "-d", "--wait", "--wait-timeout", "240", "api", VAE_WEIGHTS=TRAINED)
    with stack.client() as http:
        served = http.get("/model").json()
        assert served["sha256"] == digest != bundled
        assert served["training"]["epochs"] == 1
        assert http.get("/sample", params={"n": 1}).status_code == 200


def test_replicas_scale_out_behind_the_load_balancer(stack: Stack) -> None:
    first, lb_port = free_port_pair(), free_port()
    stack.compose(
        "--profile", "lb", "up", "-d", "--wait", "--wait-timeout", "300", "--scale", "api=2",
        timeout=BUILD_TIMEOUT_S,
        VAE_HOST_PORT=f"127.0.0.1:{first}-{first + 1}",
        VAE_LB_PORT=f"127.0.0.1:{lb_port}",
    )  # fmt: skip
    for index in ("1", "2"):
        address = stack.compose("port", "--index", index, "api", "8000").strip()
        port = int(address.rsplit(":", 1)[1])
        assert first <= port <= first + 1
        with stack.client(port) as replica:
            assert replica.get("/readyz").status_code == 200
    with stack.client(lb_port) as lb:
        replies = [lb.get("/sample", params={"n": 1, "seed": 3}) for _ in range(20)]
    assert all(reply.status_code == 200 for reply in replies)
    assert len({reply.headers["X-Upstream"] for reply in replies}) == 2
    assert len({reply.json()["images"][0] for reply in replies}) == 1

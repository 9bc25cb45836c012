"""What the playground's browser tests share: Debian's headless Chromium, driven by
Playwright's Python API, against real ``vae-serve`` processes (the bundled weights; the
same with API keys; a repository with a grey and a colour model).

Each test checks that the page wrote nothing to the console (the browser's own line for
an HTTP error the test provokes aside) and that every request stayed on the server.
``VAE_PLAYGROUND_SCREENSHOT=docs/playground.png`` makes the screenshot test save there.
Chromium is found at ``VAE_CHROMIUM`` (default /usr/bin/chromium); Playwright's own
browser download is never used.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    Route,
    expect,
    sync_playwright,
)

from model import VAE, VAEConfig, save_weights
from model.pretrained import DEFAULT_WEIGHTS
from tests.conftest import Server

CHROMIUM = Path(os.environ.get("VAE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY = "browser-key-0123456789"
MAX_SAMPLE_N = 64  # the servers' limit: n above it is the 422 the page must show
MAX_BODY_BYTES = 256 * 1024  # and a larger upload the 413
REPO = Path(__file__).resolve().parents[1]
BUNDLED_SHA = "17f332715d9a"  # prefix of the bundled weights' SHA-256 (README)


# ---------------------------------------------------------------- servers


TINY_ARCHITECTURE = {"latent_dim": 4, "widths": (4, 8), "hidden_dim": 16}
# The shapes model's architecture (64x64 RGB, issue 17), randomly initialised.
SHAPES_ARCHITECTURE = {"latent_dim": 10, "widths": (16, 32, 64, 64), "hidden_dim": 256}


def tiny_weights(
    folder: Path,
    name: str,
    channels: int,
    image_size: int,
    seed: int,
    architecture: dict[str, Any] = TINY_ARCHITECTURE,
) -> Path:
    config = VAEConfig(image_size=image_size, channels=channels, **architecture)
    torch.manual_seed(seed)
    meta = {
        "data": {"name": "synthetic", "shape": [channels, image_size, image_size]},
        "training": {"epochs": 0, "note": "random init for tests"},
    }
    return save_weights(folder / f"{name}.safetensors", VAE(config).eval(), meta)


def launch(log: Path, flags: list[str], env: dict[str, str] | None = None) -> Server:
    """``vae-serve`` on a free loopback port, not waited for yet."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "service.cli", "--host", "127.0.0.1", "--port", str(port)]
    # small batches: start-up warms up eight batch sizes, not 64
    command += ["--device", "cpu", "--max-batch-size", "8", "--max-sample-n", str(MAX_SAMPLE_N)]
    command += ["--max-body-bytes", str(MAX_BODY_BYTES), *flags]
    unset = {"VAE_API_KEYS": "", "VAE_MODEL_DIR": "", "VAE_CORS_ORIGINS": ""}  # empty: unset
    environment = {**os.environ, "PYTHONPATH": str(REPO), **unset, **(env or {})}
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            command, env=environment, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr
        )
    return Server(f"http://127.0.0.1:{port}", process, log)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """Three servers, started together: ``bundled`` (the default weights), ``keyed``
    (tiny weights, with VAE_API_KEYS) and ``repo`` (a grey and two colour models)."""
    folder = tmp_path_factory.mktemp("playground")
    models = folder / "models"
    models.mkdir()
    grey = tiny_weights(models, "grey", channels=1, image_size=28, seed=0)
    tiny_weights(models, "colour", channels=3, image_size=32, seed=1)
    tiny_weights(models, "shapes", 3, 64, seed=2, architecture=SHAPES_ARCHITECTURE)
    started = {
        "bundled": launch(folder / "bundled.log", ["--weights", str(DEFAULT_WEIGHTS)]),
        "keyed": launch(folder / "keyed.log", ["--weights", str(grey)], {"VAE_API_KEYS": KEY}),
        "repo": launch(
            folder / "repo.log", ["--model-dir", str(models), "--default-model", "grey"]
        ),
    }
    try:
        for server in started.values():
            server.wait_ready(timeout_s=120)
        yield started
    finally:
        for server in started.values():
            if server.process.poll() is None:
                server.process.kill()
                server.process.wait()


TIMEOUT_MS = 30_000  # generous: the tests share two cores with everything else
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# ---------------------------------------------------------------- a watched page


@dataclass
class Watched:
    """A page, what it wrote to the console, and the requests that left the server."""

    page: Page
    origin: str
    console_errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    expected_statuses: set[int] = field(default_factory=set)

    def expect_http_errors(self, *statuses: int) -> None:
        """Chromium logs each failed fetch ('Failed to load resource: ... 401'); the
        test provokes these."""
        self.expected_statuses.update(statuses)

    def unexpected_console_errors(self) -> list[str]:
        expected = [f"status of {status} " for status in self.expected_statuses]
        return [
            text
            for text in self.console_errors
            if not (text.startswith("Failed to load resource") and any(e in text for e in expected))
        ]


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., Watched]]:
    """``open_page(server, width=1280)`` -> a Watched page at the server's /, ready."""
    opened: list[Watched] = []

    def open_(server: Server, width: int = 1280, path: str = "/", ready: bool = True) -> Watched:
        context = browser.new_context(viewport={"width": width, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        watched = Watched(page, server.url)

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                watched.console_errors.append(message.text)

        def guard(route: Route) -> None:
            if route.request.url.startswith(server.url + "/"):
                route.continue_()
            else:
                watched.foreign.append(route.request.url)
                route.abort()

        page.on("console", on_console)
        page.on("pageerror", lambda error: watched.console_errors.append(f"page error: {error}"))
        context.route("**/*", guard)
        page.goto(server.url + path)
        if ready:
            expect(status(page, "ready")).to_have_text("ready")
        opened.append(watched)
        return watched

    yield open_
    for watched in opened:
        watched.page.context.close()
    for watched in opened:
        assert watched.unexpected_console_errors() == [], watched.console_errors
        assert watched.foreign == [], watched.foreign


def status(page: Page, name: str) -> Locator:
    return page.get_by_test_id("status-bar").locator(f'[data-field="{name}"]')


def loaded_images(page: Page, testid: str) -> list[dict[str, object]]:
    """The images under a test id once all have loaded: src and natural size."""
    selector = f'[data-testid="{testid}"]'
    page.wait_for_function(
        """(selector) => {
            const root = document.querySelector(selector);
            const imgs = root.tagName === "IMG" ? [root] : [...root.querySelectorAll("img")];
            return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
        }""",
        arg=selector,
    )
    return page.evaluate(
        """(selector) => {
            const root = document.querySelector(selector);
            const imgs = root.tagName === "IMG" ? [root] : [...root.querySelectorAll("img")];
            return imgs.map((i) => ({src: i.src, width: i.naturalWidth, height: i.naturalHeight,
                                     shown: i.getBoundingClientRect().width}));
        }""",
        selector,
    )


def panel_error(page: Page, panel: str) -> Locator:
    return page.get_by_test_id(panel).get_by_test_id("error-message")


def sample(page: Page, n: int, seed: int | None) -> list[dict[str, object]]:
    panel = page.get_by_test_id("sample-panel")
    panel.get_by_label("n", exact=True).fill(str(n))
    panel.get_by_label("seed").fill("" if seed is None else str(seed))
    page.get_by_test_id("sample-seed").evaluate("el => { el.textContent = ''; }")
    page.get_by_test_id("sample-button").click()
    expect(page.get_by_test_id("sample-seed")).to_contain_text("seed ")
    expect(page.get_by_test_id("sample-grid").locator("img")).to_have_count(n)
    return loaded_images(page, "sample-grid")


def set_range(page: Page, testid: str, value: int) -> None:
    page.get_by_test_id(testid).evaluate(
        "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }",
        value,
    )


def png_bytes(width: int, height: int, mode: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(out, "PNG")
    return out.getvalue()


def shows_colour(img: Locator) -> bool:
    """Whether the shown image, read back through a canvas, has a pixel that is not grey."""
    return bool(
        img.evaluate(
            """(img) => {
            const canvas = document.createElement("canvas");
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            const context = canvas.getContext("2d");
            context.drawImage(img, 0, 0);
            const d = context.getImageData(0, 0, canvas.width, canvas.height).data;
            for (let i = 0; i < d.length; i += 4) {
                if (d[i] !== d[i + 1] || d[i + 1] !== d[i + 2]) return true;
            }
            return false;
        }"""
        )
    )


def fetched_png(src: str) -> Image.Image:
    """The PNG behind an <img> the page filled from an API answer (a data: URL)."""
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    return Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :])))


# ---------------------------------------------------------------- the tests


BROWSER_MARKS = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; or set "
        "VAE_CHROMIUM): the playground's browser tests need a real browser",
    ),
]

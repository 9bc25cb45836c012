"""The playground in a real browser: Debian's headless Chromium, driven by Playwright's
Python API, against real ``vae-serve`` processes (the bundled weights; the same with API
keys; a repository with a grey and a colour model).

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
BUNDLED_SHA = "d0b63be5dcfa"  # prefix of the bundled weights' SHA-256 (README)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; or set "
        "VAE_CHROMIUM): the playground's browser tests need a real browser",
    ),
]


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


def test_status_bar_and_the_same_seed_gives_the_same_grid(
    servers: dict[str, Server], open_page: Callable[..., Watched]
) -> None:
    page = open_page(servers["bundled"]).page
    assert status(page, "name").text_content() == "fashion-mnist"
    assert status(page, "sha").text_content() == BUNDLED_SHA
    assert status(page, "device").text_content() == "cpu"
    expect(status(page, "latency")).to_contain_text(" ms")
    first = sample(page, 8, seed=7)
    assert all(image["width"] == 28 and image["height"] == 28 for image in first)
    assert all(image["shown"] == 84 for image in first)  # scaled 3x, whole pixels
    expect(page.get_by_test_id("sample-seed")).to_contain_text("seed 7")
    again = sample(page, 8, seed=7)
    assert [i["src"] for i in again] == [i["src"] for i in first]
    other = sample(page, 8, seed=8)
    assert [i["src"] for i in other] != [i["src"] for i in first]
    sample(page, 4, seed=None)  # the server picks the seed, and the page shows it
    text = page.get_by_test_id("sample-seed").text_content() or ""
    assert text.startswith("seed ") and text.split()[1].isdigit()
    rendering = (
        page.get_by_test_id("sample-grid")
        .locator("img")
        .first.evaluate("el => getComputedStyle(el).imageRendering")
    )
    assert rendering == "pixelated"


def test_example_and_upload_give_reconstruction_and_posterior(
    servers: dict[str, Server], open_page: Callable[..., Watched], tmp_path: Path
) -> None:
    watched = open_page(servers["bundled"])
    page = watched.page
    picker = page.get_by_test_id("example-picker")
    expect(picker.get_by_role("button")).to_have_count(10)
    picker.get_by_role("button", name="Sneaker").click()
    loaded_images(page, "encode-input")
    recon = loaded_images(page, "reconstruction")
    assert recon[0]["width"] == 28
    chart = page.get_by_test_id("posterior-chart").locator("svg")
    expect(chart).to_have_attribute("data-dims", "32")
    active = int(chart.get_attribute("data-active") or 0)
    assert 0 < active < 32  # the bundled model leaves some dimensions unused
    expect(chart.locator("g.dim")).to_have_count(32)
    expect(chart.locator("g.dim.inactive")).to_have_count(32 - active)
    expect(page.get_by_test_id("posterior-summary")).to_contain_text(
        f"Sneaker: {active} of 32 latent dimensions active"
    )

    upload = tmp_path / "colour-40x30.png"
    upload.write_bytes(png_bytes(40, 30, "RGB", seed=3))  # resized and made grey by the service
    page.get_by_test_id("upload-input").set_input_files(upload)
    expect(page.get_by_test_id("posterior-summary")).to_contain_text("colour-40x30.png:")
    assert loaded_images(page, "reconstruction")[0]["src"] != recon[0]["src"]
    assert loaded_images(page, "encode-input")[0]["width"] == 40  # the file as it was

    watched.expect_http_errors(400)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.get_by_test_id("upload-input").set_input_files(notes)
    expect(panel_error(page, "encode-panel")).to_contain_text("HTTP 400")
    expect(panel_error(page, "encode-panel")).to_contain_text("not an image file")
    picker.get_by_role("button", name="Bag").click()  # the next success clears the error
    expect(page.get_by_test_id("posterior-summary")).to_contain_text("Bag:")
    expect(panel_error(page, "encode-panel")).to_be_hidden()


def test_interpolation_strip_has_steps_images(
    servers: dict[str, Server], open_page: Callable[..., Watched], tmp_path: Path
) -> None:
    page = open_page(servers["bundled"]).page
    panel = page.get_by_test_id("interpolate-panel")
    set_range(page, "interpolate-steps", 5)
    expect(panel.locator("output")).to_have_text("5")
    page.get_by_test_id("interpolate-a").select_option(label="Trouser")
    page.get_by_test_id("interpolate-b").select_option(label="Dress")
    page.get_by_test_id("interpolate-button").click()
    expect(page.get_by_test_id("interpolation-strip").locator("img")).to_have_count(5)
    images = loaded_images(page, "interpolation-strip")
    assert len({i["src"] for i in images}) == 5

    sample(page, 2, seed=11)  # the last two samples, as latents
    page.get_by_test_id("interpolate-a").select_option("sample:0")
    page.get_by_test_id("interpolate-b").select_option("sample:1")
    set_range(page, "interpolate-steps", 3)
    page.get_by_test_id("interpolate-button").click()
    expect(page.get_by_test_id("interpolation-strip").locator("img")).to_have_count(3)
    loaded_images(page, "interpolation-strip")

    upload = tmp_path / "mine.png"
    upload.write_bytes(png_bytes(28, 28, "L", seed=5))
    page.get_by_test_id("interpolate-b-file").set_input_files(upload)
    expect(page.get_by_test_id("interpolate-b")).to_have_value("file")
    set_range(page, "interpolate-steps", 4)
    page.get_by_test_id("interpolate-button").click()  # a sample to an uploaded image
    expect(page.get_by_test_id("interpolation-strip").locator("img")).to_have_count(4)
    loaded_images(page, "interpolation-strip")


def test_traversal_grid_has_k_rows(
    servers: dict[str, Server], open_page: Callable[..., Watched]
) -> None:
    page = open_page(servers["bundled"]).page
    page.get_by_test_id("traverse-source").select_option(label="Ankle boot")
    page.get_by_test_id("traverse-k").fill("3")
    page.get_by_test_id("traverse-steps").fill("5")
    page.get_by_test_id("traverse-range").fill("2")
    page.get_by_test_id("traverse-button").click()
    rows = page.get_by_test_id("traversal-grid").get_by_test_id("traversal-row")
    expect(rows).to_have_count(3)
    for r in range(3):
        expect(rows.nth(r).locator("img")).to_have_count(5)
    assert len(loaded_images(page, "traversal-grid")) == 15
    dims = [rows.nth(r).get_attribute("data-dim") for r in range(3)]
    assert len(set(dims)) == 3
    head = page.get_by_test_id("traversal-grid").locator(".thead .tick")
    expect(head).to_have_text(["-2.0", "-1.0", "0.0", "+1.0", "+2.0"])
    # the most active dimension of the encode panel's image, once it has one
    page.get_by_test_id("example-picker").get_by_role("button", name="Ankle boot").click()
    expect(page.get_by_test_id("posterior-summary")).to_contain_text("Ankle boot:")
    page.get_by_test_id("traverse-source").select_option("encoded")
    page.get_by_test_id("traverse-k").fill("1")
    page.get_by_test_id("traverse-button").click()
    expect(rows).to_have_count(1)
    assert rows.first.get_attribute("data-dim") == dims[0]


def test_api_errors_are_readable_messages(
    servers: dict[str, Server], open_page: Callable[..., Watched], tmp_path: Path
) -> None:
    watched = open_page(servers["bundled"])
    page = watched.page
    watched.expect_http_errors(413, 422)
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(400, 400, "RGB", seed=0))  # noise: 480 kB
    assert big.stat().st_size > MAX_BODY_BYTES
    page.get_by_test_id("upload-input").set_input_files(big)
    expect(panel_error(page, "encode-panel")).to_contain_text("too large for this service")
    expect(panel_error(page, "encode-panel")).to_contain_text("HTTP 413")

    panel = page.get_by_test_id("sample-panel")
    panel.get_by_label("n", exact=True).fill(str(MAX_SAMPLE_N + 1))
    page.get_by_test_id("sample-button").click()
    error = panel_error(page, "sample-panel")
    expect(error).to_contain_text("HTTP 422")
    expect(error).to_contain_text(f"the limit is {MAX_SAMPLE_N} (VAE_MAX_SAMPLE_N)")
    expect(status(page, "latency")).to_contain_text("422")
    panel.get_by_label("n", exact=True).fill("2")
    page.get_by_test_id("sample-button").click()
    expect(page.get_by_test_id("sample-grid").locator("img")).to_have_count(2)
    expect(error).to_be_hidden()


def test_api_key_from_the_key_field(
    servers: dict[str, Server], open_page: Callable[..., Watched], browser: Browser
) -> None:
    """Without a key (or with a wrong one) the page says so; with it, it works, and keeps
    it for the tab's session."""
    watched = open_page(servers["keyed"], ready=False)
    watched.expect_http_errors(401)
    page = watched.page
    header_error = page.locator("header").get_by_test_id("error-message")
    expect(header_error).to_contain_text("needs an API key")
    expect(header_error).to_contain_text("HTTP 401")
    expect(status(page, "ready")).to_have_text("needs an API key")
    page.get_by_test_id("sample-button").click()
    expect(panel_error(page, "sample-panel")).to_contain_text("HTTP 401")
    expect(page.get_by_test_id("sample-grid").locator("img")).to_have_count(0)

    page.get_by_label("API key").fill("wrong-key")
    page.get_by_test_id("api-key-button").click()
    expect(header_error).to_contain_text("HTTP 401")

    page.get_by_label("API key").fill(KEY)
    page.get_by_label("API key").press("Enter")
    expect(status(page, "ready")).to_have_text("ready")
    expect(header_error).to_be_hidden()
    sample(page, 4, seed=1)
    page.get_by_test_id("example-picker").get_by_role("button", name="Coat").click()
    loaded_images(page, "reconstruction")

    page.reload()  # the key is kept for the tab's session
    expect(page.get_by_label("API key")).to_have_value(KEY)
    expect(status(page, "ready")).to_have_text("ready")
    assert page.evaluate("sessionStorage.length") == 1
    assert page.evaluate("localStorage.length") == 0  # never beyond the session


def test_colour_model_from_the_model_picker(
    servers: dict[str, Server], open_page: Callable[..., Watched]
) -> None:
    page = open_page(servers["repo"]).page
    picker = page.get_by_test_id("model-picker")
    expect(picker.locator("option")).to_have_text(["colour", "grey (default)", "shapes"])
    expect(picker).to_have_value("grey")
    picker.select_option("colour")
    expect(status(page, "name")).to_have_text("colour")
    expect(status(page, "shape")).to_have_text("4 dims · images 3×32×32")
    expect(status(page, "ready")).to_have_text("ready")
    images = sample(page, 4, seed=2)
    assert all(image["width"] == 32 and image["shown"] == 64 for image in images)
    expect(page.get_by_test_id("sample-seed")).to_contain_text("prior standard")
    colourful = shows_colour(page.get_by_test_id("sample-grid").locator("img").first)
    assert colourful, "the colour model's samples came out grey"
    page.get_by_test_id("example-picker").get_by_role("button", name="Pullover").click()
    assert loaded_images(page, "reconstruction")[0]["width"] == 32  # grey example, RGB model
    expect(page.get_by_test_id("posterior-chart").locator("g.dim")).to_have_count(4)
    page.get_by_test_id("interpolate-button").click()
    expect(page.get_by_test_id("interpolation-strip").locator("img")).to_have_count(8)
    expect(page.get_by_test_id("traverse-k")).to_have_attribute("max", "4")  # latent_dim
    page.get_by_test_id("traverse-k").fill("4")
    page.get_by_test_id("traverse-button").click()
    expect(page.get_by_test_id("traversal-row")).to_have_count(4)
    page.reload()  # the model picked is kept for the session
    expect(status(page, "name")).to_have_text("colour")


def test_traversal_of_a_64x64_rgb_model_is_colour(
    servers: dict[str, Server], open_page: Callable[..., Watched], tmp_path: Path
) -> None:
    """The shapes architecture (issue 17): picked, traversed from a colour upload, and
    the traversal's images are RGB PNGs that show colour."""
    page = open_page(servers["repo"]).page
    page.get_by_test_id("model-picker").select_option("shapes")
    expect(status(page, "shape")).to_have_text("10 dims · images 3×64×64")
    expect(status(page, "ready")).to_have_text("ready")
    upload = tmp_path / "colour-64.png"
    upload.write_bytes(png_bytes(64, 64, "RGB", seed=4))
    page.get_by_test_id("traverse-file").set_input_files(upload)
    expect(page.get_by_test_id("traverse-source")).to_have_value("file")
    page.get_by_test_id("traverse-k").fill("3")
    page.get_by_test_id("traverse-steps").fill("5")
    page.get_by_test_id("traverse-button").click()
    rows = page.get_by_test_id("traversal-grid").get_by_test_id("traversal-row")
    expect(rows).to_have_count(3)
    images = loaded_images(page, "traversal-grid")
    assert len(images) == 15
    assert all(image["width"] == 64 and image["shown"] == 64 for image in images)
    pngs = [fetched_png(str(image["src"])) for image in images]
    assert {(png.mode, png.size) for png in pngs} == {("RGB", (64, 64))}
    assert shows_colour(rows.first.locator("img").first), "the traversal came out grey"


def test_keyboard_labels_and_a_narrow_screen(
    servers: dict[str, Server], open_page: Callable[..., Watched]
) -> None:
    page = open_page(servers["bundled"], width=360).page
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll("input, select, button")]
            .filter((el) => !(el.labels?.length || el.getAttribute("aria-label")
                              || (el.tagName === "BUTTON" && el.textContent.trim())))
            .map((el) => el.outerHTML)"""
    )
    assert unlabelled == []
    seed = page.get_by_test_id("sample-panel").get_by_label("seed")
    seed.focus()
    seed.fill("5")
    seed.press("Enter")  # a form: Enter submits
    expect(page.get_by_test_id("sample-grid").locator("img")).to_have_count(16)
    first_example = page.get_by_test_id("example-picker").get_by_role("button").first
    first_example.focus()
    page.keyboard.press("Enter")
    loaded_images(page, "reconstruction")
    page.keyboard.press("Tab")  # focus moves on to the next example
    assert page.evaluate("document.activeElement.getAttribute('aria-label')").startswith("Trouser")
    page.get_by_test_id("interpolate-button").click()
    page.get_by_test_id("traverse-button").click()
    expect(page.get_by_test_id("traversal-row")).to_have_count(5)
    loaded_images(page, "interpolation-strip")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360  # no sideways scroll
    for testid in ("sample-panel", "encode-panel", "interpolate-panel", "traverse-panel"):
        box = page.get_by_test_id(testid).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360, testid


def test_screenshot_and_load_figures(
    servers: dict[str, Server],
    open_page: Callable[..., Watched],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every panel in use, in one picture; and what loading the page costs."""
    # An app started in this process earlier may have lowered Pillow's process-wide
    # decompression-bomb limit (VAE_MAX_PIXELS_PER_IMAGE); the screenshot is larger.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    page = open_page(servers["bundled"]).page
    transfer = page.evaluate(
        """() => [...performance.getEntriesByType("navigation"),
                  ...performance.getEntriesByType("resource")]
            .reduce((sum, e) => sum + e.transferSize, 0)"""
    )
    assert 0 < transfer < 60_000, transfer  # gzipped HTML, CSS, JS and the examples
    sample(page, 12, seed=7)
    page.get_by_test_id("example-picker").get_by_role("button", name="Ankle boot").click()
    loaded_images(page, "reconstruction")
    page.get_by_test_id("interpolate-a").select_option(label="Sneaker")
    page.get_by_test_id("interpolate-b").select_option(label="Ankle boot")
    page.get_by_test_id("interpolate-button").click()
    loaded_images(page, "interpolation-strip")
    page.get_by_test_id("traverse-source").select_option(label="T-shirt/top")
    page.get_by_test_id("traverse-button").click()
    expect(page.get_by_test_id("traversal-row")).to_have_count(5)
    loaded_images(page, "traversal-grid")
    status(page, "latency").evaluate("el => { el.textContent = '– ms'; }")  # stable picture
    shot = tmp_path / "playground.png"
    page.screenshot(path=shot, full_page=True)
    assert Image.open(shot).size[0] == 1280
    target = os.environ.get("VAE_PLAYGROUND_SCREENSHOT")
    if target:
        Path(target).write_bytes(shot.read_bytes())

"""What the playground's browser tests share: Debian's headless Chromium, driven by
Playwright's Python API, against real ``vae-serve`` processes (tests/browser_servers.py:
the bundled weights; the same with API keys; a repository with a grey and a colour model).

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
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

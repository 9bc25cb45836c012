"""The playground in a real browser: colour models, keyboard and narrow screens, and the
README's screenshot (fixtures and helpers: tests/browser_support.py,
tests/browser_servers.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect

from tests import browser_servers, browser_support
from tests.browser_support import (
    BROWSER_MARKS,
    Watched,
    fetched_png,
    loaded_images,
    png_bytes,
    sample,
    shows_colour,
    status,
)
from tests.conftest import Server

pytestmark = BROWSER_MARKS

# The shared fixtures, bound here so that pytest finds them in this module.
browser = browser_support.browser
open_page = browser_support.open_page
servers = browser_servers.servers


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
    page.get_by_test_id("score-source").select_option("noise")
    page.get_by_test_id("score-button").click()
    expect(page.get_by_test_id("score-verdict")).to_contain_text("uniform noise: score ")
    loaded_images(page, "score-input")
    status(page, "latency").evaluate("el => { el.textContent = '– ms'; }")  # stable picture
    shot = tmp_path / "playground.png"
    page.screenshot(path=shot, full_page=True)
    assert Image.open(shot).size[0] == 1280
    target = os.environ.get("VAE_PLAYGROUND_SCREENSHOT")
    if target:
        Path(target).write_bytes(shot.read_bytes())

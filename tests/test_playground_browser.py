"""The playground in a real browser: sampling, encoding, interpolation, traversal,
errors and the API key field (fixtures and helpers: tests/browser_support.py,
tests/browser_servers.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Browser, expect

from tests import browser_servers, browser_support
from tests.browser_servers import BUNDLED_SHA, KEY, MAX_BODY_BYTES, MAX_SAMPLE_N
from tests.browser_support import (
    BROWSER_MARKS,
    Watched,
    loaded_images,
    panel_error,
    png_bytes,
    sample,
    set_range,
    status,
)
from tests.conftest import Server

pytestmark = BROWSER_MARKS

# The shared fixtures, bound here so that pytest finds them in this module.
browser = browser_support.browser
open_page = browser_support.open_page
servers = browser_servers.servers


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


def test_score_panel_shows_score_p_value_flag_and_parts(
    servers: dict[str, Server], open_page: Callable[..., Watched], tmp_path: Path
) -> None:
    watched = open_page(servers["bundled"])
    page = watched.page
    verdict = page.get_by_test_id("score-verdict")
    page.get_by_test_id("score-source").select_option(label="Sneaker")
    page.get_by_test_id("score-button").click()
    expect(verdict).to_contain_text("Sneaker: score ")
    expect(verdict).to_contain_text("in distribution at a 1% false-positive rate")
    assert verdict.get_attribute("data-anomalous") == "false"
    parts = page.get_by_test_id("score-parts").locator("tr")
    names = [parts.nth(i).get_attribute("data-part") for i in range(parts.count())]
    assert {"neg_elbo_nats", "bits_per_dim", "iwae_nats", "kl_nats"} <= set(names)
    expect(page.get_by_test_id("score-parts").locator("caption")).to_contain_text("dose score")
    assert loaded_images(page, "score-input")[0]["width"] == 28

    page.get_by_test_id("score-source").select_option("noise")  # made in the page
    page.get_by_test_id("score-k").fill("4")
    page.get_by_test_id("score-button").click()
    expect(verdict).to_contain_text("uniform noise: score ")
    expect(verdict).to_have_attribute("data-anomalous", "true")
    expect(verdict).to_contain_text("anomalous at a 1% false-positive rate")
    expect(page.get_by_test_id("score-parts").locator("caption")).to_contain_text("k = 4")

    watched.expect_http_errors(400)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.get_by_test_id("score-file").set_input_files(notes)
    page.get_by_test_id("score-button").click()
    expect(panel_error(page, "score-panel")).to_contain_text("HTTP 400")

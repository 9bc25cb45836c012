"""The playground's page and files as the service serves them (no browser here; the
browser tests are test_playground_browser*.py), and where its example images come from.

``python tests/test_playground.py --write-examples`` writes the bundled examples again
from Debian's Fashion-MNIST test set.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr
from starlette.types import ASGIApp, Message

from vae_service.server.main import create_app
from vae_service.server.routes import playground
from vae_service.server.settings import Settings
from vae_service.training.data import IDX_DIRS, load_idx_split

STATIC = Path(__file__).resolve().parents[1] / "src" / "vae_service" / "server" / "static"
EXAMPLES = STATIC / "examples"
LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
KEY = "playground-key-0123456789"


@dataclass(frozen=True)
class Example:
    index: int  # in the test set
    label: str
    file: str
    pixels: np.ndarray  # 28 x 28 uint8


def example_images(directory: Path = IDX_DIRS["fashion-mnist"]) -> list[Example]:
    """The first image of each class in the Fashion-MNIST test set, in class order."""
    split = load_idx_split(directory, "test")
    assert split.labels is not None
    labels = split.labels.tolist()
    picked = []
    for cls, label in enumerate(LABELS):
        index = labels.index(cls)
        pixels = (split.images[index, 0] * 255).round().byte().numpy()
        name = re.sub(r"[^a-z]+", "-", label.lower()).strip("-") + ".png"
        picked.append(Example(index, label, name, pixels))
    return picked


def write_examples(folder: Path = EXAMPLES) -> None:
    """The PNGs and examples.json, the list the page reads (paths relative to it)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = []
    for example in example_images():
        Image.fromarray(example.pixels, "L").save(folder / example.file, optimize=True)
        manifest.append(
            {
                "file": f"examples/{example.file}",
                "label": example.label,
                "source": f"Fashion-MNIST test set, image {example.index}",
                "test_index": example.index,
            }
        )
    (folder / "examples.json").write_text(json.dumps(manifest, indent=1) + "\n")


@pytest.fixture(scope="module")
def locked(served_settings: Settings) -> Iterator[TestClient]:
    """The app with an API key: the page and its files must load without it."""
    settings = served_settings.model_copy(update={"api_keys": [SecretStr(KEY)]})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def asset_urls(html: str) -> list[str]:
    """The page's own files it names (stylesheet, module script), as absolute paths."""
    return ["/" + url for url in re.findall(r'(?:href|src)="(playground/[^"]+)"', html)]


@pytest.mark.parametrize("path", ["/", "/playground"])
def test_page_is_served_without_a_key(locked: TestClient, path: str) -> None:
    reply = locked.get(path)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    html = reply.text
    for testid in (
        "sample-panel",
        "sample-button",
        "sample-grid",
        "encode-panel",
        "upload-input",
        "example-picker",
        "reconstruction",
        "posterior-chart",
        "interpolate-panel",
        "interpolation-strip",
        "traverse-panel",
        "traversal-grid",
        "status-bar",
        "error-message",
        "api-key",
        "model-picker",
    ):
        assert f'data-testid="{testid}"' in html, testid
    assert "default-src 'none'" in reply.headers["content-security-policy"]
    assert reply.headers["x-content-type-options"] == "nosniff"
    urls = asset_urls(html)
    assert "/playground/playground.css" in urls and "/playground/js/main.js" in urls
    for url in urls:
        assert locked.get(url).status_code == 200, url


def test_every_file_is_served_without_a_key(locked: TestClient) -> None:
    """Every file of the folder, with its type; the API itself still needs the key."""
    files = [p for p in STATIC.rglob("*") if p.is_file() and p.name != "index.html"]
    assert len(files) >= 5
    for path in files:
        reply = locked.get(f"/playground/{path.relative_to(STATIC).as_posix()}")
        assert reply.status_code == 200, path
        assert reply.content == path.read_bytes()
        expected = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
        if path.suffix in expected:
            assert reply.headers["content-type"].startswith(expected[path.suffix]), path
    assert locked.get("/models").status_code == 401
    assert locked.get("/sample?n=1").status_code == 401
    assert locked.get("/sample?n=1", headers={"Authorization": f"Bearer {KEY}"}).is_success


def test_javascript_modules_import_only_their_own_files() -> None:
    """No CDN and no download at run time: every import is a relative path of the folder,
    and no file names a URL with a scheme or a host."""
    for path in [*STATIC.rglob("*.js"), *STATIC.rglob("*.html"), *STATIC.rglob("*.css")]:
        text = path.read_text().replace('"http://www.w3.org/2000/svg"', "SVG_NS")  # a name
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text), path
        for target in re.findall(r"""(?:from|import)\s*\(?\s*["']([^"']+)["']""", text):
            assert target.startswith("./"), (path, target)
            assert (path.parent / target).resolve().is_file(), (path, target)


def raw_get(app: ASGIApp, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as a client sent it (httpx would resolve the dot segments)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    async def call() -> None:
        await app(scope, receive, send)

    asyncio.run(call())
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


def test_unknown_files_and_escapes_are_404_not_401(locked: TestClient) -> None:
    """Only the folder's files are served: any other name under the open prefix is a 404
    (the name never reaches the disk), and the prefix reaches no API route."""
    for path in (
        "/playground/nope.js",
        "/playground/index.html",
        "/playground/../models",
        "/playground/../sample",
        "/playground/..%2Fservice%2Fauth.py",
        "/playground/../../service/auth.py",
        "/playground//etc/passwd",
    ):
        status, body = raw_get(locked.app, path)
        assert status == 404, (path, status, body)
        assert b"playground file" in body, (path, body)
    reply = locked.get("/playground/", follow_redirects=False)
    assert reply.status_code == 308 and reply.headers["location"] == "../playground"
    assert locked.get("/playgroundx").status_code == 401  # not under the open prefix
    assert locked.get("/playground/../models").status_code == 401  # httpx asks for /models
    paths = locked.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert not any(p == "/" or p.startswith("/playground") for p in paths["paths"])


def test_etag_and_gzip(locked: TestClient) -> None:
    first = locked.get("/playground/js/main.js", headers={"Accept-Encoding": "gzip"})
    assert first.headers["content-encoding"] == "gzip"
    assert first.headers["vary"] == "Accept-Encoding"
    assert first.content == (STATIC / "js" / "main.js").read_bytes()  # httpx decoded it
    again = locked.get("/playground/js/main.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    raw = locked.get("/", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers
    png = locked.get("/playground/examples/sneaker.png", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in png.headers  # PNGs are compressed already


def test_gzip_sizes_are_what_a_browser_transfers() -> None:
    """The page and its code stay small: under 40 kB gzipped, examples included."""
    total = sum(
        len(a.gzipped if a.gzipped is not None else a.body) for a in playground.ASSETS.values()
    )
    assert 0 < total < 40_000, total
    page = playground.ASSETS["index.html"].gzipped or b""
    assert gzip.decompress(page).startswith(b"<!doctype html>")


def test_examples_are_fashion_mnist_test_images() -> None:
    """examples.json lists each bundled PNG with the test-set image it is, pixel for pixel."""
    manifest = json.loads((EXAMPLES / "examples.json").read_text())
    assert [entry["label"] for entry in manifest] == list(LABELS)
    for entry in manifest:
        with Image.open(STATIC / entry["file"]) as img:
            assert img.mode == "L" and img.size == (28, 28)
    if not IDX_DIRS["fashion-mnist"].is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed: provenance unchecked")
    for entry, example in zip(manifest, example_images(), strict=True):
        assert entry["test_index"] == example.index
        with Image.open(STATIC / entry["file"]) as img:
            assert np.array_equal(np.asarray(img), example.pixels), entry


def test_without_the_folder_the_page_is_404(
    locked: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package built without its static files serves the API all the same."""
    assert playground.read_assets(tmp_path / "missing") == {}
    (tmp_path / "a.css").write_text("p{}")
    (tmp_path / ".hidden").write_text("x")
    assets = playground.read_assets(tmp_path)
    assert list(assets) == ["a.css"] and assets["a.css"].media_type == "text/css; charset=utf-8"
    monkeypatch.setattr(playground, "ASSETS", {})
    reply = locked.get("/")
    assert reply.status_code == 404 and "not installed" in reply.json()["detail"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-examples"]:
        sys.exit("usage: python tests/test_playground.py --write-examples")
    write_examples()
    print(f"wrote {EXAMPLES}")

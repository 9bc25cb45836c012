"""The latent-space playground: one static page, at / and /playground, and its files.

The files are the package's ``server/static/`` folder (docs/playground.md), read once at
import and served from memory: a URL picks one of those files by name, never a path on
disk. Each answer carries an ETag (a repeat visit is a 304) and, for text, is gzipped
when the browser takes it. The page and its files need no API key (server/auth.py opens
/, /playground and /playground/...); the page sends the key typed into it with each of
its API calls, which are the public API's.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import RedirectResponse

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
PAGE = "index.html"
ASSET_PREFIX = "/playground/"  # the page's relative URLs ("playground/...") resolve here
COMPRESSIBLE = {".html", ".css", ".js", ".json", ".svg"}
TYPES = {".js": "text/javascript", ".json": "application/json", ".png": "image/png"}
# Everything the page loads is its own (no CDN, no inline script or style); images
# are its own files, the API's base64 PNGs (data:) or files the user picked (blob:).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter(tags=["playground"], include_in_schema=False)


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    media_type: str
    etag: str


def read_asset(path: Path) -> Asset:
    body = path.read_bytes()
    suffix = path.suffix.lower()
    media_type = TYPES.get(suffix) or mimetypes.guess_type(path.name)[0] or "text/plain"
    if media_type.startswith("text/") or media_type == "application/json":
        media_type += "; charset=utf-8"
    squeezed = gzip.compress(body, 9, mtime=0) if suffix in COMPRESSIBLE else None
    return Asset(body, squeezed, media_type, f'"{hashlib.sha256(body).hexdigest()[:20]}"')


def read_assets(folder: Path) -> dict[str, Asset]:
    """Every file under ``folder`` by its path there ('js/main.js'); dot files skipped."""
    if not folder.is_dir():
        return {}
    return {
        path.relative_to(folder).as_posix(): read_asset(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.parts)
    }


ASSETS = read_assets(STATIC_DIR)


def serve(asset: Asset, request: Request) -> Response:
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache", **SECURITY_HEADERS}
    if asset.gzipped is not None:
        headers["Vary"] = "Accept-Encoding"
    wanted = request.headers.get("if-none-match", "")
    if asset.etag in {tag.strip().removeprefix("W/") for tag in wanted.split(",")} or wanted == "*":
        return Response(status_code=304, headers=headers)
    body = asset.body
    if asset.gzipped is not None and "gzip" in request.headers.get("accept-encoding", ""):
        body, headers["Content-Encoding"] = asset.gzipped, "gzip"
    return Response(body, media_type=asset.media_type, headers=headers)


@router.get("/")
@router.get("/playground")
async def page(request: Request) -> Response:
    """The playground page."""
    if PAGE not in ASSETS:
        raise HTTPException(404, "the playground is not installed (no server/static/index.html)")
    return serve(ASSETS[PAGE], request)


@router.get(ASSET_PREFIX + "{name:path}")
async def asset(name: str, request: Request) -> Response:
    """One of the page's files; /playground/ itself sends the browser to /playground,
    where the page's relative URLs resolve."""
    if name == "":
        return RedirectResponse("../playground", status_code=308)
    found = ASSETS.get(name)
    if found is None or name == PAGE:
        raise HTTPException(404, f"no playground file {name!r}")
    return serve(found, request)

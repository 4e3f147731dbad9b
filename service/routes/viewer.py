"""GET /viewer: a small browser page over the API (upload, pick model and methods, watch, inspect results).

The page is three static files served from ``service/viewer/``. It holds no data and needs no key: the
API calls it makes from the browser carry the key the user types in (kept in sessionStorage only). Only
the files of a fixed allow-list are served, never a path taken from the request.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from xai.errors import NotFound

router = APIRouter(include_in_schema=False)

FOLDER = Path(__file__).resolve().parents[1] / "viewer"
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "viewer.js": "text/javascript; charset=utf-8",
    "viewer.css": "text/css; charset=utf-8",
}
# No inline script or style, nothing from another origin; result images are same-origin signed URLs,
# the canvas reads them as blob: or data: where needed.
CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"the viewer has no file {name[:100]!r}; files: {', '.join(ASSETS)}", code="not_found")
    return Response((FOLDER / name).read_bytes(), media_type=media_type, headers=HEADERS)


@router.get("/viewer")
def viewer_page() -> Response:
    return _asset("index.html")


@router.get("/viewer/{asset}")
def viewer_asset(asset: str) -> Response:
    return _asset(asset)

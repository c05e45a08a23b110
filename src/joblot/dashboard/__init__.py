"""The web dashboard: one page and its static files, shipped inside the package (nothing to
build), served with a strict Content-Security-Policy. Every number on it comes from the JSON
API, with the same authentication as any other client; the page itself holds no data."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from joblot.errors import RecordNotFound

STATIC = Path(__file__).with_name("static")
PAGE = "index.html"
STATIC_PREFIX = "/dashboard/static"

# Scripts, styles and connections from this origin only; no inline script or style, no
# eval, no plugins, no framing. Trusted Types make any HTML-string sink (innerHTML and the
# like) throw, so a value can only ever reach the page as text.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",  # always revalidated (ETag), so an upgrade shows at once
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True)
class Asset:
    """One file of the dashboard, read once at start."""

    body: bytes
    media_type: str
    etag: str


def load_assets(folder: Path = STATIC) -> dict[str, Asset]:
    """Every servable file of `folder`, by name."""
    assets = {}
    for path in sorted(folder.iterdir()):
        media_type = MEDIA_TYPES.get(path.suffix)
        if media_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        etag = f'"{hashlib.sha256(body).hexdigest()[:20]}"'
        assets[path.name] = Asset(body, media_type, etag)
    return assets


class Dashboard:
    """Serves the page at `/` and its files under `/dashboard/static/`."""

    def __init__(self, assets: dict[str, Asset] | None = None) -> None:
        self.assets = load_assets() if assets is None else assets

    async def page(self, request: Request) -> Response:
        """GET /: the dashboard."""
        return self._serve(request, PAGE)

    async def static(self, request: Request) -> Response:
        """GET /dashboard/static/{name}: a script, style sheet or icon of the dashboard."""
        name = str(request.path_params["name"])
        if name == PAGE or name not in self.assets:
            raise RecordNotFound(f"the dashboard has no file {name[:100]!r}")
        return self._serve(request, name)

    def _serve(self, request: Request, name: str) -> Response:
        asset = self.assets[name]
        headers = {**SECURITY_HEADERS, "ETag": asset.etag}
        if asset.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    def routes(self) -> list[Route]:
        """The dashboard's routes, to mount beside the API's."""
        return [
            Route("/", self.page, methods=["GET", "HEAD"]),
            Route(f"{STATIC_PREFIX}/{{name}}", self.static, methods=["GET", "HEAD"]),
        ]

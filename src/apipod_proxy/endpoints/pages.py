"""The operator dashboard (`/admin/`) and the customer portal (`/portal/`): static files.

The pages are plain HTML, CSS and JavaScript shipped in the package (`static/`), with
no build step and nothing fetched from elsewhere. They sign in inside the browser and
call the JSON endpoints like any other client, so serving them needs no secret.

Only the files found under `static/` when this module is imported are served, each
at one fixed URL: a request path is looked up in a dict, never joined to a folder,
so no path can reach another file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mitmproxy import http

from ..errors import error_response

if TYPE_CHECKING:
    from .context import Caller, Context

STATIC_DIR = Path(__file__).parent / "static"

#: The two pages, by URL prefix and folder under `static/`; `common/` is served under both.
PAGES = {"/admin/": "admin", "/portal/": "portal"}
COMMON = "common"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}

#: Scripts and styles only from this origin (no inline code, no eval), no framing, and
#: nothing sent to other sites: a name like `<img src=x onerror=...>` can do nothing
#: even if a bug ever rendered it as HTML.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cross-origin-opener-policy": "same-origin",
    # Revalidate every time (cheap with the ETag), so an upgrade is seen at once.
    "cache-control": "no-cache",
}


@dataclass(frozen=True, slots=True)
class Asset:
    file: Path
    content_type: str


def _assets() -> dict[str, Asset]:
    """URL path -> file, for every servable file under `static/`."""
    found: dict[str, Asset] = {}
    for prefix, folder in PAGES.items():
        for base, url in ((STATIC_DIR / folder, prefix), (STATIC_DIR / COMMON, prefix + "common/")):
            if not base.is_dir():
                continue
            for file in sorted(base.rglob("*")):
                content_type = CONTENT_TYPES.get(file.suffix)
                if file.is_file() and content_type:
                    path = url + file.relative_to(base).as_posix()
                    found[path] = Asset(file, content_type)
                    if file.name == "index.html":
                        found[path.removesuffix("index.html")] = Asset(file, content_type)
    return found


ASSETS = _assets()
#: Bare prefixes redirect to the page, so relative URLs inside it resolve.
REDIRECTS = {prefix.rstrip("/"): prefix for prefix in PAGES}


def is_page(path: str) -> bool:
    return path in ASSETS or path in REDIRECTS


def answer(context: Context, request: http.Request, caller: Caller) -> http.Response:
    """The endpoint table's handler for `/admin`, `/portal` and every path under them
    that no other row takes: the page file, or 404 like any unknown endpoint."""
    path = request.path.partition("?")[0]
    if not is_page(path):
        return error_response(404, f"Unknown endpoint {path}", "not_found")
    return serve(request)


def serve(request: http.Request) -> http.Response:
    """Answer a GET or HEAD for one of the page files (the caller checked `is_page`).

    Other methods are not for pages: the endpoint table answers them 404."""
    path = request.path.partition("?")[0]
    if path in REDIRECTS:
        return http.Response.make(
            308, b"", {"location": REDIRECTS[path], **SECURITY_HEADERS, "content-length": "0"}
        )
    asset = ASSETS[path]
    body = asset.file.read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"content-type": asset.content_type, "etag": etag, **SECURITY_HEADERS}
    if etag in request.headers.get("if-none-match", ""):
        return http.Response.make(304, b"", headers)
    response = http.Response.make(200, body, headers)
    if request.method == "HEAD":
        response.content = b""
        response.headers["content-length"] = str(len(body))
    return response

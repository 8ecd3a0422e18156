"""Unit tests for apipod_proxy.endpoints.pages: the dashboard and portal files, served through the
admin handler the way the addon calls it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from apipod_proxy.endpoints import ENDPOINTS, Endpoints, pages
from apipod_proxy.endpoints.pages import ASSETS, CONTENT_SECURITY_POLICY, STATIC_DIR
from apipod_proxy.storage.sqlite import KeyStore
from tests.support.endpoints import answer
from tests.support.gateway import make_settings


@pytest.fixture
def api(tmp_path: Path) -> Endpoints:
    return Endpoints(make_settings(tmp_path), KeyStore(tmp_path / "data" / "proxy.db"))


def get(api: Endpoints, path: str, method: str = "GET", **headers: str) -> http.Response:
    fields = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return answer(
        api, tutils.treq(method=method.encode(), path=path.encode(), headers=http.Headers(fields))
    )


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/admin/", "text/html; charset=utf-8", b"operator dashboard"),
        ("/admin/index.html", "text/html; charset=utf-8", b"operator dashboard"),
        ("/admin/admin.js", "text/javascript; charset=utf-8", b"x-admin-secret"),
        ("/admin/common/style.css", "text/css; charset=utf-8", b":root"),
        ("/admin/common/common.js", "text/javascript; charset=utf-8", b"export function h"),
        ("/portal/", "text/html; charset=utf-8", b"your account"),
        ("/portal/portal.js", "text/javascript; charset=utf-8", b"/account"),
        ("/portal/common/favicon.svg", "image/svg+xml", b"<svg"),
    ],
)
def test_pages_are_served_without_the_secret_and_with_security_headers(
    api: Endpoints, path: str, content_type: str, marker: bytes
) -> None:
    response = get(api, path)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert marker in response.content
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(("path", "target"), [("/admin", "/admin/"), ("/portal", "/portal/")])
def test_bare_prefixes_redirect_to_the_page(api: Endpoints, path: str, target: str) -> None:
    response = get(api, path)
    assert response.status_code == 308
    assert response.headers["location"] == target


def test_etag_revalidation_and_head(api: Endpoints) -> None:
    first = get(api, "/admin/admin.js")
    etag = first.headers["etag"]
    again = get(api, "/admin/admin.js", if_none_match=etag)
    assert again.status_code == 304
    assert again.content == b""
    head = get(api, "/admin/admin.js", method="HEAD")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(first.content))


@pytest.mark.parametrize(
    "path",
    [
        "/admin/../pyproject.toml",
        "/admin/common/../../addon.py",
        "/admin/%2e%2e/admin.py",
        "/admin/common/",
        "/admin/common",
        "/admin/static/admin/index.html",
        "/portal/admin.js",
        "/portal/nope.html",
        "/admin//etc/passwd",
        "/admin/index.html/",
    ],
)
def test_nothing_but_the_listed_files_is_served(api: Endpoints, path: str) -> None:
    response = get(api, path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"


def test_other_methods_get_the_admin_api_answer(api: Endpoints) -> None:
    assert get(api, "/admin/", method="POST").status_code == 404
    assert get(api, "/portal/", method="DELETE").status_code == 404


@pytest.mark.parametrize("path", ["/portal", "/portal/", "/portal/portal.js", "/portal/x"])
def test_portal_paths_are_internal(path: str) -> None:
    assert ENDPOINTS.before_auth(path)


@pytest.mark.parametrize("path", ["/portals", "/v1/portal/", "/portal.js"])
def test_other_portalish_paths_are_not(path: str) -> None:
    assert not ENDPOINTS.before_auth(path)


def test_every_file_under_static_is_served() -> None:
    files = {p for p in STATIC_DIR.rglob("*") if p.is_file()}
    assert files == {asset.file for asset in ASSETS.values()}


# --- what the pages may contain (the CSP would block the rest; keep them clean) ------


def static_files(suffix: str) -> list[Path]:
    return sorted(p for p in STATIC_DIR.rglob(f"*{suffix}") if p.is_file())


@pytest.mark.parametrize("file", static_files(".html"), ids=lambda p: p.name)
def test_html_has_no_inline_script_or_style(file: Path) -> None:
    text = file.read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)", text) == []
    assert "<style" not in text
    assert not re.search(r"\sstyle=", text)
    assert not re.search(r"\son[a-z]+=", text)


@pytest.mark.parametrize("file", static_files(".js"), ids=lambda p: p.name)
def test_scripts_never_build_html_from_strings(file: Path) -> None:
    text = file.read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in text, f"{file.name} uses {sink}"
    assert "localStorage" not in text  # secrets stay in sessionStorage


@pytest.mark.parametrize("file", static_files(""), ids=lambda p: p.name)
def test_nothing_is_loaded_from_elsewhere(file: Path) -> None:
    urls = set(re.findall(r"https?://[^\s\"')]+", file.read_text()))
    assert urls <= {"http://www.w3.org/2000/svg"}


def test_package_data_includes_the_pages() -> None:
    pyproject = (Path(pages.__file__).parents[3] / "pyproject.toml").read_text()
    assert 'apipod_proxy = ["endpoints/static/*/*"]' in pyproject

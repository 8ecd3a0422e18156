"""The forwarding table, the path check, the routing file's [forward] rows, and the
forwarding headers (forwarding.py)."""

from __future__ import annotations

import ipaddress
import posixpath
import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import http

from apipod_proxy.policy import forwarding
from apipod_proxy.policy.forwarding import BUILT_IN, Forwarding, Refusal, Route, refusal
from apipod_proxy.policy.routing import Router, RoutesError, RoutesFile, read_toml

ROOT = Path(__file__).resolve().parents[2]

# --- the path check ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/", "/v1/chat/completions", "/admin/", "/portal/app.js", "/v1/models", "/metrics/"],
)
def test_plain_paths(path: str) -> None:
    assert forwarding.is_plain_path(path)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "v1/messages",
        "//admin/keys",
        "//v1/chat/completions",
        "/v1//messages",
        "/v1/../admin/keys",
        "/v1/./messages",
        "/..",
        "/.",
        "/%61dmin/keys",
        "/v1/chat%2Fcompletions",
        "/v1/messages\\..\\api",
        "/v1/messages#x",
        "/v1/messages?x",
        "/v1/mess ages",
        "/v1/messagés",
        "http://internal.example/v1/x",
    ],
)
def test_paths_that_are_not_plain(path: str) -> None:
    assert not forwarding.is_plain_path(path)


PATH_CHARS = st.sampled_from(list("/.%2aA-_~:@!$&'()*+,;=?#\\ é\x00"))


@given(st.text(PATH_CHARS, max_size=30).map(lambda tail: "/" + tail))
def test_a_plain_path_has_one_spelling(path: str) -> None:
    """Whatever a server does to a plain path (percent-decoding, resolving dot segments,
    collapsing slashes) leaves it unchanged, so the upstream reads the path the proxy
    matched."""
    if not forwarding.is_plain_path(path):
        return
    assert unquote(path) == path
    assert "//" not in path
    resolved = posixpath.normpath(path) + ("/" if path.endswith("/") and path != "/" else "")
    assert resolved == path


@given(st.text(PATH_CHARS, max_size=30).map(lambda tail: "/" + tail))
def test_only_table_paths_are_forwarded(path: str) -> None:
    """Any target: forwarded only when it is, byte for byte, a table path; refused
    otherwise, whether or not a key comes with it."""
    for method in ("GET", "POST", "PUT"):
        found = refusal(method, path, BUILT_IN, own=False)
        if isinstance(found, Route):
            assert path in BUILT_IN and method in BUILT_IN[path].methods
        else:
            assert isinstance(found, Refusal)
            assert found.status in (400, 404, 405)


@pytest.mark.parametrize(
    ("method", "path", "outcome"),
    [
        ("POST", "/v1/chat/completions", "/v1/chat/completions"),
        ("POST", "/v1/messages/count_tokens", "/v1/messages/count_tokens"),
        ("PUT", "/v1/chat/completions", 405),
        ("GET", "/v1/messages", 405),
        ("POST", "/chat/completions", 404),
        ("POST", "/v1/chat/completions/", 404),
        ("POST", "/v1/embeddings", 404),
        ("POST", "/v1/responses", "/v1/responses"),
        ("GET", "/v1/responses", 405),
        ("GET", "/api/config", 404),
        ("GET", "/", 404),
        ("POST", "//v1/chat/completions", 400),
    ],
)
def test_the_table(method: str, path: str, outcome: str | int) -> None:
    found = refusal(method, path, BUILT_IN, own=False)
    if isinstance(outcome, str):
        assert isinstance(found, Route) and found.path == outcome
    else:
        assert isinstance(found, Refusal) and found.status == outcome
    if outcome == 405:
        assert isinstance(found, Refusal) and found.headers == {"allow": "POST"}


def test_the_proxys_own_paths_pass_the_check_only_when_plain() -> None:
    assert refusal("GET", "/admin/keys", BUILT_IN, own=True) is None
    found = refusal("GET", "/admin/./keys", BUILT_IN, own=True)
    assert isinstance(found, Refusal) and found.code == "invalid_request_target"


def test_every_row_names_an_api() -> None:
    assert {route.api for route in forwarding.FORWARDED} == {"openai", "responses", "anthropic"}
    assert all(re.fullmatch(r"/v1(/[a-z_]+)+", route.path) for route in forwarding.FORWARDED)


def test_absolute_form_is_told_from_origin_form() -> None:
    origin = http.Request.make("GET", "http://apipod/v1/x")
    origin.authority = ""
    assert not forwarding.is_absolute_form(origin)
    absolute = http.Request.make("GET", "http://internal.example/v1/x")
    absolute.authority = "internal.example"
    assert forwarding.is_absolute_form(absolute)


# --- [forward] rows ------------------------------------------------------------------


def test_forward_rows_are_added_to_the_built_in_table() -> None:
    table = Forwarding().prepare(read_toml('[forward]\n"/v1/embeddings" = ["post", "POST"]\n'))
    assert table["/v1/embeddings"] == Route("/v1/embeddings", ("POST",), "")
    assert set(BUILT_IN) < set(table)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('"/v1/../api/config" = ["GET"]', "not a plain path"),
        ('"v1/x" = ["GET"]', "not a plain path"),
        ('"/" = ["GET"]', "not a plain path"),
        ('"/v1/messages" = ["GET"]', "already served"),
        ('"/admin/keys" = ["GET"]', "already served"),
        ('"/v1/models" = ["POST"]', "already served"),
        ('"/v1/x" = []', "must be a list"),
        ('"/v1/x" = "POST"', "must be a list"),
        ('"/v1/x" = ["CONNECT"]', "unknown methods"),
        ('"/v1/x" = [1]', "unknown methods"),
    ],
)
def test_bad_forward_rows(row: str, message: str) -> None:
    own = ["/v1/models", "/admin/keys"]
    with pytest.raises(RoutesError, match=re.escape(message)):
        Forwarding(own).prepare(read_toml(f"[forward]\n{row}\n"))


def test_a_bad_forward_row_keeps_the_last_good_file(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text('[forward]\n"/v1/embeddings" = ["POST"]\n')
    table = Forwarding()
    routes = RoutesFile(str(path), Router(), [table])
    routes.load()
    assert "/v1/embeddings" in table.routes
    path.write_text('[aliases.x]\ntargets = { "y" = 1 }\n[forward]\n"//x" = ["POST"]\n')
    assert not routes.reload_if_changed()
    assert "/v1/embeddings" in table.routes
    assert "x" not in routes.router.table.aliases


def test_the_readme_forward_example_is_valid() -> None:
    text = (ROOT / "docs" / "reference.md").read_text()
    section = text[text.index("## What is forwarded") : text.index("## The proxy's own endpoints")]
    (block,) = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert "/v1/embeddings" in Forwarding().prepare(read_toml(block))


# --- headers ---------------------------------------------------------------------------

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        ("203.0.113.9", [], "203.0.113.9"),
        ("203.0.113.9", ["6.6.6.6"], "203.0.113.9"),  # not a trusted proxy: ignored
        ("10.0.0.2", [], "10.0.0.2"),
        ("10.0.0.2", ["198.51.100.7"], "198.51.100.7"),
        ("10.0.0.2", ["6.6.6.6, 198.51.100.7"], "198.51.100.7"),  # the client wrote 6.6.6.6
        ("10.0.0.2", ["6.6.6.6", "198.51.100.7, 10.0.0.3"], "198.51.100.7"),
        ("10.0.0.2", ["10.0.0.4, 10.0.0.3"], "10.0.0.4"),  # all trusted: the farthest
        ("10.0.0.2", ["6.6.6.6, junk"], "10.0.0.2"),  # garbage stops the walk
        ("::ffff:10.0.0.2", ["198.51.100.7"], "198.51.100.7"),
        ("::1", ["[2001:db8::1]"], "2001:db8::1"),
    ],
)
def test_client_address(peer: str, forwarded_for: list[str], client: str) -> None:
    assert forwarding.client_address(peer, forwarded_for, TRUSTED) == client


@given(st.lists(st.text(max_size=20), max_size=4))
def test_an_untrusted_peer_is_the_client_whatever_it_claims(claims: list[str]) -> None:
    assert forwarding.client_address("203.0.113.9", claims, TRUSTED) == "203.0.113.9"


def test_the_scheme_is_the_connections_unless_a_trusted_proxy_says() -> None:
    claim = http.Headers(x_forwarded_proto="https")
    assert forwarding.resolve_client("203.0.113.9", False, claim, TRUSTED) == (
        "203.0.113.9",
        "http",
    )
    assert forwarding.resolve_client("10.0.0.2", False, claim, TRUSTED)[1] == "https"
    odd = http.Headers(x_forwarded_proto="gopher")
    assert forwarding.resolve_client("10.0.0.2", True, odd, TRUSTED)[1] == "https"


def test_forwarding_headers_are_replaced_by_ours() -> None:
    headers = http.Headers(
        [
            (b"X-Forwarded-For", b"6.6.6.6"),
            (b"x-forwarded-for", b"7.7.7.7"),
            (b"X-Forwarded-Host", b"admin.internal"),
            (b"X-Forwarded-Prefix", b"/admin"),
            (b"Forwarded", b"for=6.6.6.6"),
            (b"X-Real-IP", b"6.6.6.6"),
            (b"Upgrade", b"websocket"),
            (b"Keep-Alive", b"timeout=5"),
            (b"TE", b"trailers"),
            (b"Connection", b"keep-alive"),
            (b"Content-Type", b"application/json"),
        ]
    )
    forwarding.set_forwarding_headers(headers, "203.0.113.9", "https")
    assert sorted((name.lower(), value) for name, value in headers.items(multi=True)) == [
        ("connection", "keep-alive"),
        ("content-type", "application/json"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-proto", "https"),
    ]

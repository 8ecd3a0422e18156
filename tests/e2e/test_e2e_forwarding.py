"""End to end: only the forwarding table reaches the upstream, through real mitmdump.

The stand-in serves what antigravity-claude-proxy 2.0.4 serves besides its API (its
config with its key, its accounts, its console; upstream_console.py) and records every
request it receives, so each test can assert that nothing reached it. Also: the headers
the upstream sees, the routing file's `[forward]` rows, and the admin secret throttle.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.anthropic_standin import AnthropicStandIn
from tests.support.harness import ADMIN_SECRET, UPSTREAM_KEY, Proxy, bearer, start_proxy, wait_for
from tests.support.upstream_console import PATHS as CONSOLE_PATHS
from tests.support.upstream_console import WEBUI_PASSWORD

MESSAGES = {
    "model": "gemini-3-flash",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.fixture(scope="module")
def shared(
    anthropic_only: AnthropicStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Proxy, str]]:
    """One proxy in front of the Anthropic-only stand-in, and a customer key."""
    proxy = start_proxy(
        tmp_path_factory.mktemp("forwarding"), anthropic_only.url, UPSTREAM_API="anthropic"
    )
    yield proxy, proxy.create_key()
    proxy.stop()


@pytest.fixture
def gateway(
    shared: tuple[Proxy, str], claude_upstream: AnthropicStandIn
) -> tuple[Proxy, AnthropicStandIn, str]:
    """The shared proxy, its stand-in with a clean record, and the key."""
    proxy, key = shared
    return proxy, claude_upstream, key


def raw_request(proxy: Proxy, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send exactly these bytes (no client normalises the target); status and body."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(head + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def request_head(method: str, target: str, key: str, body: bytes = b"") -> bytes:
    lines = [
        f"{method} {target} HTTP/1.1",
        "Host: apipod",
        f"Authorization: Bearer {key}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def leaked(answer: bytes) -> bool:
    return UPSTREAM_KEY.encode() in answer or WEBUI_PASSWORD.encode() in answer


@pytest.mark.parametrize("path", CONSOLE_PATHS)
@pytest.mark.parametrize("with_key", [True, False])
def test_the_upstreams_own_pages_are_never_reached(
    gateway: tuple[Proxy, AnthropicStandIn, str], path: str, with_key: bool
) -> None:
    proxy, upstream, key = gateway
    response = httpx.get(proxy.url + path, headers=bearer(key) if with_key else {})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "not_found"
    assert not leaked(response.content)
    assert upstream.received == []


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "//admin/keys"),
        ("GET", "/v1/../admin/keys"),
        ("GET", "/%61dmin/keys"),
        ("GET", "/admin/%6beys"),
        ("GET", "/metrics/"),
        ("GET", "/health/"),
        ("GET", "/./health"),
        ("POST", "/chat/completions"),
        ("POST", "//v1/chat/completions"),
        ("POST", "/v1/chat/completions/"),
        ("POST", "/v1/./chat/completions"),
        ("POST", "/v1/chat%2Fcompletions"),
        ("PUT", "/v1/chat/completions"),
        ("GET", "/v1/messages"),
        ("POST", "/v1/../api/config"),
        ("GET", "/api/config?x=/v1/messages"),
    ],
)
def test_path_tricks_never_reach_the_upstream(
    gateway: tuple[Proxy, AnthropicStandIn, str], method: str, target: str
) -> None:
    proxy, upstream, key = gateway
    body = json.dumps(MESSAGES).encode() if method in ("POST", "PUT") else b""
    status, answer = raw_request(proxy, request_head(method, target, key, body), body)
    assert status in (400, 404, 405), answer
    assert json.loads(answer)["error"]["code"] in (
        "invalid_request_target",
        "not_found",
        "method_not_allowed",
    )
    assert not leaked(answer)
    assert upstream.received == []


def test_the_api_paths_still_reach_the_upstream(
    gateway: tuple[Proxy, AnthropicStandIn, str],
) -> None:
    proxy, upstream, key = gateway
    messages = httpx.post(proxy.url + "/v1/messages", json=MESSAGES, headers={"x-api-key": key})
    assert messages.status_code == 200, messages.text
    chat = httpx.post(
        proxy.url + "/v1/chat/completions",
        json={"model": "gemini-3-flash", "messages": [{"role": "user", "content": "hi"}]},
        headers=bearer(key),
    )
    assert chat.status_code == 200, chat.text  # translated to /v1/messages upstream
    models = httpx.get(proxy.url + "/v1/models", headers=bearer(key))
    assert models.status_code == 200
    assert [(r.method, r.path) for r in upstream.received] == [
        ("POST", "/v1/messages"),
        ("POST", "/v1/messages"),
    ]


def test_absolute_form_targets_are_refused(gateway: tuple[Proxy, AnthropicStandIn, str]) -> None:
    proxy, upstream, key = gateway
    for target in ("http://internal.example/v1/x", f"http://127.0.0.1:{proxy.port}/v1/messages"):
        body = json.dumps(MESSAGES).encode()
        status, answer = raw_request(proxy, request_head("POST", target, key, body), body)
        assert status == 400, answer
        assert json.loads(answer)["error"]["code"] == "invalid_request_target"
    status, answer = raw_request(
        proxy, request_head("GET", "http://internal.example/api/config", key)
    )
    assert status == 400
    assert upstream.received == []


CLIENT_HEADERS = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Host": "admin.internal",
    "X-Forwarded-Proto": "https",
    "Forwarded": "for=6.6.6.6;host=admin.internal",
    "X-Real-IP": "6.6.6.6",
    "api-key": "azure-style-secret",
    "Cookie": "webui_session=stolen",
    "Proxy-Authorization": "Basic c2VjcmV0",
    "Proxy-Connection": "keep-alive",
}


def test_client_forwarding_and_credential_headers_never_arrive_upstream(
    gateway: tuple[Proxy, AnthropicStandIn, str],
) -> None:
    proxy, upstream, key = gateway
    headers = {"x-api-key": key, **CLIENT_HEADERS}
    response = httpx.post(proxy.url + "/v1/messages", json=MESSAGES, headers=headers)
    assert response.status_code == 200, response.text
    [received] = upstream.received
    sent = received.headers
    for name in CLIENT_HEADERS:
        if name.lower() not in ("x-forwarded-for", "x-forwarded-proto"):
            assert name.lower() not in sent, name
    assert sent["x-forwarded-for"] == "127.0.0.1"  # ours: the connection's address
    assert sent["x-forwarded-proto"] == "http"
    assert sent["x-api-key"] == UPSTREAM_KEY
    for value in sent.values():
        assert "6.6.6.6" not in value and "stolen" not in value and key not in value


def test_a_trusted_front_proxy_names_the_client(
    make_proxy: Callable[..., Proxy], claude_upstream: AnthropicStandIn
) -> None:
    proxy = make_proxy(claude_upstream.url, UPSTREAM_API="anthropic", TRUSTED_PROXIES="127.0.0.0/8")
    key = proxy.create_key()
    claude_upstream.reset()
    headers = {
        "x-api-key": key,
        # what a client claims, then what the front proxy (127.0.0.1) appended
        "X-Forwarded-For": "6.6.6.6, 203.0.113.9",
        "X-Forwarded-Proto": "https",
    }
    response = httpx.post(proxy.url + "/v1/messages", json=MESSAGES, headers=headers)
    assert response.status_code == 200, response.text
    [received] = claude_upstream.received
    assert received.headers["x-forwarded-for"] == "203.0.113.9"
    assert received.headers["x-forwarded-proto"] == "https"


ROUTES = """\
[aliases.fast]
targets = { "gemini-3-flash" = 1 }
"""


_EDITS = itertools.count(1)


def write_routes(path: Path, text: str) -> None:
    """Edit the routing file, with a new mtime even within the clock's granularity."""
    path.write_text(text)
    stamp = time.time() + 10 * next(_EDITS)
    os.utime(path, (stamp, stamp))


def from_the_upstream(response: httpx.Response) -> bool:
    """The stand-in's own 404 has no `code`; the proxy's `not_found` has one."""
    return "code" not in response.json()["error"]


def test_a_forward_row_in_the_routes_file_is_forwarded_and_hot_reloaded(
    make_proxy: Callable[..., Proxy], claude_upstream: AnthropicStandIn, tmp_path: Path
) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES + '\n[forward]\n"/v1/embeddings" = ["POST"]\n')
    proxy = make_proxy(claude_upstream.url, UPSTREAM_API="anthropic", ROUTES_FILE=str(routes))
    key = proxy.create_key()
    claude_upstream.reset()

    def post(path: str) -> httpx.Response:
        return httpx.post(proxy.url + path, json={"input": "hi"}, headers=bearer(key))

    assert post("/v1/embeddings").status_code == 404  # the stand-in's own 404
    assert [(r.method, r.path) for r in claude_upstream.received] == [("POST", "/v1/embeddings")]
    assert claude_upstream.received[0].headers["x-api-key"] == UPSTREAM_KEY
    assert httpx.get(proxy.url + "/v1/embeddings", headers=bearer(key)).status_code == 405
    assert post("/v1/rerank").json()["error"]["code"] == "not_found"

    # Added while running: picked up within a few seconds.
    write_routes(routes, ROUTES + '\n[forward]\n"/v1/rerank" = ["post"]\n')
    wait_for(lambda: from_the_upstream(post("/v1/rerank")), timeout=15)
    assert claude_upstream.received[-1].path == "/v1/rerank"
    assert post("/v1/embeddings").json()["error"]["code"] == "not_found"  # no longer listed

    # A bad row keeps the last good file, and says why.
    write_routes(routes, ROUTES + '\n[forward]\n"/v1/../api/config" = ["GET"]\n')
    wait_for(lambda: "keeping the last good routing table" in proxy.log(), timeout=15)
    assert "[forward] '/v1/../api/config'" in proxy.log()
    claude_upstream.reset()
    post("/v1/rerank")
    assert [r.path for r in claude_upstream.received] == ["/v1/rerank"]


def test_admin_secret_guesses_are_throttled(
    make_proxy: Callable[..., Proxy], claude_upstream: AnthropicStandIn
) -> None:
    proxy = make_proxy(claude_upstream.url, UPSTREAM_API="anthropic")
    statuses: list[int] = []
    retry_after: set[str] = set()
    started = time.monotonic()
    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        for guess in range(2000):
            path = ("/admin/keys", "/metrics", "/admin/stats")[guess % 3]
            response = client.get(path, headers={"x-admin-secret": f"guess-{guess:06d}-secret"})
            statuses.append(response.status_code)
            if response.status_code == 429:
                retry_after.add(response.headers["retry-after"])
                assert response.json()["error"]["code"] == "admin_auth_throttled"
        # The right secret from the same address waits too (else a guess would show).
        assert (
            client.get("/admin/keys", headers={"x-admin-secret": ADMIN_SECRET}).status_code == 429
        )
    elapsed = time.monotonic() - started
    assert set(statuses) <= {401, 429}
    assert statuses[:5] == [401] * 5
    assert statuses.count(401) <= 20, statuses.count(401)  # 10 a minute, a little refill
    assert statuses.count(429) >= 1900
    assert all(1 <= int(value) <= 60 for value in retry_after)
    # The right secret from another address is not held up.
    other = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=proxy.url, transport=other, timeout=10) as client:
        response = client.get("/admin/keys", headers={"x-admin-secret": ADMIN_SECRET})
        assert response.status_code == 200, (response.status_code, elapsed)
    log = proxy.log()
    assert "wrong or missing admin secret from 127.0.0.1 on /admin/keys" in log
    assert "127.0.0.1 used up its 10 failed admin authentications a minute" in log
    assert "guess-0" not in log
    assert log.count("wrong or missing admin secret") <= 20  # not one line per guess

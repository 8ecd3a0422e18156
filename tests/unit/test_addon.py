"""Unit tests for apipod_proxy.addon: the Apipod hooks driven with mitmproxy's test helpers.

No sockets: flows come from `mitmproxy.test.tflow`, the addon runs inside
`taddons.context`, and each async hook runs on a short-lived event loop.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.proxy.layers.http import HttpRequestHook, _http1
from mitmproxy.test import tflow, tutils

from apipod_proxy import keys, mitm_compat
from apipod_proxy.addon import Apipod
from apipod_proxy.flowstate import STATE, FlowState, state_of
from apipod_proxy.lifecycle import GATEWAY_OPTIONS, runs_in_front_of
from apipod_proxy.policy import forwarding
from apipod_proxy.storage.records import KeyRecord
from tests.support.gateway import (
    ADMIN_SECRET,
    UPSTREAM_KEY,
    UPSTREAM_URL,
    Gateway,
    make_flow,
    make_settings,
    mitm_context,
    run,
)

CLAUDE = "claude-sonnet-4-5"
GEMINI = "gemini-3-flash"


CHAT = b'{"model":"gpt-4o","messages":[]}'


def chat_body(model: str = "gpt-4o", **extra: Any) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    ).encode()


def error_of(response: http.Response | None) -> dict[str, Any]:
    assert response is not None
    assert response.headers["content-type"] == "application/json"
    payload = json.loads(response.content)
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    return payload["error"]


# --- load --------------------------------------------------------------------------------


def test_load_opens_the_store_and_creates_the_database(gateway: Gateway) -> None:
    assert gateway.addon.gateway.settings is gateway.settings
    assert gateway.settings.database_path.is_file()


def test_load_sets_gateway_options(gateway: Gateway) -> None:
    opts = gateway.tctx.options
    assert opts.block_global is GATEWAY_OPTIONS["block_global"] is False
    assert opts.connection_strategy == GATEWAY_OPTIONS["connection_strategy"] == "lazy"
    assert opts.body_size_limit == str(1024 * 1024)


def test_gateway_options_leave_what_the_user_set(make_gateway: Callable[..., Gateway]) -> None:
    # --set block_global=true gives mitmproxy's own default: still the user's choice.
    gateway = make_gateway(mitm_options={"block_global": True, "body_size_limit": "5m"})
    opts = gateway.tctx.options
    assert opts.block_global is True
    assert opts.body_size_limit == "5m"
    assert opts.connection_strategy == "lazy"


def test_without_listen_port_port_applies(gateway: Gateway) -> None:
    assert gateway.tctx.options.listen_port == gateway.settings.port


def test_an_explicit_listen_port_wins(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway(mitm_options={"listen_port": 9999})
    assert gateway.tctx.options.listen_port == 9999


def test_load_installs_json_error_pages(gateway: Gateway) -> None:
    assert _http1.make_error_response is mitm_compat.render_proxy_failure


def test_running_logs_the_ready_line(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway(trim_addons=False)
    assert not any("ready" in line for line in gateway.lines())

    async def start() -> None:
        await gateway.addon.lifecycle.running()

    run(start())
    [line] = [line for line in gateway.lines() if line.startswith("apipod ready:")]
    assert f"forwarding to {UPSTREAM_URL}" in line
    assert "routes built in" in line


def test_load_warns_when_admin_is_disabled(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway(admin_secret=None)
    assert any("ADMIN_SECRET is not set" in line for line in gateway.lines())


def test_load_warns_when_mode_does_not_point_at_the_upstream(
    make_gateway: Callable[..., Gateway],
) -> None:
    gateway = make_gateway(mode="reverse:http://127.0.0.1:9999")
    assert any("does not forward to ANTIGRAVITY_URL" in line for line in gateway.lines())


def test_load_does_not_warn_for_the_right_mode(gateway: Gateway) -> None:
    assert not any("does not forward" in line for line in gateway.lines())


def test_load_reports_an_unusable_database_path(
    tmp_path: Path, restore_globals: None, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    addon = Apipod(settings=make_settings(tmp_path, database_path=blocker / "proxy.db"))
    with (
        caplog.at_level(logging.ERROR),
        mitm_context() as tctx,
    ):
        tctx.master.addons.add(addon)
    assert addon.gateway is None
    assert any(
        "apipod: DATABASE_PATH" in r.getMessage() and r.levelno == logging.ERROR
        for r in caplog.records
    )


@pytest.mark.parametrize(
    ("modes", "url", "expected"),
    [
        (["reverse:http://127.0.0.1:8080"], "http://127.0.0.1:8080", True),
        (["reverse:http://127.0.0.1:8080/"], "http://127.0.0.1:8080", True),
        (["reverse:https://up.example"], "https://up.example:443", True),
        (["reverse:http://up.example"], "http://up.example", True),
        (["regular", "reverse:http://up:1"], "http://up:1", True),
        (["regular"], "http://127.0.0.1:8080", False),
        (["reverse:http://127.0.0.1:8081"], "http://127.0.0.1:8080", False),
        (["reverse:https://127.0.0.1:8080"], "http://127.0.0.1:8080", False),
        (["reverse:http://other:8080"], "http://127.0.0.1:8080", False),
    ],
)
def test_runs_in_front_of(modes: list[str], url: str, expected: bool) -> None:
    assert runs_in_front_of(modes, url) is expected


# --- authentication ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization", [None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "apk_x", "Token x"]
)
def test_missing_bearer_is_401(gateway: Gateway, authorization: str | None) -> None:
    headers = [] if authorization is None else [("authorization", authorization)]
    flow = gateway.send(make_flow(body=chat_body(), headers=headers))
    assert flow.response is not None
    assert flow.response.status_code == 401
    error = error_of(flow.response)
    assert error["code"] == "missing_api_key"
    assert error["type"] == "authentication_error"


def test_key_in_x_api_key_alone_is_accepted_and_removed(gateway: Gateway) -> None:
    """The Anthropic SDK and Claude Code send the key as x-api-key."""
    key, _ = gateway.new_key()
    flow = gateway.send(make_flow(body=chat_body(), headers=[("x-api-key", key)]))
    assert flow.response is None
    assert flow.request.headers.get_all("x-api-key") == [UPSTREAM_KEY]


def test_unknown_key_in_x_api_key_is_403(gateway: Gateway) -> None:
    flow = gateway.send(make_flow(body=chat_body(), headers=[("x-api-key", keys.generate_key())]))
    assert flow.response is not None
    assert flow.response.status_code == 403


@pytest.mark.parametrize(
    "token", ["sk-abc", "apk_short", "apk_" + "A" * 44, "xpk_" + "A" * 43, "apk_" + "A" * 42]
)
def test_wrong_shape_key_is_403(gateway: Gateway, token: str) -> None:
    flow = gateway.send(make_flow(headers=[("authorization", f"Bearer {token}")]))
    assert flow.response is not None
    assert flow.response.status_code == 403
    assert error_of(flow.response)["code"] == "invalid_api_key"


def test_unknown_key_is_403(gateway: Gateway) -> None:
    gateway.new_key()
    flow = gateway.authed(keys.generate_key())
    assert flow.response is not None
    assert flow.response.status_code == 403
    error = error_of(flow.response)
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "permission_error"


def test_key_with_undecodable_bytes_is_403_not_a_crash(gateway: Gateway) -> None:
    request = tutils.treq(
        method=b"POST",
        path=b"/v1/chat/completions",
        headers=http.Headers([(b"authorization", b"Bearer apk_" + b"\xff" * 43)]),
        content=b"",
    )
    flow = gateway.send(tflow.tflow(req=request))
    assert flow.response is not None
    assert flow.response.status_code == 403


def test_inactive_key_is_403(gateway: Gateway) -> None:
    key, record = gateway.new_key()
    gateway.sql("UPDATE users SET active = 0 WHERE id = ?", record.id)
    flow = gateway.authed(key)
    assert flow.response is not None
    assert flow.response.status_code == 403
    assert error_of(flow.response)["code"] == "inactive_api_key"


def test_expired_key_is_403(gateway: Gateway) -> None:
    key, record = gateway.new_key(expires_in=3600)
    gateway.sql("UPDATE users SET expires_at = '2000-01-01T00:00:00Z' WHERE id = ?", record.id)
    flow = gateway.authed(key)
    assert flow.response is not None
    assert flow.response.status_code == 403
    assert error_of(flow.response)["code"] == "expired_api_key"


def test_key_with_future_expiry_is_accepted(gateway: Gateway) -> None:
    key, record = gateway.new_key(expires_in=3600)
    flow = gateway.authed(key)
    assert flow.response is None
    state = state_of(flow)
    assert state is not None
    assert state.user == record


def test_valid_key_passes_and_sets_the_user(gateway: Gateway) -> None:
    key, record = gateway.new_key("bob")
    flow = make_flow(body=chat_body(), headers=[("authorization", f"Bearer {key}")])
    run(gateway.addon.requestheaders(flow))
    assert flow.response is None
    state = flow.metadata[STATE]
    assert isinstance(state, FlowState)
    assert state.user == record
    assert state.internal is False


def test_bearer_scheme_is_case_insensitive(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    flow = gateway.send(make_flow(body=CHAT, headers=[("authorization", f"bEaReR {key}")]))
    assert flow.response is None


def test_refusal_happens_before_the_body_is_needed(gateway: Gateway) -> None:
    flow = make_flow(body=b"{not json", headers=[])
    run(gateway.addon.requestheaders(flow))
    assert flow.response is not None
    assert flow.response.status_code == 401


def test_database_failure_during_lookup_is_503(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(key_hash: str) -> KeyRecord | None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(gateway.addon.gateway.store, "find", broken)
    flow = gateway.authed(keys.generate_key())
    assert flow.response is not None
    assert flow.response.status_code == 503
    assert error_of(flow.response)["code"] == "database_unavailable"


@pytest.mark.parametrize(
    ("method", "path", "broken"),
    [
        ("GET", "/admin/keys", "admin"),
        ("GET", "/v1/models", "models"),
        ("GET", "/account", "account"),
        ("POST", "/v1/chat/completions", "upstream"),
    ],
)
def test_a_bug_in_any_answer_of_the_request_hook_is_500_never_forwarded(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, method: str, path: str, broken: str
) -> None:
    """mitmproxy forwards a flow whose hook raised: with the client's key or the admin
    secret still on it, when the swap had not happened yet."""

    def bug(*args: object) -> Any:
        raise RuntimeError("a bug")

    async def async_bug(*args: object) -> Any:
        raise RuntimeError("a bug")

    runtime = gateway.addon.gateway
    # The proxy's own paths answer under the endpoint table's guard (test_endpoints.py);
    # here the bug is in the table's answer itself, which the hook's guard must catch.
    target, name, replacement = {
        "admin": (runtime.endpoints, "answer", async_bug),
        "models": (runtime.endpoints, "answer", async_bug),
        "account": (runtime.endpoints, "answer", async_bug),
        "upstream": (runtime.upstream, "current_api", async_bug),
    }[broken]
    monkeypatch.setattr(target, name, replacement)
    key, _ = gateway.new_key()
    headers = [("authorization", f"Bearer {key}"), ("x-admin-secret", ADMIN_SECRET)]
    flow = gateway.send(make_flow(method, path, chat_body(), headers))
    assert flow.response is not None and flow.response.status_code == 500
    assert error_of(flow.response)["code"] == "internal_error"
    state = state_of(flow)
    assert state is not None and state.forwarded_at is None and state.answered_by_proxy
    assert any("internal error handling" in line for line in gateway.lines())


def test_a_bug_before_the_key_check_is_500_not_an_unchecked_request(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bug(path: str) -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway.addon.gateway.endpoints, "before_auth", bug)
    flow = gateway.send(make_flow(body=chat_body(), headers=[]))  # no key at all
    assert flow.response is not None and flow.response.status_code == 500
    assert error_of(flow.response)["code"] == "internal_error"


def test_a_logged_path_carries_no_query_and_no_key(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def bug(*args: object) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway.addon.gateway.upstream, "current_api", bug)
    key, _ = gateway.new_key()
    forward_also(gateway, f"/v1/{key}/chat/completions", ["POST"])
    path = f"/v1/{key}/chat/completions?key={key}"
    gateway.send(make_flow("POST", path, chat_body(), [("authorization", f"Bearer {key}")]))
    logged = [line for line in gateway.lines() if "internal error handling" in line]
    assert logged and all(key not in line and "?" not in line for line in logged)


def test_a_hung_key_lookup_is_503_after_the_lookup_timeout(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def hung(key_hash: str) -> KeyRecord | None:
        release.wait(10)
        return None

    monkeypatch.setattr(gateway.addon.gateway.store, "find", hung)
    monkeypatch.setattr("apipod_proxy.pipeline.admission.LOOKUP_TIMEOUT", 0.2)
    try:
        flow = gateway.authed(keys.generate_key())
    finally:
        release.set()
    assert flow.response is not None and flow.response.status_code == 503
    assert error_of(flow.response)["code"] == "database_unavailable"
    assert any("no answer within 0.2 s" in line for line in gateway.lines())


def test_health_answers_while_hung_lookups_hold_every_database_thread(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def hung(key_hash: str) -> KeyRecord | None:
        release.wait(10)
        return None

    monkeypatch.setattr(gateway.addon.gateway.store, "find", hung)
    monkeypatch.setattr("apipod_proxy.pipeline.admission.LOOKUP_TIMEOUT", 0.2)
    lookups = [
        make_flow(headers=[("authorization", f"Bearer {keys.generate_key()}")])
        for _ in range(gateway.addon.gateway.pool._max_workers)
    ]
    health = make_flow("GET", "/health")

    async def go() -> None:
        await asyncio.gather(*(gateway.addon.requestheaders(f) for f in lookups))
        await gateway.addon.requestheaders(health)
        await asyncio.wait_for(gateway.addon.request(health), 5)

    try:
        run(go())
    finally:
        release.set()
    assert [f.response.status_code for f in lookups if f.response] == [503] * len(lookups)
    assert health.response is not None and health.response.status_code == 200


def test_request_without_state_is_left_alone(gateway: Gateway) -> None:
    flow = make_flow(body=chat_body(), headers=[("authorization", "Bearer x")])
    run(gateway.addon.request(flow))
    assert flow.response is None
    assert flow.request.headers["authorization"] == "Bearer x"


# --- bearer token parsing (through the hook) ---------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "Bearer {key}",
        "bearer {key}",
        "BEARER {key}",
        "bEaReR {key}",
        "Bearer    {key}   ",
        "  Bearer {key}",
    ],
)
def test_bearer_forms_that_authenticate(gateway: Gateway, template: str) -> None:
    key, record = gateway.new_key()
    headers = [("authorization", template.format(key=key))]
    flow = gateway.send(make_flow(body=CHAT, headers=headers))
    assert flow.response is None
    state = state_of(flow)
    assert state is not None
    assert state.user == record


@pytest.mark.parametrize(
    ("template", "status"),
    [
        ("Bearer\t{key}", 401),
        ("Bearer{key}", 401),
        ("Basic {key}", 401),
        ("{key}", 401),
        ("Bearer {key} extra", 403),
        ("Bearer {key}, Bearer {key}", 403),
    ],
)
def test_bearer_forms_that_are_refused(gateway: Gateway, template: str, status: int) -> None:
    key, _ = gateway.new_key()
    headers = [("authorization", template.format(key=key))]
    flow = gateway.send(make_flow(body=CHAT, headers=headers))
    assert flow.response is not None
    assert flow.response.status_code == status


def test_two_authorization_headers_are_refused(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    flow = gateway.send(
        make_flow(headers=[("authorization", f"Bearer {key}"), ("authorization", "Bearer x")])
    )
    assert flow.response is not None
    # The two values read as one (joined) key, which is no key: refused like a wrong one.
    assert flow.response.status_code == 403
    assert error_of(flow.response)["code"] == "invalid_api_key"


# --- credential swap -------------------------------------------------------------------------


def test_credentials_are_swapped_for_the_upstream_key(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    flow = gateway.authed(
        key,
        body=chat_body(),
        headers=[
            ("x-api-key", "client-x-api-key"),
            ("x-goog-api-key", "client-goog-key"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("content-type", "application/json"),
            ("user-agent", "OpenAI/Python 1.0"),
            ("x-request-id", "req-123"),
        ],
    )
    assert flow.response is None
    sent = flow.request.headers
    # Our key, as both Anthropic-style and OpenAI-only upstreams read it; never the client's.
    assert sent.get_all("authorization") == [f"Bearer {UPSTREAM_KEY}"]
    assert "proxy-authorization" not in sent
    assert "x-goog-api-key" not in sent
    assert sent.get_all("x-api-key") == [UPSTREAM_KEY]
    assert sent["content-type"] == "application/json"
    assert sent["user-agent"] == "OpenAI/Python 1.0"
    assert sent["x-request-id"] == "req-123"


def test_client_key_is_nowhere_in_the_forwarded_request(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    flow = gateway.authed(key, body=chat_body(), headers=[("x-api-key", key)])
    assert key not in str(flow.request.headers.fields)
    assert key.encode() not in flow.request.raw_content


def forward_also(gateway: Gateway, path: str, methods: list[str]) -> None:
    """Add a row to the forwarding table, as ROUTES_FILE's `[forward]` does."""
    forwarding_table = gateway.addon.gateway.forwarding
    forwarding_table.apply({**forwarding_table.routes, **forwarding.extra_routes({path: methods})})


def test_get_requests_are_swapped_too(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    forward_also(gateway, "/v1/batches", ["GET"])
    flow = gateway.authed(key, method="GET", path="/v1/batches")
    assert flow.response is None
    assert flow.request.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert flow.request.headers["x-api-key"] == UPSTREAM_KEY


def test_every_spelling_of_a_client_credential_is_removed(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    flow = gateway.authed(
        key,
        body=chat_body(),
        headers=[
            ("X-Api-Key", "c1"),
            ("x-api-key", "c2"),
            ("X-Goog-Api-Key", "d"),
            ("Proxy-Authorization", "e"),
            ("Proxy-Foo", "f"),
            ("Api-Key", "g"),
            ("Cookie", "session=h"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Host", "admin.internal"),
            ("Forwarded", "for=6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("Accept", "*/*"),
        ],
    )
    assert flow.response is None
    sent = flow.request.headers
    assert sent.get_all("x-api-key") == [UPSTREAM_KEY]
    assert sent.get_all("authorization") == [f"Bearer {UPSTREAM_KEY}"]
    for name in ("x-goog-api-key", "proxy-authorization", "proxy-foo", "api-key", "cookie"):
        assert name not in sent
    for name in ("x-forwarded-host", "forwarded", "x-real-ip"):
        assert name not in sent
    # Ours, from the connection (mitmproxy's test client: 127.0.0.1 over TLS).
    assert sent.get_all("x-forwarded-for") == [flow.client_conn.peername[0]]
    assert sent.get_all("x-forwarded-proto") == ["https"]
    assert sent["accept"] == "*/*"


# --- routing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("draw", "target"), [(0.1, CLAUDE), (0.9, GEMINI)])
def test_cursor_pro_sonnet_is_rewritten(gateway: Gateway, draw: float, target: str) -> None:
    gateway.draw.value = draw
    key, _ = gateway.new_key()
    flow = gateway.authed(key, body=chat_body("cursor-pro-sonnet", stream=True, temperature=0.2))
    assert flow.response is None
    sent = json.loads(flow.request.content or b"")
    assert sent["model"] == target
    assert sent["stream"] is True
    assert sent["temperature"] == 0.2
    assert sent["messages"] == [{"role": "user", "content": "hi"}]
    state = state_of(flow)
    assert state is not None
    assert (state.requested_model, state.routed_model) == ("cursor-pro-sonnet", target)


def test_rewritten_body_keeps_non_ascii_text(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    body = json.dumps(
        {"model": "cursor-pro-sonnet", "messages": [{"role": "user", "content": "привет 👋"}]},
        ensure_ascii=False,
    ).encode()
    flow = gateway.authed(key, body=body)
    assert json.loads(flow.request.content or b"")["messages"][0]["content"] == "привет 👋"


def test_rewritten_body_has_a_matching_content_length(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    body = chat_body("cursor-pro-sonnet")
    flow = gateway.authed(key, body=body, headers=[("content-length", str(len(body)))])
    assert int(flow.request.headers["content-length"]) == len(flow.request.raw_content or b"")


@pytest.mark.parametrize(
    "body",
    [
        b'{ "model" : "gpt-4o",\n  "messages": [],  "x": 1.0e2 }',
        b'{"model":"claude-sonnet-4-5","messages":[{"content":"\\u00e9"}]}',
        b'{"model":"Cursor-Pro-Sonnet","messages":[]}',
        b'\xef\xbb\xbf{"model":"gemini-3-flash","messages":[]}',
    ],
)
def test_other_models_are_forwarded_as_the_object_checked(gateway: Gateway, body: bytes) -> None:
    key, _ = gateway.new_key()
    flow = gateway.authed(key, body=body)
    assert flow.response is None
    # Written from the parsed object, never the raw bytes (which another reader may read
    # differently): the same document, compact.
    assert json.loads(flow.request.raw_content or b"") == json.loads(body.decode("utf-8-sig"))
    state = state_of(flow)
    assert state is not None
    assert state.requested_model == state.routed_model


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[1, 2, 3]",
        b'"cursor-pro-sonnet"',
        b'{"messages": []}',
        b'{"model": 5}',
        b'{"model": null}',
        b'{"model": ["cursor-pro-sonnet"]}',
    ],
)
def test_bodies_without_a_string_model_are_refused(gateway: Gateway, body: bytes) -> None:
    key, _ = gateway.new_key()
    flow = gateway.authed(key, body=body)
    assert flow.response is not None
    assert flow.response.status_code == 400
    assert error_of(flow.response)["code"] in ("invalid_json", "invalid_model")
    state = state_of(flow)
    assert state is not None
    assert state.requested_model is None


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/chat/completions", 404),
        ("PUT", "/v1/chat/completions", 405),
        ("POST", "/v2/x", 404),
        ("POST", "//v1/chat/completions", 400),
        ("POST", "/v1/chat/completions/", 404),
    ],
)
def test_only_the_forwarding_table_reaches_the_upstream(
    gateway: Gateway, method: str, path: str, status: int
) -> None:
    key, _ = gateway.new_key()
    flow = gateway.authed(key, method=method, path=path, body=chat_body("cursor-pro-sonnet"))
    assert flow.response is not None
    assert flow.response.status_code == status
    assert flow.request.headers["authorization"] == f"Bearer {key}"  # never swapped


@pytest.mark.parametrize(
    ("path", "headers", "anthropic"),
    [
        ("/api/config", [], False),
        ("/api/config", [("anthropic-version", "2023-06-01")], True),
        ("/v1/messages/batches", [], True),
    ],
)
def test_an_unknown_path_is_404_in_the_callers_shape(
    gateway: Gateway, path: str, headers: list[tuple[str, str]], anthropic: bool
) -> None:
    flow = gateway.send(make_flow("GET", path, b"", headers))
    assert flow.response is not None
    gateway.addon.responseheaders(flow)
    payload = json.loads(flow.response.content)
    assert payload["error"]["code"] == "not_found"
    assert (payload.get("type") == "error") is anthropic


def test_an_operator_row_is_forwarded_as_sent(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    forward_also(gateway, "/v2/x", ["post"])
    body = chat_body("cursor-pro-sonnet")
    flow = gateway.authed(key, path="/v2/x", body=body)
    assert flow.response is None
    assert flow.request.raw_content == body
    assert flow.request.headers["x-api-key"] == UPSTREAM_KEY


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"model": "x",}', b'{"model": NaN}', b'{"model": "\xff"}', b"[" * 50_000],
)
def test_malformed_json_to_v1_is_400(gateway: Gateway, body: bytes) -> None:
    key, _ = gateway.new_key()
    flow = gateway.authed(key, body=body)
    assert flow.response is not None
    assert flow.response.status_code == 400
    error = error_of(flow.response)
    assert error["code"] == "invalid_json"
    assert error["type"] == "invalid_request_error"


def test_malformed_json_outside_v1_is_forwarded(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    forward_also(gateway, "/other", ["POST"])
    flow = gateway.authed(key, path="/other", body=b"{not json")
    assert flow.response is None


def test_gzip_body_is_routed_and_forwarded_decoded(gateway: Gateway) -> None:
    gateway.draw.value = 0.1
    key, _ = gateway.new_key()
    flow = gateway.authed(
        key,
        body=gzip.compress(chat_body("cursor-pro-sonnet")),
        headers=[("content-encoding", "gzip"), ("content-type", "application/json")],
    )
    assert flow.response is None
    assert "content-encoding" not in flow.request.headers
    assert json.loads(flow.request.raw_content or b"")["model"] == CLAUDE


def test_gzip_body_of_other_model_is_forwarded_decoded(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    compressed = gzip.compress(chat_body("gpt-4o"))
    flow = gateway.authed(key, body=compressed, headers=[("content-encoding", "gzip")])
    assert flow.response is None
    assert "content-encoding" not in flow.request.headers
    assert json.loads(flow.request.raw_content or b"") == json.loads(chat_body("gpt-4o"))


def test_undecodable_gzip_is_400(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    flow = gateway.authed(key, body=b"definitely not gzip", headers=[("content-encoding", "gzip")])
    assert flow.response is not None
    assert flow.response.status_code == 400
    assert error_of(flow.response)["code"] == "invalid_encoding"


def test_multipart_passes_untouched(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
        b'cursor-pro-sonnet\r\n--xyz\r\nContent-Disposition: form-data; name="file"; '
        b'filename="a.wav"\r\n\r\n\xff\xfe\x00garbage\r\n--xyz--\r\n'
    )
    forward_also(gateway, "/v1/audio/transcriptions", ["POST"])
    flow = gateway.authed(
        key,
        path="/v1/audio/transcriptions",
        body=body,
        headers=[("content-type", "Multipart/Form-Data; boundary=xyz")],
    )
    assert flow.response is None
    assert flow.request.raw_content == body
    assert flow.request.headers["x-api-key"] == UPSTREAM_KEY


def test_lone_surrogate_in_routed_body_never_forwards_the_client_key(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    body = b'{"model": "cursor-pro-sonnet", "messages": [{"content": "\\ud83d"}]}'
    flow = make_flow(body=body, headers=[("authorization", f"Bearer {key}")])
    run(gateway.addon.requestheaders(flow))
    # Dispatch the way mitmproxy does: an exception in a hook is logged, not raised.
    run(gateway.tctx.master.addons.trigger_event(HttpRequestHook(flow)))
    if flow.response is None:  # the request would go upstream
        assert flow.request.headers.get_all("authorization") == [f"Bearer {UPSTREAM_KEY}"]
        assert flow.request.headers.get("x-api-key") == UPSTREAM_KEY


# --- internal endpoints ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/health?probe=1"])
def test_health_is_answered_without_auth(gateway: Gateway, path: str) -> None:
    flow = gateway.send(make_flow("GET", path))
    assert flow.response is not None
    assert flow.response.status_code == 200
    assert json.loads(flow.response.content or b"")["database"] == "ok"
    state = state_of(flow)
    assert state is not None
    assert state.internal is True
    assert state.user is None


def test_create_key_is_answered_without_a_bearer_and_the_key_works(gateway: Gateway) -> None:
    flow = gateway.send(
        make_flow(
            "POST",
            "/admin/create-key",
            json.dumps({"name": "carol"}).encode(),
            [("x-admin-secret", ADMIN_SECRET), ("content-type", "application/json")],
        )
    )
    assert flow.response is not None
    assert flow.response.status_code == 201
    created = json.loads(flow.response.content or b"")
    assert created["name"] == "carol"

    use = gateway.authed(created["api_key"], body=chat_body())
    assert use.response is None
    state = state_of(use)
    assert state is not None
    assert state.user is not None
    assert state.user.id == created["id"]


def test_admin_without_secret_is_401_admin_error_not_api_key_error(gateway: Gateway) -> None:
    flow = gateway.send(make_flow("POST", "/admin/create-key", b'{"name": "x"}'))
    assert flow.response is not None
    assert flow.response.status_code == 401
    assert error_of(flow.response)["code"] == "invalid_admin_secret"


def test_unknown_admin_path_is_answered_locally(gateway: Gateway) -> None:
    flow = gateway.send(make_flow("GET", "/admin/secret-stuff"))
    assert flow.response is not None
    assert flow.response.status_code == 404


def test_internal_requests_get_no_upstream_credentials(gateway: Gateway) -> None:
    flow = gateway.send(make_flow("GET", "/health"))
    assert "x-api-key" not in flow.request.headers
    assert "authorization" not in flow.request.headers
    state = state_of(flow)
    assert state is not None
    assert state.timer is None


def test_admin_crash_never_forwards_the_admin_request(gateway: Gateway) -> None:
    flow = make_flow(
        "POST", "/admin/create-key", b'{"name": "\\ud800"}', [("x-admin-secret", ADMIN_SECRET)]
    )
    run(gateway.addon.requestheaders(flow))
    run(gateway.tctx.master.addons.trigger_event(HttpRequestHook(flow)))
    assert flow.response is not None


# --- upstream timeout --------------------------------------------------------------------------


def test_request_starts_the_upstream_timer(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway(upstream_timeout=0.05)
    key, _ = gateway.new_key()
    flow = make_flow(body=chat_body(), headers=[("authorization", f"Bearer {key}")])

    async def go() -> FlowState:
        await gateway.addon.requestheaders(flow)
        await gateway.addon.request(flow)
        state = state_of(flow)
        assert state is not None
        assert state.timer is not None
        await asyncio.sleep(0.2)
        return state

    # No proxy connection exists for this flow, so only the flag records the timeout.
    assert run(go()).timed_out is True


def test_responseheaders_cancels_the_upstream_timer(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway(upstream_timeout=0.05)
    key, _ = gateway.new_key()
    flow = make_flow(body=chat_body(), headers=[("authorization", f"Bearer {key}")])

    async def go() -> FlowState:
        await gateway.addon.requestheaders(flow)
        await gateway.addon.request(flow)
        flow.response = http.Response.make(200, b"{}", {"content-type": "application/json"})
        gateway.addon.responseheaders(flow)
        await asyncio.sleep(0.2)
        state = state_of(flow)
        assert state is not None
        return state

    state = run(go())
    assert state.timer is not None
    assert state.timer.cancelled()
    assert state.timed_out is False


def forwarded(gateway: Gateway) -> tuple[http.HTTPFlow, FlowState]:
    key, _ = gateway.new_key()
    flow = gateway.authed(key, body=chat_body())
    state = state_of(flow)
    assert state is not None
    return flow, state


def test_timeout_after_a_response_does_nothing(gateway: Gateway) -> None:
    flow, state = forwarded(gateway)
    flow.response = http.Response.make(200)
    gateway.addon.answers.upstream_timed_out(flow)
    assert state.timed_out is False


def test_timeout_of_a_dead_flow_does_nothing(gateway: Gateway) -> None:
    flow, state = forwarded(gateway)
    flow.live = False
    gateway.addon.answers.upstream_timed_out(flow)
    assert state.timed_out is False


def test_timeout_of_a_live_flow_is_recorded(gateway: Gateway) -> None:
    flow, state = forwarded(gateway)
    gateway.addon.answers.upstream_timed_out(flow)
    assert state.timed_out is True
    assert flow.response is None  # no proxy connection to answer on in a unit test


# --- response path -----------------------------------------------------------------------------


def respond(
    gateway: Gateway, content_type: str | None, extra: list[tuple[str, str]] | None = None
) -> http.HTTPFlow:
    flow, _ = forwarded(gateway)
    headers = [] if content_type is None else [("content-type", content_type)]
    flow.response = http.Response.make(
        200, b"", [(k.encode(), v.encode()) for k, v in headers + (extra or [])]
    )
    gateway.addon.responseheaders(flow)
    return flow


def is_streamed(response: http.Response | None) -> bool:
    """mitmproxy streams when `stream` is True or a chunk callable."""
    assert response is not None
    return response.stream is True or callable(response.stream)


@pytest.mark.parametrize("content_type", ["text/event-stream", "text/event-stream; charset=utf-8"])
def test_event_streams_are_streamed_unbuffered(gateway: Gateway, content_type: str) -> None:
    flow = respond(gateway, content_type)
    assert is_streamed(flow.response)
    assert flow.response is not None
    assert flow.response.headers["x-accel-buffering"] == "no"


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
def test_other_responses_are_buffered(gateway: Gateway, content_type: str | None) -> None:
    flow = respond(gateway, content_type)
    assert not is_streamed(flow.response)
    assert flow.response is not None
    assert "x-accel-buffering" not in flow.response.headers


def test_event_stream_detection_ignores_case(gateway: Gateway) -> None:
    flow = respond(gateway, "Text/Event-Stream")
    assert is_streamed(flow.response)


def test_responses_lose_their_x_api_key(gateway: Gateway) -> None:
    flow = respond(
        gateway,
        "application/json",
        [("x-api-key", UPSTREAM_KEY), ("X-Api-Key", "again"), ("x-trace", "t1")],
    )
    assert flow.response is not None
    assert "x-api-key" not in flow.response.headers
    assert flow.response.headers["x-trace"] == "t1"


# --- access log --------------------------------------------------------------------------------


def complete(gateway: Gateway, flow: http.HTTPFlow, status: int = 200) -> http.HTTPFlow:
    if flow.response is None:
        flow.response = http.Response.make(status, b"{}", {"content-type": "application/json"})
        gateway.addon.responseheaders(flow)
    gateway.addon.response(flow)
    return flow


def access_lines(gateway: Gateway) -> list[str]:
    return [line for line in gateway.lines() if " key=" in line]


def test_access_line_for_a_routed_request(gateway: Gateway) -> None:
    gateway.draw.value = 0.9
    key, record = gateway.new_key("alice")
    complete(gateway, gateway.authed(key, body=chat_body("cursor-pro-sonnet")))
    [line] = access_lines(gateway)
    method, path, status, duration, *rest = line.split(" ")
    assert (method, path, status) == ("POST", "/v1/chat/completions", "200")
    assert duration.endswith("ms")
    float(duration.removesuffix("ms"))
    assert f"key={record.id}:alice" in rest
    assert f"model=cursor-pro-sonnet->{GEMINI}" in rest


def test_access_line_for_an_unrouted_model(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    complete(gateway, gateway.authed(key, body=chat_body("gpt-4o")))
    [line] = access_lines(gateway)
    assert "model=gpt-4o->gpt-4o" in line


def test_access_line_without_model_has_no_model_part(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    complete(gateway, gateway.authed(key, method="GET", path="/v1/models"))
    [line] = access_lines(gateway)
    assert line.startswith("GET /v1/models 200 ")
    assert "model=" not in line


def test_access_line_for_a_refusal(gateway: Gateway) -> None:
    complete(gateway, gateway.send(make_flow(body=chat_body())))
    [line] = access_lines(gateway)
    assert line.startswith("POST /v1/chat/completions 401 ")
    assert "key=-" in line


def test_access_line_redacts_a_key_in_the_path(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    flow = gateway.send(make_flow("GET", f"/v1/files/{key}?k={key}"))
    complete(gateway, flow)
    [line] = access_lines(gateway)
    assert line.startswith("GET /v1/files/[redacted] 404 ")  # no such endpoint
    assert key not in "".join(gateway.lines())
    assert flow.response is not None and key.encode() not in flow.response.content


def test_access_line_for_an_internal_request(gateway: Gateway) -> None:
    complete(gateway, gateway.send(make_flow("GET", "/health")))
    [line] = access_lines(gateway)
    assert line.startswith("GET /health 200 ")


def test_access_line_never_contains_the_key(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    flows = [
        gateway.authed(key, body=chat_body("cursor-pro-sonnet")),
        gateway.authed(key, path=f"/v1/chat/completions?key={key}", body=chat_body()),
        gateway.authed(key, body=b"{bad json"),
        gateway.send(make_flow(headers=[("authorization", f"Bearer {key}x")])),
    ]
    for flow in flows:
        complete(gateway, flow)
    lines = gateway.lines()
    assert len(access_lines(gateway)) == len(flows)
    for line in lines:
        assert key not in line
        assert key[10:] not in line
        assert UPSTREAM_KEY not in line


def test_access_line_drops_the_query_string(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    complete(gateway, gateway.authed(key, method="GET", path="/v1/models?token=abc"))
    [line] = access_lines(gateway)
    assert line.startswith("GET /v1/models 200 ")
    assert "token=abc" not in line


def test_error_hook_logs_the_failure(gateway: Gateway) -> None:
    key, record = gateway.new_key("alice")
    flow = gateway.authed(key, body=chat_body())
    flow.error = mflow.Error("server closed connection")
    gateway.addon.error(flow)
    [line] = access_lines(gateway)
    assert line.startswith("POST /v1/chat/completions 502 ")
    assert f"key={record.id}:alice" in line
    assert 'error="server closed connection"' in line


def test_error_hook_cancels_the_timer(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    flow = make_flow(body=chat_body(), headers=[("authorization", f"Bearer {key}")])

    async def go() -> FlowState:
        await gateway.addon.requestheaders(flow)
        await gateway.addon.request(flow)
        flow.error = mflow.Error("client disconnected")
        gateway.addon.error(flow)
        state = state_of(flow)
        assert state is not None
        return state

    state = run(go())
    assert state.timer is not None
    assert state.timer.cancelled()
    assert " 499 " in access_lines(gateway)[0]


def test_error_hook_redacts_keys_quoted_by_mitmproxy(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    flow = gateway.authed(key, body=chat_body())
    flow.error = mflow.Error(f"unexpected server response: b'echo {key}'")
    gateway.addon.error(flow)
    [line] = access_lines(gateway)
    assert key not in line
    assert "[redacted]" in line


def test_error_hook_redacts_bearer_tokens_quoted_by_mitmproxy(gateway: Gateway) -> None:
    flow, _ = forwarded(gateway)
    flow.error = mflow.Error(
        "unexpected server response: b'HTTP/1.1 400\\r\\nAuthorization: Bearer sk-live-9f8e7d'"
    )
    gateway.addon.error(flow)
    [line] = access_lines(gateway)
    assert "sk-live-9f8e7d" not in line


def test_error_hook_redacts_x_api_key_quoted_by_mitmproxy(gateway: Gateway) -> None:
    flow, _ = forwarded(gateway)
    flow.error = mflow.Error(f"unexpected server response: b'x-api-key: {UPSTREAM_KEY}'")
    gateway.addon.error(flow)
    [line] = access_lines(gateway)
    assert UPSTREAM_KEY not in line


def test_error_hook_reports_504_after_the_upstream_timeout(gateway: Gateway) -> None:
    key, _ = gateway.new_key()
    flow = gateway.authed(key, body=chat_body())
    state = state_of(flow)
    assert state is not None
    state.timed_out = True
    flow.error = mflow.Error("connection closed")
    gateway.addon.error(flow)
    assert " 504 " in access_lines(gateway)[0]


def test_error_hook_without_state_logs_nothing(gateway: Gateway) -> None:
    flow = make_flow()
    flow.error = mflow.Error("Client disconnected")
    gateway.addon.error(flow)
    assert access_lines(gateway) == []


def test_response_hook_without_state_logs_nothing(gateway: Gateway) -> None:
    flow = make_flow()
    flow.response = http.Response.make(200)
    gateway.addon.response(flow)
    assert access_lines(gateway) == []

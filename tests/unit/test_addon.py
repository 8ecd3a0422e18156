"""Unit tests for apipod_proxy.addon: the Apipod hooks driven with mitmproxy's test helpers.

No sockets: flows come from `mitmproxy.test.tflow`, the addon runs inside
`taddons.context`, and each async hook runs on a short-lived event loop.

Only what needs the hooks wired together is here: loading, the guards that answer 500
instead of forwarding, the unread-body close, the proxy's own endpoints, and a request
through every stage. Each stage's own checks are tested on the stage alone, built from
its parts (tests/support/stages.py): test_admission.py, test_rewrite.py,
test_answers.py, test_accounting.py; the client's API in test_clientapi.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.proxy.layers.http import HttpRequestHook, _http1

from apipod_proxy import keys, mitm_compat
from apipod_proxy.addon import Apipod
from apipod_proxy.flowstate import state_of
from apipod_proxy.lifecycle import GATEWAY_OPTIONS, runs_in_front_of
from apipod_proxy.policy import forwarding
from apipod_proxy.storage.records import KeyRecord
from tests.support.gateway import (
    ADMIN_SECRET,
    UPSTREAM_KEY,
    UPSTREAM_URL,
    Gateway,
    chat_body,
    error_of,
    make_flow,
    make_settings,
    mitm_context,
    run,
)

GEMINI = "gemini-3-flash"


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


# --- the request hooks' guards: a bug answers 500, never forwards ------------------------


def forward_also(gateway: Gateway, path: str, methods: list[str]) -> None:
    """Add a row to the forwarding table, as ROUTES_FILE's `[forward]` does."""
    forwarding_table = gateway.addon.gateway.forwarding
    forwarding_table.apply({**forwarding_table.routes, **forwarding.extra_routes({path: methods})})


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


# --- a request through every stage, and its access line ----------------------------------


def complete(gateway: Gateway, flow: http.HTTPFlow, status: int = 200) -> http.HTTPFlow:
    if flow.response is None:
        flow.response = http.Response.make(status, b"{}", {"content-type": "application/json"})
        gateway.addon.responseheaders(flow)
    gateway.addon.response(flow)
    return flow


def access_lines(gateway: Gateway) -> list[str]:
    return [line for line in gateway.lines() if " key=" in line]


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


def test_a_routed_request_goes_through_every_stage(gateway: Gateway) -> None:
    """Admitted, routed and swapped, forwarded with its id and timer, streamed back,
    counted and logged once, and flushed: the stages in the order the hooks call them."""
    key, record = gateway.new_key("alice")

    async def go() -> http.HTTPFlow:
        flow = make_flow(
            body=chat_body("cursor-pro-sonnet"),
            headers=[
                ("authorization", f"Bearer {key}"),
                ("x-request-id", "r-every-stage"),
            ],
        )
        await gateway.addon.requestheaders(flow)
        await gateway.addon.request(flow)
        assert flow.response is None  # forwarded
        assert json.loads(flow.request.content or b"")["model"] == GEMINI  # draw 0.9
        assert flow.request.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert flow.request.headers["x-request-id"] == "r-every-stage"
        usage = {"prompt_tokens": 3, "completion_tokens": 4}
        chunk = json.dumps({"choices": [], "usage": usage})
        flow.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
        gateway.addon.responseheaders(flow)
        stream = flow.response.stream
        assert callable(stream)
        stream(f"data: {chunk}\n\n".encode())
        gateway.addon.response(flow)
        gateway.addon.error(flow)  # a late error hook changes nothing
        return flow

    flow = run(go())
    state = state_of(flow)
    assert state is not None and state.timer is not None and state.timer.cancelled()
    assert flow.response is not None and flow.response.headers["x-request-id"] == "r-every-stage"
    [line] = access_lines(gateway)
    assert f"key={record.id}:alice" in line and f"model=cursor-pro-sonnet->{GEMINI}" in line
    assert flow.id not in gateway.addon.gateway.traffic.in_flight
    gateway.flush()
    [(prompt, completion)] = gateway.sql("SELECT prompt_tokens, completion_tokens FROM usage")
    assert (prompt, completion) == (3, 4)


def test_response_hook_without_state_logs_nothing(gateway: Gateway) -> None:
    flow = make_flow()
    flow.response = http.Response.make(200)
    gateway.addon.response(flow)
    assert access_lines(gateway) == []


# --- a refusal on the headers: answered and closed, its body never read ------------------


def refused_with_a_body(gateway: Gateway, monkeypatch: pytest.MonkeyPatch, live: bool) -> Any:
    """A keyless request announcing a body, through `requestheaders`; what the connection
    policy was asked to write before closing (`live`: the connection is still there)."""
    written: list[bytes] = []

    def close_unread(client: object, last_words: bytes) -> bool:
        written.append(last_words)
        return live

    monkeypatch.setattr(gateway.addon.connections, "close_unread", close_unread)
    body = chat_body()
    flow = make_flow(body=body, headers=[("content-length", str(len(body)))])
    run(gateway.addon.requestheaders(flow))
    return flow, written


def test_a_refusal_on_the_headers_is_written_and_closed_and_logged_once(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow, written = refused_with_a_body(gateway, monkeypatch, live=True)
    state = state_of(flow)
    assert state is not None and state.answered_by_proxy and state.finished
    assert flow.response is not None and flow.response.status_code == 401
    assert flow.response.headers["connection"] == "close"
    assert flow.response.headers["x-request-id"] == state.request_id
    [last_words] = written
    assert last_words.startswith(b"HTTP/1.1 401 ") and b"missing_api_key" in last_words
    assert len(access_lines(gateway)) == 1
    gateway.addon.response(flow)  # mitmproxy goes on with the flow: counted once all the same
    assert len(access_lines(gateway)) == 1


def test_a_refusal_whose_connection_is_gone_is_left_to_the_response_hook(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow, written = refused_with_a_body(gateway, monkeypatch, live=False)
    state = state_of(flow)
    assert state is not None and not state.finished and len(written) == 1
    assert access_lines(gateway) == []
    gateway.addon.response(flow)
    [line] = access_lines(gateway)
    assert line.startswith("POST /v1/chat/completions 401 ")


def test_a_refusal_of_a_request_without_a_body_is_left_to_mitmproxy(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    def close_unread(client: object, last_words: bytes) -> bool:
        raise AssertionError("closed")

    monkeypatch.setattr(gateway.addon.connections, "close_unread", close_unread)
    flow = gateway.send(make_flow("GET", "/v1/models"))
    assert flow.response is not None and flow.response.status_code == 401
    assert "connection" not in flow.response.headers

"""Unit tests for pipeline/admission.py: the Admission stage built alone from its parts.

A real KeyStore on a SQLite file behind `find_key`, a RateLimiter, Metrics and Plans;
flows from `mitmproxy.test.tflow`. What is checked is what the `requestheaders` hook
gets back: the refusal (status, code, shape, headers) or the state of a request that
may pass. The hook's own guard (a bug answers 500) is in test_addon.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from apipod_proxy import keys
from apipod_proxy.clientapi import ClientApi
from apipod_proxy.config import Settings
from apipod_proxy.flowstate import STATE, FlowState, state_of
from apipod_proxy.pipeline.admission import Admission
from apipod_proxy.policy import forwarding
from apipod_proxy.policy.pricing import PriceTable, Tier
from apipod_proxy.storage.records import KeyRecord
from apipod_proxy.storage.sqlite import KeyStore
from tests.support import stages
from tests.support.gateway import (
    ADMIN_SECRET,
    LogRecords,
    chat_body,
    error_of,
    make_flow,
    make_settings,
    run,
)

CHAT = b'{"model":"gpt-4o","messages":[]}'


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def stage(settings: Settings, store: KeyStore) -> Admission:
    return stages.admission(settings, stages.lookup_in(store))


def admit(stage: Admission, flow: http.HTTPFlow) -> http.HTTPFlow:
    """What `requestheaders` does with the stage: start, then admit or refuse."""

    async def go() -> None:
        state = stage.start(flow)
        flow.response = await stage.admit(flow, state)

    run(go())
    return flow


def authed(
    stage: Admission,
    key: str,
    path: str = "/v1/chat/completions",
    headers: list[tuple[str, str]] | None = None,
) -> http.HTTPFlow:
    all_headers = [("authorization", f"Bearer {key}"), *(headers or [])]
    return admit(stage, make_flow("POST", path, CHAT, all_headers))


def state(flow: http.HTTPFlow) -> FlowState:
    found = state_of(flow)
    assert found is not None
    return found


def status(flow: http.HTTPFlow) -> int | None:
    return None if flow.response is None else flow.response.status_code


def new_key(store: KeyStore, name: str = "alice", expires_in: int | None = None) -> tuple[str, Any]:
    return store.create(name, "elite", expires_in)


def counted(stage: Admission, name: str, **labels: str) -> float:
    """A counter's value in the stage's Metrics."""
    return stage.metrics.registry.get_sample_value(f"apipod_{name}_total", labels) or 0.0


# --- the request id and the client's API -------------------------------------------------


def test_start_records_the_request_in_flight_with_a_fresh_id(stage: Admission) -> None:
    flow = make_flow()
    found = stage.start(flow)
    assert flow.metadata[STATE] is found
    assert found.request_id.startswith("req_") and len(found.request_id) == 4 + 16
    assert flow.id in stage.traffic.in_flight
    assert stage.start(make_flow()).request_id != found.request_id


@pytest.mark.parametrize("given", ["req-123", "trace.1:2/3+4=5", "a" * 128])
def test_a_sane_client_request_id_is_kept(stage: Admission, given: str) -> None:
    assert stage.start(make_flow(headers=[("x-request-id", given)])).request_id == given


@pytest.mark.parametrize(
    "given", ["", "has space", "a" * 129, "a;b", keys.generate_key(), "apk_abc"]
)
def test_an_odd_or_key_like_request_id_is_replaced(stage: Admission, given: str) -> None:
    request_id = stage.start(make_flow(headers=[("x-request-id", given)])).request_id
    assert request_id != given and request_id.startswith("req_")


@pytest.mark.parametrize(
    ("path", "headers", "api"),
    [
        ("/v1/chat/completions", [], ClientApi.OPENAI),
        ("/v1/messages", [], ClientApi.ANTHROPIC),
        ("/v1/messages/count_tokens", [], ClientApi.ANTHROPIC),
        ("/api/config", [("anthropic-version", "2023-06-01")], ClientApi.ANTHROPIC),
    ],
)
def test_start_records_the_clients_api(
    stage: Admission, path: str, headers: list[tuple[str, str]], api: ClientApi
) -> None:
    assert stage.start(make_flow(path=path, headers=headers)).api is api


# --- headers and targets -----------------------------------------------------------------


@pytest.mark.parametrize("value", [b"a\rb", b"a\nb", b"a\0b"])
def test_cr_lf_or_nul_in_a_header_value_is_400(
    stage: Admission, store: KeyStore, value: bytes
) -> None:
    key, _ = new_key(store)
    headers = [(b"authorization", f"Bearer {key}".encode()), (b"x-note", value)]
    flow = admit(stage, make_flow(body=CHAT, headers=headers))
    assert status(flow) == 400
    assert error_of(flow.response)["code"] == "invalid_request_headers"
    assert state(flow).user is None


def test_an_absolute_form_target_is_400(stage: Admission) -> None:
    flow = make_flow("GET", "/v1/models")
    flow.request.authority = "internal.example"
    admit(stage, flow)
    assert status(flow) == 400
    assert error_of(flow.response)["code"] == "invalid_request_target"


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
    stage: Admission, store: KeyStore, method: str, path: str, status: int
) -> None:
    key, _ = new_key(store)
    headers = [("authorization", f"Bearer {key}")]
    flow = admit(stage, make_flow(method, path, chat_body("cursor-pro-sonnet"), headers))
    assert flow.response is not None
    assert flow.response.status_code == status
    assert flow.request.headers["authorization"] == f"Bearer {key}"  # never swapped
    assert state(flow).user is None  # refused before the key check


def test_a_known_path_with_another_method_says_which_are_allowed(stage: Admission) -> None:
    flow = admit(stage, make_flow("GET", "/v1/chat/completions"))
    assert status(flow) == 405
    assert error_of(flow.response)["code"] == "method_not_allowed"
    assert flow.response is not None and flow.response.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("path", "headers", "anthropic"),
    [
        ("/api/config", [], False),
        ("/api/config", [("anthropic-version", "2023-06-01")], True),
        ("/v1/messages/batches", [], True),
    ],
)
def test_an_unknown_path_is_404_in_the_callers_shape(
    stage: Admission, path: str, headers: list[tuple[str, str]], anthropic: bool
) -> None:
    flow = admit(stage, make_flow("GET", path, b"", headers))
    assert flow.response is not None
    payload = json.loads(flow.response.content)
    assert payload["error"]["code"] == "not_found"
    assert (payload.get("type") == "error") is anthropic


def test_a_refusal_never_echoes_a_key_in_the_path(stage: Admission, store: KeyStore) -> None:
    key, _ = new_key(store)
    flow = admit(stage, make_flow("GET", f"/v1/files/{key}?k={key}"))
    assert status(flow) == 404  # no such endpoint
    assert flow.response is not None and key.encode() not in flow.response.content


def forward_also(stage: Admission, path: str, methods: list[str]) -> None:
    """Add a row to the forwarding table, as ROUTES_FILE's `[forward]` does."""
    table = stage.forwarding
    table.apply({**table.routes, **forwarding.extra_routes({path: methods})})


def test_an_operator_row_is_admitted(stage: Admission, store: KeyStore) -> None:
    key, record = new_key(store)
    forward_also(stage, "/v2/x", ["post"])
    flow = authed(stage, key, path="/v2/x")
    assert flow.response is None
    assert state(flow).user == record


def test_the_client_address_is_read_from_the_connection(stage: Admission, store: KeyStore) -> None:
    key, _ = new_key(store)
    flow = authed(stage, key, headers=[("x-forwarded-for", "6.6.6.6")])
    # mitmproxy's test client: 127.0.0.1 over TLS; X-Forwarded-For from it is not trusted.
    assert (state(flow).client, state(flow).client_proto) == (flow.client_conn.peername[0], "https")


def test_a_trusted_front_proxy_names_the_client(tmp_path: Path, store: KeyStore) -> None:
    trusted = (ipaddress.ip_network("127.0.0.0/8"),)
    settings = make_settings(tmp_path, trusted_proxies=trusted)
    stage = stages.admission(settings, stages.lookup_in(store))
    headers = [("x-forwarded-for", "203.0.113.7"), ("x-forwarded-proto", "http")]
    flow = admit(stage, make_flow(headers=headers))
    assert (state(flow).client, state(flow).client_proto) == ("203.0.113.7", "http")


# --- the proxy's own paths ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/health?probe=1", "/metrics", "/admin/keys"])
def test_own_paths_go_on_without_a_key_and_without_a_lookup(settings: Settings, path: str) -> None:
    looked_up: list[str] = []

    async def find_key(key_hash: str) -> KeyRecord | None:
        looked_up.append(key_hash)
        return None

    stage = stages.admission(settings, find_key)
    headers = [("authorization", f"Bearer {keys.generate_key()}"), ("x-admin-secret", ADMIN_SECRET)]
    flow = admit(stage, make_flow("GET", path, b"", headers))
    assert flow.response is None
    assert state(flow).internal is True
    assert state(flow).user is None
    assert looked_up == []


# --- authentication ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization", [None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "apk_x", "Token x"]
)
def test_missing_bearer_is_401(stage: Admission, authorization: str | None) -> None:
    headers = [] if authorization is None else [("authorization", authorization)]
    flow = admit(stage, make_flow(body=chat_body(), headers=headers))
    assert flow.response is not None
    assert flow.response.status_code == 401
    error = error_of(flow.response)
    assert error["code"] == "missing_api_key"
    assert error["type"] == "authentication_error"


def test_key_in_x_api_key_alone_is_accepted(stage: Admission, store: KeyStore) -> None:
    """The Anthropic SDK and Claude Code send the key as x-api-key."""
    key, record = new_key(store)
    flow = admit(stage, make_flow(body=chat_body(), headers=[("x-api-key", key)]))
    assert flow.response is None
    assert state(flow).user == record


def test_unknown_key_in_x_api_key_is_403(stage: Admission) -> None:
    flow = admit(stage, make_flow(body=chat_body(), headers=[("x-api-key", keys.generate_key())]))
    assert flow.response is not None
    assert flow.response.status_code == 403


@pytest.mark.parametrize(
    "token", ["sk-abc", "apk_short", "apk_" + "A" * 44, "xpk_" + "A" * 43, "apk_" + "A" * 42]
)
def test_wrong_shape_key_is_403(stage: Admission, token: str) -> None:
    flow = admit(stage, make_flow(headers=[("authorization", f"Bearer {token}")]))
    assert flow.response is not None
    assert flow.response.status_code == 403
    assert error_of(flow.response)["code"] == "invalid_api_key"


def test_a_wrong_shape_key_is_never_looked_up(settings: Settings) -> None:
    async def find_key(key_hash: str) -> KeyRecord | None:
        raise AssertionError("looked up")

    stage = stages.admission(settings, find_key)
    assert status(authed(stage, "apk_short")) == 403


def test_unknown_key_is_403(stage: Admission, store: KeyStore) -> None:
    new_key(store)
    flow = authed(stage, keys.generate_key())
    assert flow.response is not None
    assert flow.response.status_code == 403
    error = error_of(flow.response)
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "permission_error"


def test_key_with_undecodable_bytes_is_403_not_a_crash(stage: Admission) -> None:
    request = tutils.treq(
        method=b"POST",
        path=b"/v1/chat/completions",
        headers=http.Headers([(b"authorization", b"Bearer apk_" + b"\xff" * 43)]),
        content=b"",
    )
    flow = admit(stage, tflow.tflow(req=request))
    assert flow.response is not None
    assert flow.response.status_code == 403


def set_column(store: KeyStore, key_id: int, column: str, value: object) -> None:
    with store.connection() as conn:
        conn.execute(f"UPDATE users SET {column} = ? WHERE id = ?", (value, key_id))


def test_inactive_key_is_403(stage: Admission, store: KeyStore) -> None:
    key, record = new_key(store)
    store.set_active(record.id, False)
    flow = authed(stage, key)
    assert flow.response is not None
    assert flow.response.status_code == 403
    assert error_of(flow.response)["code"] == "inactive_api_key"


def test_expired_key_is_403(stage: Admission, store: KeyStore) -> None:
    key, record = new_key(store, expires_in=3600)
    set_column(store, record.id, "expires_at", "2000-01-01T00:00:00Z")
    flow = authed(stage, key)
    assert flow.response is not None
    assert flow.response.status_code == 403
    assert error_of(flow.response)["code"] == "expired_api_key"


def test_key_with_future_expiry_is_accepted(stage: Admission, store: KeyStore) -> None:
    key, record = new_key(store, expires_in=3600)
    flow = authed(stage, key)
    assert flow.response is None
    assert state(flow).user == record


def test_valid_key_passes_and_sets_the_user(stage: Admission, store: KeyStore) -> None:
    key, record = new_key(store, "bob")
    flow = authed(stage, key)
    assert flow.response is None
    found = flow.metadata[STATE]
    assert isinstance(found, FlowState)
    assert found.user == record
    assert found.internal is False


def test_bearer_scheme_is_case_insensitive(stage: Admission, store: KeyStore) -> None:
    key, _ = new_key(store)
    flow = admit(stage, make_flow(body=CHAT, headers=[("authorization", f"bEaReR {key}")]))
    assert flow.response is None


def test_refusal_happens_before_the_body_is_needed(stage: Admission) -> None:
    flow = make_flow(body=b"{not json", headers=[])
    flow.request.data.content = None  # as at `requestheaders`: the body is not read yet
    admit(stage, flow)
    assert flow.response is not None
    assert flow.response.status_code == 401


def test_each_refusal_is_counted_by_its_reason(stage: Admission, store: KeyStore) -> None:
    key, record = new_key(store)
    store.set_active(record.id, False)
    for authorization in ["", "Bearer apk_short", f"Bearer {keys.generate_key()}", f"Bearer {key}"]:
        admit(stage, make_flow(headers=[("authorization", authorization)]))
    for reason, times in [("missing", 1), ("unknown", 2), ("inactive", 1), ("expired", 0)]:
        assert counted(stage, "auth_failures", reason=reason) == times, reason


def test_database_failure_during_lookup_is_503(settings: Settings, apipod_log: LogRecords) -> None:
    async def broken(key_hash: str) -> KeyRecord | None:
        raise sqlite3.OperationalError("disk I/O error")

    stage = stages.admission(settings, broken)
    flow = authed(stage, keys.generate_key())
    assert flow.response is not None
    assert flow.response.status_code == 503
    assert error_of(flow.response)["code"] == "database_unavailable"
    assert any("key lookup failed: disk I/O error" in line for line in apipod_log.lines())


def test_a_hung_key_lookup_is_503_after_the_lookup_timeout(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, apipod_log: LogRecords
) -> None:
    async def hung(key_hash: str) -> KeyRecord | None:
        await asyncio.sleep(10)
        return None

    monkeypatch.setattr("apipod_proxy.pipeline.admission.LOOKUP_TIMEOUT", 0.2)
    stage = stages.admission(settings, hung)
    flow = authed(stage, keys.generate_key())
    assert flow.response is not None and flow.response.status_code == 503
    assert error_of(flow.response)["code"] == "database_unavailable"
    assert any("no answer within 0.2 s" in line for line in apipod_log.at(logging.ERROR))


# --- bearer token parsing ----------------------------------------------------------------


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
def test_bearer_forms_that_authenticate(stage: Admission, store: KeyStore, template: str) -> None:
    key, record = new_key(store)
    headers = [("authorization", template.format(key=key))]
    flow = admit(stage, make_flow(body=CHAT, headers=headers))
    assert flow.response is None
    assert state(flow).user == record


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
def test_bearer_forms_that_are_refused(
    stage: Admission, store: KeyStore, template: str, status: int
) -> None:
    key, _ = new_key(store)
    headers = [("authorization", template.format(key=key))]
    flow = admit(stage, make_flow(body=CHAT, headers=headers))
    assert flow.response is not None
    assert flow.response.status_code == status


def test_two_authorization_headers_are_refused(stage: Admission, store: KeyStore) -> None:
    key, _ = new_key(store)
    flow = admit(
        stage,
        make_flow(headers=[("authorization", f"Bearer {key}"), ("authorization", "Bearer x")]),
    )
    assert flow.response is not None
    # The two values read as one (joined) key, which is no key: refused like a wrong one.
    assert flow.response.status_code == 403
    assert error_of(flow.response)["code"] == "invalid_api_key"


# --- rate limits -------------------------------------------------------------------------


def test_past_the_keys_rpm_is_429_with_a_retry_after(stage: Admission, store: KeyStore) -> None:
    key, record = store.create("alice", "elite", None, rpm=2)
    assert [status(authed(stage, key)) for _ in range(2)] == [None, None]
    flow = authed(stage, key)
    assert status(flow) == 429
    error = error_of(flow.response)
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "rate_limit_error")
    assert flow.response is not None and int(flow.response.headers["retry-after"]) >= 1
    assert state(flow).user == record  # the key was good: the limit is its own
    assert counted(stage, "rate_limited") == 1


def test_an_anthropic_client_is_refused_in_its_shape(stage: Admission, store: KeyStore) -> None:
    key, _ = store.create("alice", "elite", None, rpm=1)
    authed(stage, key, path="/v1/messages")
    flow = authed(stage, key, path="/v1/messages")
    assert flow.response is not None and flow.response.status_code == 429
    payload = json.loads(flow.response.content)
    assert payload["type"] == "error" and payload["error"]["code"] == "rate_limit_exceeded"


def test_rpm_comes_from_the_tier(stage: Admission, store: KeyStore) -> None:
    stage.plans.apply(PriceTable(tiers={"trial": Tier(rpm=1)}))
    key, _ = store.create("alice", "trial", None)
    assert authed(stage, key).response is None
    # The tier's rpm is 1: that request took the minute's only token.
    flow = authed(stage, key)
    assert error_of(flow.response)["code"] == "rate_limit_exceeded"


def test_with_redis_the_shared_limiter_decides(stage: Admission, store: KeyStore) -> None:
    asked: list[tuple[int, int]] = []

    class Shared:
        async def acquire(self, key_id: int, rpm: int) -> float:
            asked.append((key_id, rpm))
            return 0.0 if len(asked) == 1 else 2.5

    stage.shared_limiter = Shared()  # type: ignore[assignment]
    key, record = store.create("alice", "elite", None, rpm=7)
    assert authed(stage, key).response is None
    flow = authed(stage, key)
    assert status(flow) == 429
    assert flow.response is not None and flow.response.headers["retry-after"] == "3"
    assert asked == [(record.id, 7), (record.id, 7)]

"""Unit tests for pipeline/accounting.py: the Accounting stage built alone from its parts.

Plans with a price, a SpendLedger, a UsageRecorder, a RequestLog, Metrics; a request as
the earlier stages leave it (`stages.admitted`, forwarded or answered by the proxy).
What is checked is what is counted: the budget hold, the cost, the usage, the request
log, the metrics, the access line, and what a flush writes. Everything but `flush` runs
with `stages.NoDatabase`: from memory, with no database hop.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import flow as mflow
from mitmproxy import http

from apipod_proxy import clock, keys
from apipod_proxy.config import Settings
from apipod_proxy.flowstate import FlowState
from apipod_proxy.pipeline.accounting import Accounting, ChargeBeforeRelease
from apipod_proxy.pipeline.usage import SseWatcher
from apipod_proxy.policy.pricing import Price, PriceTable, Tier
from apipod_proxy.storage.records import KeyRecord
from apipod_proxy.storage.sqlite import KeyStore
from tests.support import stages
from tests.support.gateway import (
    UPSTREAM_KEY,
    LogRecords,
    captured_log,
    chat_body,
    error_of,
    make_flow,
    make_settings,
    run,
)

GEMINI = "gemini-3-flash"
ALICE = KeyRecord(1, "alice", "elite", True, "2024-01-01T00:00:00Z", None, "apk_abcd")
#: 11 prompt (3 cached) and 5 completion tokens at these prices: (8*100 + 3*10 + 5*400)/1e6.
PRICES = PriceTable(
    prices={GEMINI: Price(100.0, 400.0, 10.0)},
    tiers={"trial": Tier(rpm=1, budget=0.01, budget_period="day", models=(GEMINI,))},
)
COST = (8 * 100 + 3 * 10 + 5 * 400) / 1e6
USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 3}}
#: max_tokens 20 at $400 per million output, "user" and "hi" (2 tokens) at $100 input: what
#: the rewrite stage estimates for `chat_body(GEMINI, max_tokens=20)` (test_rewrite.py).
HELD = (2 * 100 + 20 * 400) / 1e6


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1, thread_name_prefix="test-db") as executor:
        yield executor


@pytest.fixture
def stage(settings: Settings, pool: ThreadPoolExecutor) -> Accounting:
    accounting = stages.accounting(settings, stages.NoDatabase(), pool)
    accounting.plans.apply(PRICES)
    return accounting


def forwarded(
    user: KeyRecord | None = ALICE,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    model: str | None = GEMINI,
    routed: str | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> tuple[http.HTTPFlow, FlowState]:
    """A request the earlier stages let through and sent upstream."""
    body = b"" if model is None else chat_body(model)
    flow = make_flow(method, path, body, headers)
    state = stages.admitted(
        flow,
        user,
        requested_model=model,
        routed_model=routed or model,
        forwarded_at=time.perf_counter(),
    )
    return flow, state


def answer(stage: Accounting, flow: http.HTTPFlow, status: int = 200, usage: Any = USAGE) -> None:
    """The upstream answers JSON with `usage`; the request ends."""
    flow.response = http.Response.make(
        status, json.dumps({"usage": usage}).encode(), {"content-type": "application/json"}
    )
    stage.finish(flow, status)


def fail(stage: Accounting, flow: http.HTTPFlow, message: str) -> None:
    """The request ends in an error (mitmproxy's `error` hook)."""
    flow.error = mflow.Error(message)
    stage.finish(flow, None)


def access_lines(log: LogRecords) -> list[str]:
    return [line for line in log.lines() if " key=" in line]


def requests_counted(stage: Accounting, model: str, status: str) -> float:
    labels = {"model": model, "status": status}
    return stage.metrics.registry.get_sample_value("apipod_requests_total", labels) or 0.0


# --- cost, usage and the request log ------------------------------------------------------


def test_a_completed_request_is_charged_from_memory_and_logged(stage: Accounting) -> None:
    flow, _ = forwarded(headers=[("x-request-id", "r-1")])
    answer(stage, flow)
    now = clock.now_text()
    assert stage.ledger.spent(ALICE.id, "month", now) == pytest.approx(COST)
    (row,) = stage.request_log.take()
    assert row[1:6] == ("r-1", ALICE.id, GEMINI, GEMINI, 200)
    assert row[7:] == (11, 3, 5, pytest.approx(COST), 0, False, False)


def test_a_completed_request_counts_its_usage_and_metrics(stage: Accounting) -> None:
    flow, _ = forwarded()
    answer(stage, flow)
    buckets, last_used = stage.usage.take()
    [((key_id, model, _), counts)] = buckets.items()
    assert (key_id, model) == (ALICE.id, GEMINI)
    assert (counts.requests, counts.ok, counts.prompt_tokens, counts.completion_tokens) == (
        1,
        1,
        11,
        5,
    )
    assert counts.cached_tokens == 3 and counts.cost == pytest.approx(COST)
    assert set(last_used) == {ALICE.id}
    assert requests_counted(stage, GEMINI, "200") == 1
    tokens = stage.metrics.registry.get_sample_value(
        "apipod_tokens_total", {"model": GEMINI, "kind": "prompt"}
    )
    assert tokens == 11


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_upstream_failures_cost_nothing_even_with_usage(stage: Accounting, status: int) -> None:
    flow, _ = forwarded()
    answer(stage, flow, status)
    assert stage.ledger.spent(ALICE.id, "total", clock.now_text()) == 0
    (row,) = stage.request_log.take()
    assert (row[5], row[-1]) == (status, 0.0)


def test_a_reload_of_prices_applies_to_the_next_completion(stage: Accounting) -> None:
    flow, _ = forwarded()
    stage.plans.apply(PriceTable(prices={GEMINI: Price(0.0, 0.0, 0.0)}))
    answer(stage, flow)  # charged at completion, at the prices then
    assert stage.ledger.spent(ALICE.id, "day", clock.now_text()) == 0


def test_a_request_the_proxy_answered_is_counted_but_neither_charged_nor_logged(
    stage: Accounting,
) -> None:
    flow, state = forwarded()
    state.forwarded_at = None  # refused before forwarding
    answer(stage, flow, 429)
    assert stage.request_log.take() == []
    assert not stage.usage and stage.ledger.spent(ALICE.id, "total", clock.now_text()) == 0
    assert requests_counted(stage, GEMINI, "429") == 1


def test_a_stream_is_counted_from_its_watcher(stage: Accounting) -> None:
    flow, state = forwarded()
    state.watcher = watcher = SseWatcher()
    stage.metrics.active_streams.inc()  # as the answers stage does for a stream
    usage = {"prompt_tokens": 11, "completion_tokens": 5, "prompt_tokens_details": {}}
    watcher(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
    flow.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
    stage.finish(flow, 200)
    (row,) = stage.request_log.take()
    assert row[7:10] == (11, 0, 5)
    assert stage.metrics.registry.get_sample_value("apipod_active_streams") == 0


def test_a_request_is_counted_once_and_leaves_the_requests_in_flight(stage: Accounting) -> None:
    flow, _ = forwarded()
    stage.traffic.in_flight.add(flow.id)
    answer(stage, flow)
    stage.finish(flow, 200)  # the error hook after the response one, say
    assert flow.id not in stage.traffic.in_flight
    assert len(stage.request_log.take()) == 1
    assert requests_counted(stage, GEMINI, "200") == 1


def test_a_flow_without_state_is_neither_counted_nor_logged(
    stage: Accounting, apipod_log: LogRecords
) -> None:
    flow = make_flow()
    fail(stage, flow, "Client disconnected")
    assert access_lines(apipod_log) == []
    assert stage.request_log.take() == []


# --- the budget hold ---------------------------------------------------------------------


def holding(
    stage: Accounting, record: KeyRecord, estimate: float = HELD
) -> tuple[http.HTTPFlow, FlowState, Any]:
    """A request with the rewrite stage's estimate, and the hold's refusal (None: held)."""
    flow, state = forwarded(record)
    state.forwarded_at = None  # holds come before forwarding
    state.hold_estimate = estimate
    refusal = run(stage.hold(record, state))
    if refusal is None:
        state.forwarded_at = time.perf_counter()
    return flow, state, refusal


def test_over_budget_is_refused_by_the_hold_from_memory(stage: Accounting) -> None:
    record = replace(ALICE, budget=0.01)
    stage.ledger.add(record.id, 0.01, clock.now_text())
    _, state, refusal = holding(stage, record)
    assert refusal is not None and refusal.status == 429
    assert error_of(state.api.refuse(refusal))["code"] == "insufficient_quota"
    assert state.hold_id is None


@pytest.mark.parametrize("ending", ["answer", "failure", "abort"])
def test_a_hold_is_settled_by_the_answer_or_released_by_a_failure(
    stage: Accounting, ending: str
) -> None:
    record = replace(ALICE, budget=0.012)
    first, state, refusal = holding(stage, record)
    assert refusal is None and state.hold_id is not None  # forwarded, holding its estimate
    assert stage.ledger.held(record.id) == pytest.approx(HELD)
    _, second, refusal = holding(stage, record)  # held and refused from memory
    assert refusal is not None
    assert error_of(second.api.refuse(refusal))["code"] == "insufficient_quota"
    if ending == "answer":
        answer(stage, first)
        spent = COST
    elif ending == "failure":
        answer(stage, first, 503)
        spent = 0.0
    else:
        fail(stage, first, "Client disconnected.")  # the client hung up
        spent = 0.0
    assert stage.ledger.held(record.id) == 0
    assert stage.ledger.spent(record.id, "month", clock.now_text()) == pytest.approx(spent)
    assert holding(stage, record)[2] is None


def test_a_key_without_a_budget_holds_nothing(stage: Accounting) -> None:
    _, state, refusal = holding(stage, ALICE)
    assert refusal is None and state.hold_id is None
    assert stage.ledger.held(ALICE.id) == 0


def test_with_redis_away_holds_are_per_process_and_it_is_said_once(stage: Accounting) -> None:
    class Away:
        calls = 0

        async def hold(self, *args: Any) -> Any:
            Away.calls += 1
            raise ConnectionError("Redis failed less than RETRY_SECONDS ago")

        async def add(self, *args: Any) -> Any:
            raise ConnectionError("Redis failed less than RETRY_SECONDS ago")

    stage.shared_spend = Away()  # type: ignore[assignment]
    record = replace(ALICE, budget=0.012)
    with captured_log() as records:
        assert holding(stage, record)[2] is None
        _, second, refusal = holding(stage, record)
    assert refusal is not None
    assert error_of(second.api.refuse(refusal))["code"] == "insufficient_quota"  # locally
    assert Away.calls == 1 and stage.ledger.held(record.id) > 0
    (warning,) = records.warnings()
    assert "budget holds are per process" in warning and "ConnectionError" in warning


def test_with_redis_the_cost_is_added_there_before_the_answer_ends(stage: Accounting) -> None:
    added: list[Any] = []

    class Shared:
        async def add(self, rows: Any, ttl: float, release: Any) -> Any:
            await asyncio.sleep(0.01)
            added.append((rows, release))
            return {}

    stage.shared_spend = Shared()  # type: ignore[assignment]
    flow, state = forwarded()

    async def go() -> None:
        answer(stage, flow)
        assert state.charging is not None and not state.charging.done()
        await ChargeBeforeRelease().response(flow)
        assert state.charging.done()

    run(go())
    [(rows, release)] = added
    assert {period for _, period, _ in rows} == {"day", "month", "total"}
    assert all(value == pytest.approx(COST) for value in rows.values())
    assert release is None  # no budget, no hold


def test_a_request_that_costs_nothing_is_not_waited_for(stage: Accounting) -> None:
    class Shared:
        async def add(self, *args: Any) -> Any:
            raise AssertionError("nothing to add")

    stage.shared_spend = Shared()  # type: ignore[assignment]
    flow, state = forwarded(user=None)
    answer(stage, flow)
    assert state.charging is None
    run(ChargeBeforeRelease().response(flow))


# --- the database --------------------------------------------------------------------------


@pytest.fixture
def stored(stage: Accounting, store: KeyStore) -> Accounting:
    stage.store = store
    return stage


def test_flush_writes_spend_and_log_and_settles_the_ledger(stored: Accounting) -> None:
    _, record = stored.store.create("alice", "elite", None)
    flow, _ = forwarded(record)
    answer(stored, flow)

    run(stored.flush())
    ledger = stored.ledger
    assert ledger.pending == ledger.flushing == {}
    assert ledger.spent(record.id, "total", clock.now_text()) == pytest.approx(COST)
    (logged,) = stored.store.requests(record.id)
    assert logged["cost"] == pytest.approx(COST)
    assert stored.store.usage()[0]["cost"] == pytest.approx(COST)


def test_a_failed_flush_keeps_everything_for_the_next(
    stored: Accounting, store: KeyStore, apipod_log: LogRecords
) -> None:
    _, record = store.create("alice", "elite", None)
    answer(stored, forwarded(record)[0])

    class Locked:
        def record_usage(self, *args: Any) -> Any:
            raise sqlite3.OperationalError("database is locked")

    stored.store = Locked()  # type: ignore[assignment]
    run(stored.flush())
    assert any("usage flush failed, will retry" in line for line in apipod_log.lines())
    assert stored.usage and stored.request_log
    stored.store = store
    run(stored.flush())
    assert len(store.requests(record.id)) == 1
    assert store.usage()[0]["cost"] == pytest.approx(COST)


def test_the_final_flush_writes_what_is_left(stored: Accounting, store: KeyStore) -> None:
    _, record = store.create("alice", "elite", None)
    answer(stored, forwarded(record)[0])
    stored.final_flush()
    assert len(store.requests(record.id)) == 1
    assert not stored.usage and not stored.request_log


# --- the access line -----------------------------------------------------------------------


def test_access_line_for_a_routed_request(stage: Accounting, apipod_log: LogRecords) -> None:
    flow, _ = forwarded(model="cursor-pro-sonnet", routed=GEMINI)
    answer(stage, flow)
    [line] = access_lines(apipod_log)
    method, path, status, duration, *rest = line.split(" ")
    assert (method, path, status) == ("POST", "/v1/chat/completions", "200")
    assert duration.endswith("ms")
    float(duration.removesuffix("ms"))
    assert f"key={ALICE.id}:alice" in rest
    assert f"model=cursor-pro-sonnet->{GEMINI}" in rest


def test_access_line_for_an_unrouted_model(stage: Accounting, apipod_log: LogRecords) -> None:
    answer(stage, forwarded(model="gpt-4o")[0])
    [line] = access_lines(apipod_log)
    assert "model=gpt-4o->gpt-4o" in line


def test_access_line_without_model_has_no_model_part(
    stage: Accounting, apipod_log: LogRecords
) -> None:
    flow, _ = forwarded(method="GET", path="/v1/models", model=None)
    answer(stage, flow)
    [line] = access_lines(apipod_log)
    assert line.startswith("GET /v1/models 200 ")
    assert "model=" not in line


def test_access_line_for_a_refusal(stage: Accounting, apipod_log: LogRecords) -> None:
    flow, state = forwarded(user=None, model=None)
    state.forwarded_at, state.answered_by_proxy = None, True
    answer(stage, flow, 401)
    [line] = access_lines(apipod_log)
    assert line.startswith("POST /v1/chat/completions 401 ")
    assert "key=-" in line


def test_access_line_redacts_a_key_in_the_path(stage: Accounting, apipod_log: LogRecords) -> None:
    key = keys.generate_key()
    flow, state = forwarded(user=None, method="GET", path=f"/v1/files/{key}?k={key}", model=None)
    state.forwarded_at = None
    answer(stage, flow, 404)
    [line] = access_lines(apipod_log)
    assert line.startswith("GET /v1/files/[redacted] 404 ")  # no such endpoint
    assert key not in "".join(apipod_log.lines())


def test_access_line_for_an_internal_request(stage: Accounting, apipod_log: LogRecords) -> None:
    flow, state = forwarded(user=None, method="GET", path="/health", model=None)
    state.internal, state.forwarded_at = True, None
    answer(stage, flow)
    [line] = access_lines(apipod_log)
    assert line.startswith("GET /health 200 ")


def test_access_line_drops_the_query_string(stage: Accounting, apipod_log: LogRecords) -> None:
    answer(stage, forwarded(method="GET", path="/v1/models?token=abc", model=None)[0])
    [line] = access_lines(apipod_log)
    assert line.startswith("GET /v1/models 200 ")
    assert "token=abc" not in line


# --- a request that ends in an error ---------------------------------------------------------


def test_a_failure_is_logged_with_its_error(stage: Accounting, apipod_log: LogRecords) -> None:
    flow, _ = forwarded()
    fail(stage, flow, "server closed connection")
    [line] = access_lines(apipod_log)
    assert line.startswith("POST /v1/chat/completions 502 ")
    assert f"key={ALICE.id}:alice" in line
    assert 'error="server closed connection"' in line


def test_a_failure_cancels_the_upstream_timer(stage: Accounting, apipod_log: LogRecords) -> None:
    flow, state = forwarded()

    async def go() -> asyncio.TimerHandle:
        state.timer = timer = asyncio.get_running_loop().call_later(60, lambda: None)
        fail(stage, flow, "client disconnected")
        return timer

    assert run(go()).cancelled()
    assert " 499 " in access_lines(apipod_log)[0]


def test_a_failure_redacts_keys_quoted_by_mitmproxy(
    stage: Accounting, apipod_log: LogRecords
) -> None:
    key = keys.generate_key()
    fail(stage, forwarded()[0], f"unexpected server response: b'echo {key}'")
    [line] = access_lines(apipod_log)
    assert key not in line
    assert "[redacted]" in line


def test_a_failure_redacts_bearer_tokens_quoted_by_mitmproxy(
    stage: Accounting, apipod_log: LogRecords
) -> None:
    message = (
        "unexpected server response: b'HTTP/1.1 400\\r\\nAuthorization: Bearer sk-live-9f8e7d'"
    )
    fail(stage, forwarded()[0], message)
    [line] = access_lines(apipod_log)
    assert "sk-live-9f8e7d" not in line


def test_a_failure_redacts_x_api_key_quoted_by_mitmproxy(
    stage: Accounting, apipod_log: LogRecords
) -> None:
    fail(stage, forwarded()[0], f"unexpected server response: b'x-api-key: {UPSTREAM_KEY}'")
    [line] = access_lines(apipod_log)
    assert UPSTREAM_KEY not in line


def test_a_failure_after_the_upstream_timeout_is_504(
    stage: Accounting, apipod_log: LogRecords
) -> None:
    flow, state = forwarded()
    state.timed_out = True
    fail(stage, flow, "connection closed")
    assert " 504 " in access_lines(apipod_log)[0]

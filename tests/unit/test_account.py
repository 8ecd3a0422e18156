"""Unit tests for apipod_proxy.endpoints.account (/account, the billing endpoints) and
apipod_proxy.storage.requestlog (the in-memory buffer), called directly."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from apipod_proxy import clock
from apipod_proxy.endpoints import ENDPOINTS, Access, Endpoints
from apipod_proxy.endpoints.account import UNLIMITED_USD
from apipod_proxy.pipeline.usage import Usage
from apipod_proxy.policy.budgets import SpendLedger
from apipod_proxy.policy.pricing import Plans, PriceTable, Tier
from apipod_proxy.storage.records import KeyRecord, UsageCounts
from apipod_proxy.storage.requestlog import MAX_PENDING, RequestLog, parse_limit
from apipod_proxy.storage.sqlite import KeyStore
from tests.support.endpoints import answer
from tests.support.gateway import make_settings

PLANS = Plans(
    PriceTable(tiers={"trial": Tier(rpm=30, budget=2.0, budget_period="day", models=("m",))})
)


@pytest.fixture
def account(tmp_path: Path, store: KeyStore) -> Endpoints:
    return Endpoints(
        make_settings(tmp_path, admin_secret=None), store, plans=PLANS, ledger=SpendLedger()
    )


def get(account: Endpoints, record: KeyRecord, path: str, method: str = "GET") -> tuple[int, Any]:
    request = tutils.treq(method=method.encode(), path=path.encode(), headers=http.Headers())
    response = answer(account, request, user=record)
    return response.status_code, json.loads(response.content or b"null")


def is_account_path(path: str) -> bool:
    """A path answered for the calling key, from the database (the billing paths)."""
    row = ENDPOINTS.find(path)
    return row is not None and row.access is Access.CUSTOMER and row.path != "/v1/models"


def test_account_paths() -> None:
    for path in ("/account", "/v1/dashboard/billing/usage", "/dashboard/billing/subscription"):
        assert is_account_path(path)
    for path in ("/accounts", "/v1/account", "/v1/dashboard/billing/credit_grants"):
        assert not is_account_path(path)


def test_account_shows_what_applies_spend_and_daily_usage(
    account: Endpoints, store: KeyStore
) -> None:
    _, record = store.create("alice", "trial", 30 * 86400)
    now = clock.now_text()
    store.record_usage(
        {
            (record.id, "m", clock.hour_of(now)): UsageCounts(
                2, 2, 0, 0, 20, 10, cost=0.5, estimated_reasoning_tokens=7, estimated_requests=1
            )
        },
        {},
    )
    account.ledger.add(record.id, 0.25, now)  # not flushed yet: counted all the same
    account.ledger.base = store.current_spend()
    status, seen = get(account, record, "/account")
    assert status == 200
    tomorrow = (clock.utcnow() + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")
    assert seen == {
        "id": record.id,
        "name": "alice",
        "tier": "trial",
        "expires_at": record.expires_at,
        "rpm": 30,
        "models": ["m"],
        "budget": 2.0,
        "budget_period": "day",
        "spend": 0.75,
        "resets_at": seen["resets_at"],
        "usage": [
            {
                "date": now[:10],
                "model": "m",
                "requests": 2,
                "prompt_tokens": 20,
                "completion_tokens": 10,
                "cost": 0.5,
                "reasoning_tokens": 0,
                "estimated_reasoning_tokens": 7,
                "estimated_requests": 1,
            }
        ],
    }
    assert seen["resets_at"] == tomorrow  # the next midnight, UTC


def test_account_without_budget_shows_the_months_spend(account: Endpoints, store: KeyStore) -> None:
    _, record = store.create("bob", "elite", None)
    _, seen = get(account, record, "/account")
    assert (seen["budget"], seen["budget_period"], seen["models"], seen["spend"]) == (
        None,
        None,
        None,
        0,
    )
    assert seen["resets_at"].endswith("-01T00:00:00Z")
    assert seen["usage"] == []


def test_subscription(account: Endpoints, store: KeyStore) -> None:
    _, trial = store.create("t", "trial", None)
    status, answer = get(account, trial, "/v1/dashboard/billing/subscription")
    assert (status, answer) == (
        200,
        {
            "object": "billing_subscription",
            "hard_limit_usd": 2.0,
            "soft_limit_usd": 2.0,
            "system_hard_limit_usd": 2.0,
            "has_payment_method": True,
            "access_until": 0,
        },
    )
    expiring = replace(trial, tier="x", expires_at="2030-01-02T03:04:05Z")
    _, answer = get(account, expiring, "/dashboard/billing/subscription")
    assert answer["hard_limit_usd"] == UNLIMITED_USD
    assert answer["access_until"] == int(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp())


def test_billing_usage_in_cents_over_the_dates_asked(account: Endpoints, store: KeyStore) -> None:
    _, record = store.create("t", "trial", None)
    _, other = store.create("o", "trial", None)
    store.record_usage(
        {
            (record.id, "m", "2026-01-01T05"): UsageCounts(1, 1, cost=0.5),
            (record.id, "m", "2026-01-02T05"): UsageCounts(1, 1, cost=0.25),
            (record.id, "m", clock.hour_of(clock.now_text())): UsageCounts(1, 1, cost=0.125),
            (other.id, "m", "2026-01-01T05"): UsageCounts(1, 1, cost=9.0),
        },
        {},
    )
    path = "/v1/dashboard/billing/usage"
    _, answer = get(account, record, f"{path}?start_date=2026-01-01&end_date=2026-01-02")
    assert answer == {"object": "list", "total_usage": 50.0}  # end_date is exclusive
    _, answer = get(account, record, f"{path}?start_date=2026-01-01&end_date=2026-01-03")
    assert answer["total_usage"] == 75.0
    _, answer = get(account, record, path)  # this month so far
    assert answer["total_usage"] == 12.5
    for query in ("start_date=yesterday", "start_date=2026-01-02&end_date=2026-01-01"):
        status, answer = get(account, record, f"{path}?{query}")
        assert (status, answer["error"]["code"]) == (400, "invalid_date")


def test_only_get(account: Endpoints, store: KeyStore) -> None:
    _, record = store.create("t", "trial", None)
    status, answer = get(account, record, "/account", "POST")
    assert (status, answer["error"]["code"]) == (405, "method_not_allowed")


# --- the request log buffer --------------------------------------------------------------


def test_request_log_rows_and_off_switch() -> None:
    buffer = RequestLog(30)
    buffer.add("req_1", 7, "alias", "m", 200, 0.0123, Usage(11, 5, 3), 0.5)
    (row,) = buffer.take()
    assert row[1:] == ("req_1", 7, "alias", "m", 200, 12, 11, 3, 5, 0.5, 0, False, False)
    assert buffer.take() == []
    off = RequestLog(0)
    off.add("req_1", 7, None, None, 502, 1.0, Usage(), 0.0)
    assert not off.enabled and off.take() == []


def test_request_log_gives_back_in_order_and_bounded() -> None:
    buffer = RequestLog(1)
    buffer.add("new", 1, None, None, 200, 0.0, Usage(), 0.0)
    old = [("t", f"r{i}", 1, None, None, 200, 0, 0, 0, 0, 0.0) for i in range(MAX_PENDING)]
    buffer.give_back(old)  # type: ignore[arg-type]
    rows = buffer.take()
    assert len(rows) == MAX_PENDING
    assert rows[0][1] == "r1" and rows[-1][1] == "new"
    assert buffer.cutoff() < clock.now_text()


@pytest.mark.parametrize(("value", "expected"), [("1", 1), (100, 100), ("10000", 10000)])
def test_limits(value: object, expected: int) -> None:
    assert parse_limit(value) == expected


@pytest.mark.parametrize("value", ["0", "-1", "x", "", None, "10001", "1.5"])
def test_bad_limits(value: object) -> None:
    with pytest.raises(ValueError, match="limit must be a whole number from 1 to 10000"):
        parse_limit(value)


def test_a_database_error_answers_503_and_never_raises(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, admin_secret=None, database_path=tmp_path / "gone.db")
    store = KeyStore(tmp_path / "gone.db", create_missing=False)
    account = Endpoints(settings, store, plans=PLANS, ledger=SpendLedger())
    record = KeyRecord(1, "a", "trial", True, "2026-01-01T00:00:00Z", None, "apk_abcdef")
    status, answer = get(account, record, "/account")
    assert (status, answer["error"]["code"]) == (503, "database_unavailable")


def test_request_log_bounds_client_chosen_model_names() -> None:
    buffer = RequestLog(30)
    buffer.add("req_1", 7, "m" * 100_000, "r" * 100_000, 200, 0.0, Usage(), 0.0)
    (row,) = buffer.take()
    assert (len(row[3]), len(row[4])) == (200, 200)

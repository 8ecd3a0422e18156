"""Unit tests for apipod_proxy.policy.budgets: what applies to a key, periods, the spend ledger,
the refusals before forwarding, key objects and operator input."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http

from apipod_proxy import clock
from apipod_proxy.clientapi import ClientApi
from apipod_proxy.errors import Refusal
from apipod_proxy.policy import budgets
from apipod_proxy.policy.budgets import SpendLedger
from apipod_proxy.policy.pricing import Plans, Price, PriceTable, Tier, money
from apipod_proxy.storage.records import KeyRecord, UsageCounts
from apipod_proxy.storage.sqlite import KeyStore
from tests.support.gateway import make_settings
from tests.support.harness import KEY_OBJECT_FIELDS as KEY_FIELDS

KEY = KeyRecord(1, "alice", "elite", True, "2026-01-01T00:00:00Z", None, "apk_abcdef")
PLANS = Plans(
    PriceTable(
        tiers={
            "elite": Tier(rpm=100, budget=50.0, budget_period="month", models=("a", "b")),
            "nobudget": Tier(models=None),
            "periodonly": Tier(budget_period="day"),
        }
    )
)


# --- what applies ----------------------------------------------------------------------


def _rendered(refusal: Refusal | None) -> http.Response | None:
    """A refusal as an OpenAI client gets it."""
    return None if refusal is None else ClientApi.OPENAI.refuse(refusal)


def budget_refusal(*args: Any) -> http.Response | None:
    return _rendered(budgets.budget_refusal(*args))


def model_refusal(*args: Any) -> http.Response | None:
    return _rendered(budgets.model_refusal(*args))


def price_refusal(*args: Any) -> http.Response | None:
    return _rendered(budgets.price_refusal(*args))


def test_the_keys_own_settings_override_its_tiers() -> None:
    assert budgets.budget_of(KEY, PLANS) == (50.0, "month")
    assert budgets.models_of(KEY, PLANS) == ("a", "b")
    own = replace(KEY, budget=5.0, budget_period="day", models=("c",))
    assert budgets.budget_of(own, PLANS) == (5.0, "day")
    assert budgets.models_of(own, PLANS) == ("c",)
    # A key's own budget of 0 is a budget (nothing may be spent), not "unset".
    assert budgets.budget_of(replace(KEY, budget=0.0), PLANS) == (0.0, "month")
    # An empty allow-list allows nothing.
    assert budgets.models_of(replace(KEY, models=()), PLANS) == ()


def test_without_a_tier_entry_everything_is_unlimited() -> None:
    key = replace(KEY, tier="unknown")
    assert budgets.budget_of(key, PLANS) == (None, None)
    assert budgets.models_of(key, PLANS) is None
    assert budgets.budget_of(key, Plans()) == (None, None)


def test_a_budget_without_a_period_is_monthly_and_periods_combine() -> None:
    assert budgets.budget_of(replace(KEY, tier="nobudget", budget=3.0), PLANS) == (3.0, "month")
    # The tier's period applies to the key's own budget.
    assert budgets.budget_of(replace(KEY, tier="periodonly", budget=3.0), PLANS) == (3.0, "day")
    assert budgets.budget_of(replace(KEY, tier="periodonly"), PLANS) == (None, "day")


def test_rpm_precedence_key_then_tier_table_then_tier_rpm_then_default() -> None:
    config = make_settings(Path("x"), default_rpm=600, tier_rpm={"elite": 1200, "basic": 60})
    assert budgets.rpm_of(replace(KEY, rpm=7), PLANS, config) == 7
    assert budgets.rpm_of(replace(KEY, rpm=0), PLANS, config) == 0
    assert budgets.rpm_of(KEY, PLANS, config) == 100  # the tier table beats TIER_RPM
    assert budgets.rpm_of(KEY, Plans(), config) == 1200  # TIER_RPM
    assert budgets.rpm_of(replace(KEY, tier="nobudget"), PLANS, config) == 600  # DEFAULT_RPM
    assert budgets.rpm_of(replace(KEY, tier="basic"), PLANS, config) == 60


# --- periods ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "now", "start", "reset"),
    [
        ("day", datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC), "2026-03-31", "2026-04-01"),
        ("month", datetime(2026, 3, 31, 12, tzinfo=UTC), "2026-03", "2026-04-01"),
        ("month", datetime(2026, 12, 5, tzinfo=UTC), "2026-12", "2027-01-01"),
        ("day", datetime(2028, 2, 28, 1, tzinfo=UTC), "2028-02-28", "2028-02-29"),
        ("total", datetime(2026, 3, 31, tzinfo=UTC), "", None),
    ],
)
def test_calendar_periods_in_utc(period: str, now: datetime, start: str, reset: str | None) -> None:
    assert budgets.period_start(period, now.strftime("%Y-%m-%dT%H:%M:%SZ")) == start
    resets = budgets.resets_at(period, now)
    assert (resets and resets.strftime("%Y-%m-%d")) == reset
    if resets is not None:
        assert (resets.hour, resets.minute, resets.tzinfo) == (0, 0, UTC)


# --- the ledger ------------------------------------------------------------------------


def test_ledger_adds_to_every_period_and_a_new_day_starts_at_zero() -> None:
    ledger = SpendLedger()
    ledger.add(1, 0.25, "2026-03-31T10:00:00Z")
    ledger.add(1, 0.5, "2026-03-31T11:00:00Z")
    ledger.add(2, 0.0, "2026-03-31T11:00:00Z")  # free requests leave no trace
    assert ledger.spent(1, "day", "2026-03-31T12:00:00Z") == 0.75
    assert ledger.spent(1, "day", "2026-04-01T00:00:00Z") == 0
    assert ledger.spent(1, "month", "2026-04-01T00:00:00Z") == 0
    assert ledger.spent(1, "total", "2027-01-01T00:00:00Z") == 0.75
    assert ledger.pending.keys() == {(1, "day", "2026-03-31"), (1, "month", "2026-03"),
                                     (1, "total", "")}  # fmt: skip


def test_ledger_counts_a_flush_in_progress_once_whether_it_commits_or_fails() -> None:
    now = "2026-03-31T10:00:00Z"
    ledger = SpendLedger()
    ledger.base = {(1, "month", "2026-03"): 1.0}  # loaded at start
    ledger.add(1, 0.5, now)
    ledger.take()
    ledger.add(1, 0.25, now)  # while the flush runs
    assert ledger.spent(1, "month", now) == 1.75
    ledger.give_back()  # the flush failed
    assert ledger.spent(1, "month", now) == 1.75
    ledger.take()
    # It committed; the database's spend includes it and another process's 2.0.
    ledger.settle({(1, "month", "2026-03"): 3.75})
    assert ledger.spent(1, "month", now) == 3.75
    assert ledger.pending == ledger.flushing == {}


def test_ledger_settles_on_what_the_store_writes_and_reads(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "proxy.db")
    _, record = store.create("alice", "elite", None)
    now = clock.now_text()
    ledger = SpendLedger()
    ledger.add(record.id, 0.125, now)
    ledger.take()
    spend = store.record_usage(
        {(record.id, "m", clock.hour_of(now)): UsageCounts(1, 1, cost=0.125)}, {}
    )
    ledger.settle(spend)
    for period in ("day", "month", "total"):
        assert ledger.spent(record.id, period, now) == 0.125
    # A fresh process loads the same at start.
    assert store.current_spend() == spend


# --- refusals --------------------------------------------------------------------------


def test_budget_refusal_is_insufficient_quota_with_the_reset_time() -> None:
    key = replace(KEY, budget=0.01)
    ledger = SpendLedger()
    now = "2026-03-31T23:00:00Z"
    assert budget_refusal(key, PLANS, ledger, now) is None
    ledger.add(key.id, 0.0099, now)
    assert budget_refusal(key, PLANS, ledger, now) is None
    ledger.add(key.id, 0.0001, now)  # spend at the budget: refused
    refused = budget_refusal(key, PLANS, ledger, now)
    assert refused is not None and refused.status_code == 429
    error = json.loads(refused.content or b"")["error"]
    assert (error["code"], error["type"]) == ("insufficient_quota", "insufficient_quota")
    assert error["message"] == (
        "This API key's budget of $0.01 per month is used up ($0.01 spent);"
        " it resets at 2026-04-01T00:00:00Z"
    )
    assert refused.headers["retry-after"] == "3600"
    assert refused.headers["x-should-retry"] == "false"


def test_total_budget_never_resets_and_sends_no_retry_after() -> None:
    key = replace(KEY, budget=0.0, budget_period="total")
    refused = budget_refusal(key, PLANS, SpendLedger(), "2026-03-31T23:00:00Z")
    assert refused is not None
    assert "retry-after" not in refused.headers
    assert (
        "$0.00 in total is used up ($0.00 spent); it does not reset"
        in (refused.content or b"").decode()
    )


def test_a_tiny_budget_shows_the_digits_that_make_it_true() -> None:
    """A budget of a few millionths is spent in millionths: cents would read $0.00."""
    key = replace(KEY, budget=0.000025, budget_period="total")
    ledger = SpendLedger()
    ledger.add(key.id, 0.0000251, "2026-03-31T23:00:00Z")
    refused = budget_refusal(key, PLANS, ledger, "2026-03-31T23:00:00Z")
    assert refused is not None
    message = json.loads(refused.content or b"")["error"]["message"]
    assert "budget of $0.000025 in total is used up ($0.000025 spent)" in message


def test_money_is_cents_or_more_digits_to_the_micro_dollar() -> None:
    assert [money(v) for v in (5, 0.01, 0.0105, 0.000012, 1234.5, 0)] == [
        "$5.00",
        "$0.01",
        "$0.0105",
        "$0.000012",
        "$1234.50",
        "$0.00",
    ]


def test_a_day_budget_counts_today_only() -> None:
    key = replace(KEY, budget=1.0, budget_period="day")
    ledger = SpendLedger()
    ledger.add(key.id, 5.0, "2026-03-30T23:59:59Z")
    assert budget_refusal(key, PLANS, ledger, "2026-03-31T00:00:00Z") is None
    refused = budget_refusal(key, PLANS, ledger, "2026-03-30T23:59:59Z")
    assert refused is not None and refused.headers["retry-after"] == "1"


def test_no_budget_is_never_refused() -> None:
    ledger = SpendLedger()
    ledger.add(KEY.id, 1e9, "2026-03-31T00:00:00Z")
    assert budget_refusal(replace(KEY, tier="x"), PLANS, ledger, "2026-03-31T00:00:00Z") is None


def test_model_refusal_lists_the_allowed_models_and_an_alias_counts_as_itself() -> None:
    key = replace(KEY, models=("cursor-pro-sonnet", "gemini-3-flash"))
    assert model_refusal(key, "cursor-pro-sonnet", PLANS) is None
    refused = model_refusal(key, "claude-sonnet-4-5", PLANS)
    assert refused is not None and refused.status_code == 403
    error = json.loads(refused.content or b"")["error"]
    assert error["code"] == "model_not_allowed"
    assert error["message"].endswith("Allowed models: cursor-pro-sonnet, gemini-3-flash")
    nothing = model_refusal(replace(KEY, models=()), "a", PLANS)
    assert nothing is not None and b"Allowed models: none" in (nothing.content or b"")
    assert model_refusal(replace(KEY, tier="x"), "anything", PLANS) is None


def test_model_listing_keeps_only_allowed_models() -> None:
    listing = {"object": "list", "data": [{"id": "a"}, {"id": "b"}, {"id": "c"}]}
    assert budgets.allowed_listing(listing, ("c", "a", "zzz")) == {
        "object": "list",
        "data": [{"id": "a"}, {"id": "c"}],
    }
    assert budgets.allowed_listing(listing, None) is listing


# --- key objects and input -------------------------------------------------------------


def test_key_objects_show_what_applies_and_the_current_periods_spend(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "proxy.db")
    _, elite = store.create("e", "elite", None)
    _, own = store.create("o", "elite", None, plan={"budget": 2.0, "budget_period": "total"})
    _, free = store.create("f", "other", None)
    hour = budgets.period_start("day", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")) + "T00"
    store.record_usage(
        {(k.id, "m", hour): UsageCounts(1, 1, cost=0.5) for k in (elite, own, free)}, {}
    )
    objects = {o["name"]: o for o in budgets.key_objects(store.list_keys(), PLANS)}
    assert all(list(o) == KEY_FIELDS for o in objects.values())
    assert (objects["e"]["budget"], objects["e"]["budget_period"]) == (50.0, "month")
    assert objects["e"]["models"] == ["a", "b"]
    assert (objects["o"]["budget"], objects["o"]["budget_period"]) == (2.0, "total")
    assert (objects["f"]["budget"], objects["f"]["models"]) == (None, None)
    assert [objects[n]["spend"] for n in "eof"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize(("value", "expected"), [(None, None), (0, 0.0), ("20", 20.0), (4.5, 4.5)])
def test_valid_budgets(value: object, expected: float | None) -> None:
    assert budgets.validate_budget(value) == expected


@pytest.mark.parametrize("value", [-1, "x", True, math.nan, math.inf, 1e10, [1]])
def test_invalid_budgets(value: object) -> None:
    with pytest.raises(ValueError, match="budget must"):
        budgets.validate_budget(value)


def test_periods_and_models_validation() -> None:
    assert budgets.validate_period("day") == "day"
    with pytest.raises(ValueError, match="one of day, month, total"):
        budgets.validate_period("week")
    assert budgets.validate_models("a, b,,a") == ("a", "b")
    assert budgets.validate_models(["x"]) == ("x",)
    assert budgets.validate_models([]) == ()
    for bad in ([1], ["a\nb"], [""], {"a": 1}, ["x" * 201], ["\x00"]):
        with pytest.raises(ValueError, match="models must be a list"):
            budgets.validate_models(bad)
    with pytest.raises(ValueError, match="at most 200"):
        budgets.validate_models([f"m{i}" for i in range(201)])


# --- holds -----------------------------------------------------------------------------


def test_prompt_chars_count_the_prompt_text_but_not_inline_base64() -> None:
    body = {
        "model": "m" * 50,  # not prompt text
        "system": "abcd",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "x" * 100}]},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:a"}}]},
            {"type": "image", "source": {"type": "base64", "data": "A" * 10_000}},
        ],
        "tools": [{"name": "t"}],
    }
    # Every string value: "abcd", "user" twice, "text", the 100 x, "image_url", "image",
    # "base64", "t"; not the data URL, not the base64 data.
    assert budgets.prompt_chars(body) == 4 + 8 + 4 + 100 + 9 + 5 + 6 + 1
    assert budgets.prompt_chars({"model": "m"}) == 0


@pytest.mark.parametrize(
    ("body", "tokens"),
    [
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 70}, 70),
        ({}, budgets.HOLD_DEFAULT_MAX_TOKENS),
        ({"max_tokens": True}, budgets.HOLD_DEFAULT_MAX_TOKENS),
        ({"max_tokens": -5}, budgets.HOLD_DEFAULT_MAX_TOKENS),
        ({"max_tokens": "9"}, budgets.HOLD_DEFAULT_MAX_TOKENS),
    ],
)
def test_output_allowance_is_max_tokens_or_the_default(
    body: dict[str, object], tokens: int
) -> None:
    assert budgets.output_allowance(body) == tokens


def test_a_hold_is_the_prompt_at_input_and_max_tokens_at_output() -> None:
    body = {"messages": [{"content": "x" * 3997}], "max_tokens": 2000}  # 1000 tokens, rounded up
    assert budgets.hold_estimate(body, Price(3.0, 15.0, 0.3)) == pytest.approx(
        (1000 * 3 + 2000 * 15) / 1e6
    )
    assert budgets.hold_estimate(body, None) == 0


@pytest.mark.parametrize(
    ("spent", "held", "amount", "admitted"),
    [
        (0.0, 0.0, 0.2, True),
        (0.2, 0.2, 0.1, True),  # exactly fits
        (0.1, 0.2, 0.2, True),  # 0.1 + 0.2 + 0.2 = 0.5000000000000001: float sums tolerated
        (0.2, 0.2, 0.2, False),
        (0.4, 0.0, 5.0, True),  # alone: admitted while anything is left
        (0.4, 0.05, 5.0, False),
        (0.4, 0.3, 0.0, True),  # holds nothing (a GET): only a spent budget refuses it
        (0.5, 0.0, 0.0, False),  # spent
        (0.6, 0.0, 0.01, False),
    ],
)
def test_admits(spent: float, held: float, amount: float, admitted: bool) -> None:
    assert budgets.admits(0.5, spent, held, amount) is admitted


def test_the_ledger_keeps_holds_per_key_and_the_refusal_says_what_is_held() -> None:
    ledger, now = SpendLedger(), "2026-03-15T10:00:00Z"
    record = replace(KEY, budget=1.0, budget_period="day")
    ledger.hold(1, "a", 0.6)
    ledger.hold(2, "b", 5.0)
    assert (ledger.held(1), ledger.held(2), ledger.held(3)) == (0.6, 5.0, 0)
    assert budget_refusal(record, PLANS, ledger, now, 0.4) is None
    refusal = budget_refusal(record, PLANS, ledger, now, 0.5)
    assert refusal is not None and refusal.status_code == 429
    error = json.loads(refusal.content or b"")["error"]
    assert (error["code"], error["type"]) == ("insufficient_quota", "insufficient_quota")
    assert "$0.60 held by requests in progress" in error["message"]
    assert "up to $0.50" in error["message"] and "resets at" in error["message"]
    assert refusal.headers["x-should-retry"] == "false" and int(refusal.headers["retry-after"]) > 0
    ledger.release(1, "a")
    ledger.release(1, "a")  # twice is harmless
    assert ledger.held(1) == 0 and 1 not in ledger.holds
    assert budget_refusal(record, PLANS, ledger, now, 0.5) is None


def test_a_budgeted_key_is_refused_an_unpriced_model() -> None:
    plans = Plans(PriceTable(prices={"m": Price(1, 1, 1)}, tiers=PLANS.table.tiers))
    refusal = price_refusal(KEY, "M", plans)  # elite: $50 a month
    assert refusal is not None and refusal.status_code == 403
    assert json.loads(refusal.content or b"")["error"]["code"] == "model_not_priced"
    assert price_refusal(KEY, "m", plans) is None
    assert price_refusal(replace(KEY, tier="nobudget"), "M", plans) is None
    priced = Plans(replace(plans.table, default_price=Price(2, 2, 2)))
    assert price_refusal(KEY, "M", priced) is None

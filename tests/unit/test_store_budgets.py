"""Unit tests for schema v3 in apipod_proxy.storage.sqlite: the upgrade from v2 in place, key plan
settings, updates and rotation, spend, and the request log queries."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from apipod_proxy import clock, keys
from apipod_proxy.storage.migrations import MIGRATIONS, SCHEMA_VERSION
from apipod_proxy.storage.records import UsageCounts
from apipod_proxy.storage.sqlite import KeyStore, connect
from tests.support.harness import REQUEST_ROW_FIELDS as REQUEST_FIELDS

#: Written by the code of schema v2 (commit 0a65ba3): alice (id 1, rpm 30) with usage
#: on gemini-3-flash in 2026-11-01T10, and bob (id 2, tier trial, deactivated).
V2_FIXTURE = Path(__file__).parents[1] / "fixtures" / "schema_v2.db"
V2_ALICE_KEY = "apk_LFE4GFb1AMDLQ2l1erAxA_CWBsfgOoitexU13hqb4dw"


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "proxy.db")


def log_row(key_id: int, time: str, request_id: str, cost: float = 0.0) -> tuple:
    return (time, request_id, key_id, "m", "m", 200, 12, 11, 0, 5, cost, 0, False, False)


# --- the upgrade ---------------------------------------------------------------------


def test_a_v2_database_upgrades_in_place_keeping_keys_and_usage(tmp_path: Path) -> None:
    path = tmp_path / "proxy.db"
    shutil.copy(V2_FIXTURE, path)
    with sqlite3.connect(path) as old:
        assert old.execute("PRAGMA user_version").fetchone()[0] == 2
    store = KeyStore(path)
    alice = store.find(keys.hash_key(V2_ALICE_KEY))
    assert alice is not None
    assert (alice.id, alice.name, alice.rpm) == (1, "alice", 30)
    assert (alice.budget, alice.budget_period, alice.models) == (None, None, None)
    with sqlite3.connect(path) as upgraded:
        assert upgraded.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 3
    (usage,) = store.usage()
    assert (usage["requests"], usage["prompt_tokens"], usage["cost"]) == (3, 33, 0)
    rows = store.list_keys()
    assert [(r["name"], r["active"], r["spend_month"]) for r in rows] == [
        ("alice", True, 0),
        ("bob", False, 0),
    ]
    # The new columns and tables work on the upgraded file.
    store.update(1, {"budget": 5.0, "models": ("a",)})
    store.record_usage(
        {(1, "a", clock.hour_of(clock.now_text())): UsageCounts(1, 1, cost=0.5)},
        {},
        [log_row(1, clock.now_text(), "r1", 0.5)],
    )
    assert store.requests(1)[0]["request_id"] == "r1"
    assert store.find_by_id(1).models == ("a",)  # type: ignore[union-attr]


def test_a_v2_schema_made_by_its_own_migrations_upgrades_too(tmp_path: Path) -> None:
    path = tmp_path / "proxy.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:2]:
        migration(conn)
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    assert connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


# --- keys ----------------------------------------------------------------------------


def test_create_with_a_plan_and_update_it(store: KeyStore) -> None:
    _, record = store.create(
        "alice", "elite", None, plan={"budget": 20.0, "budget_period": "month", "models": ("a",)}
    )
    assert (record.budget, record.budget_period, record.models) == (20.0, "month", ("a",))
    updated = store.update(record.id, {"budget": None, "models": None, "rpm": 5, "name": "al"})
    assert updated is not None
    assert (updated.budget, updated.models, updated.rpm, updated.name) == (None, None, 5, "al")
    assert updated.budget_period == "month"
    assert store.update(999, {"name": "x"}) is None
    with pytest.raises(ValueError, match="cannot update key_hash"):
        store.update(record.id, {"key_hash": "x"})


def test_rotation_changes_the_secret_and_keeps_the_record(store: KeyStore) -> None:
    old, record = store.create("alice", "elite", None, rpm=9)
    store.record_usage({(record.id, "m", "2026-01-01T00"): UsageCounts(1, 1)}, {})
    rotated = store.rotate(record.id)
    assert rotated is not None
    new, after = rotated
    assert new != old and keys.looks_like_key(new)
    assert store.find(keys.hash_key(old)) is None
    assert store.find(keys.hash_key(new)) == after
    assert (after.id, after.rpm, after.prefix) == (record.id, 9, keys.display_prefix(new))
    assert store.usage()[0]["key_id"] == record.id
    assert store.rotate(999) is None


# --- spend and the request log -------------------------------------------------------


def test_record_usage_writes_spend_per_period_and_returns_the_current_spend(
    store: KeyStore,
) -> None:
    _, a = store.create("a", "t", None)
    _, b = store.create("b", "t", None)
    now = clock.now_text()
    hour = clock.hour_of(now)
    spend = store.record_usage(
        {
            (a.id, "m1", hour): UsageCounts(1, 1, cost=0.25),
            (a.id, "m2", hour): UsageCounts(1, 1, cost=0.5),
            (a.id, "m1", "2020-01-01T00"): UsageCounts(1, 1, cost=1.0),  # a late bucket
            (b.id, "m1", hour): UsageCounts(1, 1, cost=0.0),
        },
        {},
    )
    assert spend == {
        (a.id, "day", now[:10]): 0.75,
        (a.id, "month", now[:7]): 0.75,
        (a.id, "total", ""): 1.75,
    }
    spend = store.record_usage({(a.id, "m1", hour): UsageCounts(1, 1, cost=0.25)}, {})
    assert spend[(a.id, "day", now[:10])] == 1.0
    assert store.cost_between(a.id, now[:10], "9999") == 1.0
    assert store.cost_between(a.id, "2020-01-01", "2020-01-02") == 1.0
    (row,) = [r for r in store.list_keys(a.id)]
    assert (row["spend_day"], row["spend_month"], row["spend_total"]) == (1.0, 1.0, 2.0)


def test_request_log_is_newest_first_filtered_and_pruned(store: KeyStore) -> None:
    _, a = store.create("a", "t", None)
    _, b = store.create("b", "t", None)
    store.record_usage(
        {},
        {},
        [
            log_row(a.id, "2026-01-01T00:00:00Z", "old"),
            log_row(a.id, "2026-01-02T00:00:00Z", "a1", 0.5),
            log_row(b.id, "2026-01-02T00:00:01Z", "b1"),
            log_row(a.id, "2026-01-02T00:00:01Z", "a2"),
        ],
    )
    assert [r["request_id"] for r in store.requests()] == ["a2", "b1", "a1", "old"]
    assert [r["request_id"] for r in store.requests(a.id)] == ["a2", "a1", "old"]
    assert [r["request_id"] for r in store.requests(a.id, "2026-01-02T00:00:00Z", 1)] == ["a2"]
    first = store.requests(a.id, None, 10)[1]
    assert list(first) == REQUEST_FIELDS
    assert first == {
        "time": "2026-01-02T00:00:00Z",
        "request_id": "a1",
        "key_id": a.id,
        "model": "m",
        "routed_model": "m",
        "status": 200,
        "duration_ms": 12,
        "prompt_tokens": 11,
        "cached_tokens": 0,
        "completion_tokens": 5,
        "cost": 0.5,
        "reasoning_tokens": 0,
        "reasoning_estimated": False,
        "estimated": False,
    }
    assert store.prune_requests("2026-01-02T00:00:00Z") == 1
    assert [r["request_id"] for r in store.requests(a.id)] == ["a2", "a1"]


def test_daily_usage_groups_by_utc_day_and_model(store: KeyStore) -> None:
    _, a = store.create("a", "t", None)
    store.record_usage(
        {
            (a.id, "m", "2026-01-01T01"): UsageCounts(1, 1, prompt_tokens=1, cost=0.1),
            (a.id, "m", "2026-01-01T23"): UsageCounts(2, 2, prompt_tokens=2, cost=0.2),
            (a.id, "n", "2026-01-02T00"): UsageCounts(1, 1, completion_tokens=4),
            (a.id, "m", "2025-12-31T23"): UsageCounts(1, 1),
        },
        {},
    )
    assert store.daily_usage(a.id, "2026-01-01T12:00:00Z") == [
        {"date": "2026-01-01", "model": "m", "requests": 3, "prompt_tokens": 3,
         "completion_tokens": 0, "cost": pytest.approx(0.3), "reasoning_tokens": 0,
         "estimated_reasoning_tokens": 0, "estimated_requests": 0},
        {"date": "2026-01-02", "model": "n", "requests": 1, "prompt_tokens": 0,
         "completion_tokens": 4, "cost": 0, "reasoning_tokens": 0,
         "estimated_reasoning_tokens": 0, "estimated_requests": 0},
    ]  # fmt: skip


# --- m004: reasoning tokens and estimates ----------------------------------------------

#: Written by the code of schema v3 (commit d43ed4f): carol (id 1) with 2 requests on
#: claude-sonnet-4-5 in 2026-11-30T10 (50 prompt, 6 completion, 5 cached, $0.25) and one
#: request log row `req_v3` (25 prompt, 5 cached, 3 completion, $0.125).
V3_FIXTURE = Path(__file__).parents[1] / "fixtures" / "schema_v3.db"
V3_CAROL_KEY = "apk_XlO_R83rtjaYIn6NGinBuPLPfvD1SqNZ9OdyCHTs3GE"


def test_a_v3_database_upgrades_in_place_with_reasoning_and_estimates(tmp_path: Path) -> None:
    path = tmp_path / "proxy.db"
    shutil.copy(V3_FIXTURE, path)
    with sqlite3.connect(path) as old:
        assert old.execute("PRAGMA user_version").fetchone()[0] == 3
    store = KeyStore(path)
    assert store.find(keys.hash_key(V3_CAROL_KEY)) is not None
    (usage,) = store.usage()
    assert (usage["requests"], usage["prompt_tokens"], usage["cost"]) == (2, 50, 0.25)
    assert (usage["reasoning_tokens"], usage["estimated_reasoning_tokens"]) == (0, 0)
    assert usage["estimated_requests"] == 0
    (old_row,) = store.requests()
    assert old_row["request_id"] == "req_v3"
    assert (old_row["prompt_tokens"], old_row["cached_tokens"]) == (25, 5)
    assert (old_row["reasoning_tokens"], old_row["reasoning_estimated"]) == (0, False)
    assert old_row["estimated"] is False
    # The new columns take new counts on the upgraded file.
    hour = "2026-11-30T10"
    store.record_usage(
        {(1, "claude-sonnet-4-5", hour): UsageCounts(1, 1, estimated_reasoning_tokens=9,
                                                      estimated_requests=1)},
        {},
        [("2026-11-30T10:06:00Z", "req_v4", 1, "m", "m", 499, 5, 25, 5, 8, 0.1, 9, True, True)],
    )  # fmt: skip
    (usage,) = store.usage()
    assert (usage["requests"], usage["estimated_reasoning_tokens"]) == (3, 9)
    assert usage["estimated_requests"] == 1
    new_row = store.requests()[0]
    assert new_row["request_id"] == "req_v4"
    assert (new_row["reasoning_tokens"], new_row["reasoning_estimated"]) == (9, True)
    assert new_row["estimated"] is True
    with sqlite3.connect(path) as upgraded:
        assert upgraded.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 4

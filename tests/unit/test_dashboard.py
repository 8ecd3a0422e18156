"""Unit tests for apipod_proxy.endpoints.dashboard: /admin/stats, /admin/routes and
/admin/usage/series, through the admin handler the way the addon calls them."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from apipod_proxy import clock
from apipod_proxy.config import Settings
from apipod_proxy.endpoints import Endpoints
from apipod_proxy.endpoints.dashboard import bucket_labels, usage_series
from apipod_proxy.endpoints.live import LiveStats
from apipod_proxy.metrics import Metrics
from apipod_proxy.policy.routing import Alias, Router, RoutesFile, RouteTable
from apipod_proxy.storage.records import UsageCounts
from apipod_proxy.storage.sqlite import KeyStore
from apipod_proxy.upstream.quota import Cooldowns
from tests.support.endpoints import answer
from tests.support.gateway import ADMIN_SECRET, make_settings

SECRET = ADMIN_SECRET


def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, default_rpm=600, tier_rpm={"trial": 10})


#: Tests taking `store` run on SQLite and on PostgreSQL: the dashboard reads both alike.
BOTH_BACKENDS = True


@pytest.fixture
def api(tmp_path: Path, store: KeyStore) -> Endpoints:
    return Endpoints(settings(tmp_path), store, Metrics(), router=Router())


def get(api: Endpoints, path: str, secret: str | None = SECRET) -> tuple[int, Any]:
    headers = http.Headers([(b"x-admin-secret", secret.encode())] if secret else [])
    response = answer(api, tutils.treq(method=b"GET", path=path.encode(), headers=headers))
    return response.status_code, json.loads(response.content)


@pytest.mark.parametrize("path", ["/admin/stats", "/admin/routes", "/admin/usage/series"])
def test_endpoints_need_the_admin_secret(api: Endpoints, path: str) -> None:
    status, body = get(api, path, secret=None)
    assert status == 401
    assert body["error"]["code"] == "invalid_admin_secret"
    assert get(api, path, secret="wrong")[0] == 401


# --- /admin/stats --------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_live_rates_come_from_the_counters() -> None:
    metrics, clock = Metrics(), Clock()
    live = LiveStats(clock)
    first = live.snapshot(metrics)
    assert first["requests_per_second"] is None  # one sample: no rate yet
    for status in ["200"] * 16 + ["500"] * 2 + ["401"] * 2:
        metrics.requests.labels("gemini-3-flash", status).inc()
    metrics.tokens.labels("gemini-3-flash", "prompt").inc(300)
    metrics.active_streams.inc(3)
    clock.now += 10
    second = live.snapshot(metrics)
    assert second["requests_per_second"] == 2.0
    assert second["tokens_per_second"] == 30.0
    assert second["error_rate"] == 0.1
    assert second["client_error_rate"] == 0.1
    assert second["active_streams"] == 3
    assert second["totals"] == {
        "requests": 20,
        "client_errors": 2,
        "server_errors": 2,
        "tokens": 300,
    }


def test_live_rates_forget_old_samples() -> None:
    metrics, clock = Metrics(), Clock()
    live = LiveStats(clock)
    live.snapshot(metrics)
    metrics.requests.labels("m", "200").inc(1000)  # a burst long ago
    clock.now += 100
    live.snapshot(metrics)
    clock.now += 10
    metrics.requests.labels("m", "200").inc(10)
    assert live.snapshot(metrics)["requests_per_second"] == 1.0


def test_idle_proxy_has_zero_rates() -> None:
    metrics, clock = Metrics(), Clock()
    live = LiveStats(clock)
    live.snapshot(metrics)
    clock.now += 3
    snapshot = live.snapshot(metrics)
    assert snapshot["requests_per_second"] == 0.0
    assert snapshot["error_rate"] == 0.0


def test_the_dashboards_own_requests_are_not_traffic(api: Endpoints) -> None:
    """Each admin answer is counted by the addon's metrics like any request; the live
    figures leave them out, so a polling dashboard does not look like load."""
    assert api.metrics is not None
    for _ in range(5):
        status, _body = get(api, "/admin/stats")
        api.metrics.requests.labels("-", str(status)).inc()  # what the addon does
        status, _body = get(api, "/admin/keys", secret="wrong")
        api.metrics.requests.labels("-", str(status)).inc()
    api.metrics.requests.labels("gemini-3-flash", "200").inc(7)
    status, body = get(api, "/admin/stats")
    assert status == 200
    assert body["totals"]["requests"] == 7
    assert body["totals"]["client_errors"] == 0


# --- /admin/routes -------------------------------------------------------------------


def test_routes_shows_the_built_in_table(api: Endpoints) -> None:
    status, body = get(api, "/admin/routes")
    assert status == 200
    assert body["source"] == {"kind": "built-in"}
    assert body["aliases"] == {
        "cursor-pro-sonnet": {
            "targets": {"claude-sonnet-4-5": 20.0, "gemini-3-flash": 80.0},
            "sticky": False,
        }
    }
    assert body["renames"] == {}
    assert body["rate_limits"] == {"default_rpm": 600, "tier_rpm": {"trial": 10}}


def test_routes_shows_the_file_and_when_it_was_loaded(tmp_path: Path, store: KeyStore) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(
        '[aliases.fast]\ntargets = { "a" = 1, "b" = 3 }\nsticky = true\n[renames]\n"old" = "new"\n'
    )
    router = Router(RouteTable(aliases={"x": Alias.from_weights({"y": 1})}))
    routes = RoutesFile(str(path), router)
    routes.load()
    api = Endpoints(settings(tmp_path), store, Metrics(), router=router, routes=routes)
    status, body = get(api, "/admin/routes")
    assert status == 200
    assert body["aliases"] == {"fast": {"targets": {"a": 25.0, "b": 75.0}, "sticky": True}}
    assert body["renames"] == {"old": "new"}
    assert body["source"]["kind"] == "file"
    assert body["source"]["path"] == str(path)
    assert body["source"]["loaded_at"] == routes.loaded_at
    assert routes.loaded_at is not None
    assert routes.loaded_at[:10] == clock.now_text()[:10]


# --- /admin/usage/series -------------------------------------------------------------


def add_usage(store: KeyStore, key_id: int, model: str, hour: str, **counts: int) -> None:
    store.record_usage({(key_id, model, hour): UsageCounts(**counts)}, {})


def test_series_by_hour_and_day(api: Endpoints, store: KeyStore) -> None:
    _, alice = store.create("alice", "elite", None)
    _, bob = store.create("bob", "elite", None)
    now = clock.utcnow()
    this_hour = clock.format_time(now)[:13]
    two_hours_ago = clock.format_time(now - timedelta(hours=2))[:13]
    ten_days_ago = clock.format_time(now - timedelta(days=10))[:13]
    add_usage(store, alice.id, "gemini-3-flash", this_hour, requests=3, ok=2, server_errors=1,
              prompt_tokens=30, completion_tokens=12)  # fmt: skip
    add_usage(store, bob.id, "claude-sonnet-4-5", two_hours_ago, requests=5, ok=4,
              client_errors=1, prompt_tokens=50, completion_tokens=20)  # fmt: skip
    add_usage(store, bob.id, "gemini-3-flash", ten_days_ago, requests=7, ok=7)

    status, hourly = get(api, "/admin/usage/series?bucket=hour")
    assert status == 200
    assert len(hourly["buckets"]) == 24
    assert hourly["buckets"][-1] == this_hour
    none = {"reasoning_tokens": 0, "estimated_reasoning_tokens": 0, "estimated_requests": 0}
    assert hourly["data"] == [
        {"bucket": two_hours_ago, "model": "claude-sonnet-4-5", "requests": 5, "errors": 1,
         "server_errors": 0, "prompt_tokens": 50, "completion_tokens": 20, "cost": 0.0, **none},
        {"bucket": this_hour, "model": "gemini-3-flash", "requests": 3, "errors": 1,
         "server_errors": 1, "prompt_tokens": 30, "completion_tokens": 12, "cost": 0.0, **none},
    ]  # fmt: skip
    assert [k["name"] for k in hourly["top_keys"]] == ["bob", "alice"]

    status, daily = get(api, "/admin/usage/series?bucket=day")
    assert status == 200
    assert len(daily["buckets"]) == 30
    assert daily["buckets"][-1] == this_hour[:10]
    assert sum(row["requests"] for row in daily["data"]) == 15
    assert {row["bucket"] for row in daily["data"]} <= set(daily["buckets"])
    assert daily["top_keys"][0] == {
        "key_id": bob.id, "name": "bob", "prefix": bob.prefix, "requests": 12,
        "tokens": 70, "cost": 0.0,
    }  # fmt: skip


def test_series_sums_the_cost_and_ranks_top_keys_by_it(store: KeyStore) -> None:
    _, alice = store.create("alice", "elite", None)
    _, bob = store.create("bob", "elite", None)
    hour = clock.now_text()[:13]
    add_usage(store, alice.id, "m", hour, requests=100)
    add_usage(store, bob.id, "m", hour, requests=1)
    conn = store.connection()
    conn.execute("UPDATE usage SET cost = 0.25 WHERE key_id = ?", (bob.id,))
    answer = usage_series(store, "hour", hour)
    assert answer["data"][0]["cost"] == 0.25
    assert [k["name"] for k in answer["top_keys"]] == ["bob", "alice"]  # by spend first


def test_top_keys_are_ten(api: Endpoints, store: KeyStore) -> None:
    hour = clock.now_text()[:13]
    for n in range(12):
        _, record = store.create(f"k{n}", "elite", None)
        add_usage(store, record.id, "m", hour, requests=n + 1)
    _, body = get(api, "/admin/usage/series")
    assert [k["name"] for k in body["top_keys"]] == [f"k{n}" for n in range(11, 1, -1)]


@pytest.mark.parametrize(
    "query", ["bucket=week", "bucket=", "since=yesterday", "since=-1h", "since=" + "9" * 40]
)
def test_series_refuses_bad_parameters(api: Endpoints, query: str) -> None:
    status, body = get(api, f"/admin/usage/series?{query}")
    assert status == 400
    assert body["error"]["code"] == "invalid_field"


def test_bucket_labels_are_capped() -> None:
    now = clock.utcnow()
    assert len(bucket_labels("hour", now - timedelta(days=3650), now)) == 24 * 31
    assert bucket_labels("day", now, now) == [clock.format_time(now)[:10]]


def test_stats_lists_models_in_quota_cooldown(api: Endpoints) -> None:
    assert get(api, "/admin/stats")[1]["cooldowns"] == []
    api.cooldowns = Cooldowns(clock=lambda: 1_800_000_000.0)
    api.cooldowns.mark("gemini-3-pro-high", 1_800_000_120.0)
    api.cooldowns.mark("claude-sonnet-4-5", 1_800_000_060.0)
    status, body = get(api, "/admin/stats")
    assert status == 200
    assert body["cooldowns"] == [
        {"model": "claude-sonnet-4-5", "until": "2027-01-15T08:01:00Z", "seconds_left": 60},
        {"model": "gemini-3-pro-high", "until": "2027-01-15T08:02:00Z", "seconds_left": 120},
    ]

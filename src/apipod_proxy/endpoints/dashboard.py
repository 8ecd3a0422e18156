"""The JSON endpoints behind the operator dashboard, all behind the admin secret.

GET /admin/stats          live figures from the in-process metrics: requests per second,
                          error rates, active streams (this process only), and models
                          in upstream quota cooldown
GET /admin/routes         the routing table in force and where it came from
GET /admin/usage/series   usage by time bucket and routed model, and the top keys by
                          spend, for the dashboard's charts

They only read: the metrics' current values (never the text exposition), the router's
current table and the usage table. None of them runs on the request path.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from .. import clock
from ..errors import error_response, json_response
from ..metrics import Metrics

if TYPE_CHECKING:
    from ..storage.sqlite import KeyStore
    from .admin import AdminApi

#: Rates are averaged over the samples of about this many seconds.
RATE_WINDOW = 15.0
#: Bucket label lengths in the usage table's `hour` column (`YYYY-MM-DDTHH`).
BUCKETS = {"hour": 13, "day": 10}
DEFAULT_SINCE = {"hour": "24h", "day": "30d"}
#: At most this many buckets per answer: a year by day, a month by hour.
MAX_BUCKETS = {"hour": 24 * 31, "day": 366}
TOP_KEYS = 10


@dataclasses.dataclass(frozen=True, slots=True)
class Totals:
    """Counter totals since the process started (API requests only, in snapshots)."""

    requests: float
    client_errors: float
    server_errors: float
    tokens: float


def _totals(metrics: Metrics) -> Totals:
    requests = client = server = tokens = 0.0
    for family in metrics.requests.collect():
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            requests += sample.value
            status = sample.labels.get("status", "")
            if status.startswith("4"):
                client += sample.value
            elif status.startswith("5"):
                server += sample.value
    for family in metrics.tokens.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                tokens += sample.value
    return Totals(requests, client, server, tokens)


def _gauge(gauge: Any) -> float:
    return sum(s.value for family in gauge.collect() for s in family.samples)


class LiveStats:
    """Turns counter totals into rates from the samples the dashboard's polls take.

    Sampling happens only when someone asks, so an unwatched proxy does no work.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._samples: deque[tuple[float, Totals]] = deque()
        self._lock = threading.Lock()
        self._started = clock()
        # Answers to /health, /metrics, /admin/* and the pages, which the metrics count
        # like any request: the live figures subtract them, so that a dashboard polling
        # the proxy does not show up as traffic.
        self._internal = [0, 0, 0]  # requests, 4xx, 5xx

    def count_internal(self, status: int) -> None:
        with self._lock:  # handlers run on several DB threads
            internal = self._internal
            internal[0] += 1
            if 400 <= status < 500:
                internal[1] += 1
            elif status >= 500:
                internal[2] += 1

    def _api_totals(self, metrics: Metrics) -> Totals:
        total = _totals(metrics)
        with self._lock:
            requests, client, server = self._internal
        return Totals(
            max(total.requests - requests, 0),
            max(total.client_errors - client, 0),
            max(total.server_errors - server, 0),
            total.tokens,
        )

    def snapshot(self, metrics: Metrics) -> dict[str, Any]:
        now, totals = self._clock(), self._api_totals(metrics)
        with self._lock:
            samples = self._samples
            samples.append((now, totals))
            # The base is the oldest sample inside the window, or else the one before now.
            while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW:
                samples.popleft()
            then, before = samples[0]
        elapsed = now - then
        requests = totals.requests - before.requests
        rates: dict[str, float | None] = {
            "requests_per_second": None,
            "tokens_per_second": None,
            "error_rate": None,
            "client_error_rate": None,
        }
        if elapsed >= 0.5:
            rates["requests_per_second"] = round(requests / elapsed, 3)
            rates["tokens_per_second"] = round((totals.tokens - before.tokens) / elapsed, 1)
            if requests > 0:
                server = totals.server_errors - before.server_errors
                client = totals.client_errors - before.client_errors
                rates["error_rate"] = round(server / requests, 4)
                rates["client_error_rate"] = round(client / requests, 4)
            else:
                rates["error_rate"] = rates["client_error_rate"] = 0.0
        return {
            "window_seconds": round(elapsed, 1),
            **rates,
            "active_streams": int(_gauge(metrics.active_streams)),
            "uptime_seconds": round(now - self._started),
            "totals": {
                "requests": int(totals.requests),
                "client_errors": int(totals.client_errors),
                "server_errors": int(totals.server_errors),
                "tokens": int(totals.tokens),
            },
            "time": clock.now_text(),
        }


def stats(api: AdminApi, request: http.Request) -> http.Response:
    # Without metrics (an AdminApi built bare, in tests) every figure is zero.
    snapshot = api.live.snapshot(api.metrics or Metrics())
    cooling = api.cooldowns.listing() if api.cooldowns is not None else []
    return json_response(200, {**snapshot, "cooldowns": cooling})


# --- routes ------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def route_table(api: AdminApi) -> dict[str, Any]:
    """The table in force: aliases with their weights in percent, renames, whatever else
    the table holds, and the prices and tiers."""
    table = api.router.table if api.router is not None else None
    answer: dict[str, Any] = {"aliases": {}, "renames": {}}
    if table is not None:
        for name, alias in table.aliases.items():
            shares, previous = {}, 0.0
            for target, cumulative in zip(alias.targets, alias.cumulative, strict=True):
                shares[target] = round((cumulative - previous) * 100, 2)
                previous = cumulative
            answer["aliases"][name] = {"targets": shares, "sticky": alias.sticky}
        answer["renames"] = dict(table.renames)
        for field in dataclasses.fields(table):
            if field.name not in answer:
                answer[field.name] = _jsonable(getattr(table, field.name))
    # Prices and tiers are read from the same file into the plans.
    if api.plans is not None:
        answer.update(_jsonable(api.plans.table))
    routes = api.routes
    if routes is None:
        answer["source"] = {"kind": "built-in"}
    else:
        answer["source"] = {
            "kind": "file",
            "path": routes.path,
            "loaded_at": routes.loaded_at,
        }
    answer["rate_limits"] = {
        "default_rpm": api.settings.default_rpm,
        "tier_rpm": dict(api.settings.tier_rpm),
    }
    return answer


def routes(api: AdminApi, request: http.Request) -> http.Response:
    return json_response(200, route_table(api))


# --- usage series ------------------------------------------------------------------


def bucket_labels(bucket: str, start: datetime, now: datetime) -> list[str]:
    """Every bucket label from the one holding `start` to the one holding `now`."""
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    moment = start.replace(minute=0, second=0, microsecond=0)
    if bucket == "day":
        moment = moment.replace(hour=0)
    labels = []
    while moment <= now and len(labels) < MAX_BUCKETS[bucket]:
        labels.append(clock.format_time(moment)[: BUCKETS[bucket]])
        moment += step
    return labels


def usage_series(store: KeyStore, bucket: str, start: str) -> dict[str, Any]:
    """Usage summed per bucket and routed model from the bucket holding `start`, and
    the keys that spent most (then used most) over the same span."""
    width, first = BUCKETS[bucket], start[: BUCKETS[bucket]]
    return {
        "data": [_rounded(row) for row in store.usage_series(width, first)],
        "top_keys": [_rounded(row) for row in store.top_keys(first, TOP_KEYS)],
    }


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    row["cost"] = round(float(row["cost"]), 6)
    return row


def series(api: AdminApi, request: http.Request) -> http.Response:
    bucket = request.query.get("bucket", "hour")
    if bucket not in BUCKETS:
        return error_response(400, "bucket must be hour or day", "invalid_field")
    since = request.query.get("since") or DEFAULT_SINCE[bucket]
    try:
        seconds = clock.parse_duration(since, "since")
    except ValueError:
        return error_response(400, "since must look like 90m, 24h or 30d", "invalid_field")
    now = clock.utcnow()
    # "24h" by hour is the current hour and the 23 before it; "30d" by day, 30 days.
    step = 3600 if bucket == "hour" else 86400
    start = now - timedelta(seconds=max(seconds - step, 0))
    labels = bucket_labels(bucket, start, now)
    answer = usage_series(api.store, bucket, labels[0])
    return json_response(
        200,
        {"bucket": bucket, "since": since, "buckets": labels, "now": clock.format_time(now)}
        | answer,
    )


#: path -> (method, handler, needs the admin secret); merged into admin.ROUTES.
ROUTES: dict[str, tuple[str, Callable[[AdminApi, http.Request], http.Response], bool]] = {
    "/admin/stats": ("GET", stats, True),
    "/admin/routes": ("GET", routes, True),
    "/admin/usage/series": ("GET", series, True),
}

"""The JSON endpoints behind the operator dashboard, all behind the admin secret.

GET /admin/stats          live figures from the in-process metrics: requests per second,
                          error rates, active streams (this process only), and models
                          in upstream quota cooldown
GET /admin/routes         the routing table in force and where it came from
GET /admin/usage/series   usage by time bucket and routed model, and the top keys by
                          spend, for the dashboard's charts

They only read: the metrics' current values (never the text exposition), the router's
current table and the usage table. None of them runs on the request path. The
endpoint table (`endpoints/__init__.py`) lists them and checks the secret first; the
live rates are `live.py`'s.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from .. import clock
from ..errors import error_response, json_response
from ..metrics import Metrics

if TYPE_CHECKING:
    from ..storage.sqlite import KeyStore
    from .context import Caller, Context

#: Bucket label lengths in the usage table's `hour` column (`YYYY-MM-DDTHH`).
BUCKETS = {"hour": 13, "day": 10}
DEFAULT_SINCE = {"hour": "24h", "day": "30d"}
#: At most this many buckets per answer: a year by day, a month by hour.
MAX_BUCKETS = {"hour": 24 * 31, "day": 366}
TOP_KEYS = 10


def stats(api: Context, request: http.Request, caller: Caller) -> http.Response:
    # Without metrics (a context built bare, in tests) every figure is zero.
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


def route_table(api: Context) -> dict[str, Any]:
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


def routes(api: Context, request: http.Request, caller: Caller) -> http.Response:
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


def series(api: Context, request: http.Request, caller: Caller) -> http.Response:
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

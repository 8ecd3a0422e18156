"""What the storage layer stores and hands out: key records, usage counts, spend rows,
calendar periods and the field lists of every report. No SQL, and nothing from policy/,
endpoints/, pipeline/ or upstream/: anyone may import it for the types.

The SQL is in sqlite.py (written once, in SQLite's spelling) and postgres.py (its
rewrites); the schema is in migrations.py.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The calendar periods spend is kept for (a budget runs over one of them), in UTC.
PERIODS = ("day", "month", "total")


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One customer key as stored: everything but the key itself."""

    id: int
    name: str
    tier: str
    active: bool
    created_at: str
    expires_at: str | None
    prefix: str
    rpm: int | None = None
    # The key's own plan settings; None: its tier's apply (see budgets.py).
    budget: float | None = None
    budget_period: str | None = None
    models: tuple[str, ...] | None = None

    def created_view(self, api_key: str) -> dict[str, object]:
        """What the admin endpoint and the CLI show once, right after creation."""
        return {
            "api_key": api_key,
            "id": self.id,
            "name": self.name,
            "tier": self.tier,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }

    def is_usable(self, now: str) -> bool:
        """Active and not expired; `now` is a `clock.format_time` string."""
        return self.active and (self.expires_at is None or self.expires_at > now)


@dataclass(slots=True)
class UsageCounts:
    """What one flush adds to one (key, model, hour) row."""

    requests: int = 0
    ok: int = 0
    client_errors: int = 0
    server_errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0
    reasoning_tokens: int = 0
    estimated_reasoning_tokens: int = 0
    estimated_requests: int = 0


#: Spend per (key_id, period, start), as kept in the `spend` table.
SpendRows = dict[tuple[int, str, str], float]

#: A request log row, in `request_log`'s column order (see requestlog.py).
LogRow = tuple[
    str, str, int, str | None, str | None, int, int, int, int, int, float, int, bool, bool
]


def period_start(period: str, now: str) -> str:
    """The `spend` table's start of the period holding `now` (a `clock.format_time`, or a
    usage hour): the day `YYYY-MM-DD`, the month `YYYY-MM`, or '' for all time. The one
    definition of a spend slot, for the table and for budgets.SpendLedger alike."""
    if period == "day":
        return now[:10]
    if period == "month":
        return now[:7]
    return ""


#: Columns `update_key` may set; `expires_at` is a `clock.format_time` string or None.
UPDATABLE = ("name", "tier", "rpm", "budget", "budget_period", "models", "expires_at")

#: The fields of `list_keys` and `usage_report` rows, in order: a stable contract with
#: operators' scripts (`keys.py ... --json`, GET /admin/keys and /admin/usage).
#: `errors` counts the `requests` answered 4xx or 5xx (by the upstream, or by the proxy
#: in its place: 502, 504), so `requests - errors` were answered successfully.
KEY_FIELDS = [
    "id",
    "name",
    "tier",
    "active",
    "created_at",
    "expires_at",
    "prefix",
    "rpm",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "last_used_at",
    # What applies to the key (its own setting, else its tier's) and its spend in the
    # current period, in USD: filled in by budgets.key_objects.
    "budget",
    "budget_period",
    "spend",
    "models",
]

USAGE_FIELDS = [
    "key_id",
    "name",
    "model",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    # Reasoning tokens the upstream reported (part of completion_tokens), those estimated
    # from the thinking delivered (not part of it), and the requests whose counts are
    # estimates (their stream ended before its usage): see metering.py.
    "reasoning_tokens",
    "estimated_reasoning_tokens",
    "estimated_requests",
]

#: What `list_keys` reads besides the KEY_FIELDS up to `last_used_at`: the key's own plan
#: settings and its spend in today's, this month's and all time's periods.
PLAN_FIELDS = ["own_budget", "own_budget_period", "own_models", "spend_day", "spend_month",
               "spend_total"]  # fmt: skip

#: The fields of request log rows (`keys.py requests --json`, GET /admin/requests).
REQUEST_FIELDS = [
    "time",
    "request_id",
    "key_id",
    "model",
    "routed_model",
    "status",
    "duration_ms",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "cost",
    # Reasoning tokens (reported by the upstream, or estimated when reasoning_estimated),
    # and whether the prompt or completion is an estimate (the stream ended before its
    # usage): see metering.py.
    "reasoning_tokens",
    "reasoning_estimated",
    "estimated",
]

#: The fields of `daily_usage` rows (`/account`'s `usage`).
DAILY_FIELDS = ["date", "model", "requests", "prompt_tokens", "completion_tokens", "cost",
                "reasoning_tokens", "estimated_reasoning_tokens", "estimated_requests"]  # fmt: skip

#: The fields of `usage_series` rows: usage per time bucket and routed model (the
#: dashboard's charts, GET /admin/usage/series).
SERIES_FIELDS = [
    "bucket",
    "model",
    "requests",
    "errors",
    "server_errors",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "reasoning_tokens",
    "estimated_reasoning_tokens",
    "estimated_requests",
]
#: The fields of `top_keys` rows: the keys that spent most over a span.
TOP_FIELDS = ["key_id", "name", "prefix", "requests", "tokens", "cost"]

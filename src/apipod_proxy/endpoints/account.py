"""What a customer sees with their own key: `GET /account` and the billing endpoints.

Chat front ends (one-api and new-api answer the same) read
`/v1/dashboard/billing/subscription` and `/v1/dashboard/billing/usage` to show a
balance. The proxy answers all of these itself, for the calling key only; they are
never forwarded. Handlers of the endpoint table (`endpoints/__init__.py`): they run on
the database threads (usage is read from the database) under its guard, after the usual
key check, so a revoked or expired key gets the usual 403.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from mitmproxy import http

from .. import clock
from ..errors import error_response, json_response
from ..policy.budgets import budget_of, models_of, resets_at, rpm_of
from ..policy.pricing import DEFAULT_PERIOD
from .context import key_record

if TYPE_CHECKING:
    from .context import Caller, Context

#: Days of usage in `/account`.
USAGE_DAYS = 30
#: The limit reported for a key without a budget (what one-api and new-api report).
UNLIMITED_USD = 100_000_000.0


def account(context: Context, request: http.Request, caller: Caller) -> http.Response:
    """`GET /account`: what applies to the key, its spend and its daily usage."""
    record, plans = key_record(caller), context.plans
    now = clock.now_text()
    budget, period = budget_of(record, plans)
    models = models_of(record, plans)
    shown = period or DEFAULT_PERIOD  # without a budget: this month's spend
    reset = resets_at(shown, clock.utcnow())
    return json_response(
        200,
        {
            "id": record.id,
            "name": record.name,
            "tier": record.tier,
            "expires_at": record.expires_at,
            "rpm": rpm_of(record, plans, context.settings),
            "models": None if models is None else list(models),
            "budget": budget,
            "budget_period": period,
            "spend": round(context.ledger.spent(record.id, shown, now), 10),
            "resets_at": None if reset is None else clock.format_time(reset),
            "usage": context.store.daily_usage(record.id, clock.ago((USAGE_DAYS - 1) * 86400)),
        },
    )


def subscription(context: Context, request: http.Request, caller: Caller) -> http.Response:
    """`GET /v1/dashboard/billing/subscription`: the budget as OpenAI's billing limits."""
    record = key_record(caller)
    budget, _ = budget_of(record, context.plans)
    limit = UNLIMITED_USD if budget is None else budget
    access_until = 0
    if record.expires_at is not None:
        moment = datetime.strptime(record.expires_at, "%Y-%m-%dT%H:%M:%SZ")
        access_until = int(moment.replace(tzinfo=UTC).timestamp())
    return json_response(
        200,
        {
            "object": "billing_subscription",
            "hard_limit_usd": limit,
            "soft_limit_usd": limit,
            "system_hard_limit_usd": limit,
            "has_payment_method": True,
            "access_until": access_until,
        },
    )


def usage(context: Context, request: http.Request, caller: Caller) -> http.Response:
    """`GET /v1/dashboard/billing/usage`: the spend between two dates, in cents."""
    record = key_record(caller)
    try:
        start, end = _date_range(request.query.get("start_date"), request.query.get("end_date"))
    except ValueError as exc:
        return error_response(400, str(exc), "invalid_date")
    cost = context.store.cost_between(record.id, start.isoformat(), end.isoformat())
    return json_response(200, {"object": "list", "total_usage": round(cost * 100, 8)})


def _date_range(start: str | None, end: str | None) -> tuple[date, date]:
    """[start, end) as dates; by default this month so far, today included."""
    today = clock.utcnow().date()
    try:
        first = date.fromisoformat(start) if start else today.replace(day=1)
        last = date.fromisoformat(end) if end else today + timedelta(days=1)
    except ValueError:
        raise ValueError("start_date and end_date must be dates like 2026-01-31") from None
    if last < first:
        raise ValueError("end_date must not be before start_date")
    return first, last

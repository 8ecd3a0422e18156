"""What a customer sees with their own key: `GET /account` and the billing endpoints.

Chat front ends (one-api and new-api answer the same) read
`/v1/dashboard/billing/subscription` and `/v1/dashboard/billing/usage` to show a
balance. The proxy answers all of these itself, for the calling key only; they are
never forwarded. They run on the addon's database threads (usage is read from SQLite),
after the usual key check, so a revoked or expired key gets the usual 403.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from mitmproxy import http

from .. import clock
from ..config import Settings
from ..errors import error_response, json_response
from ..logs import printable
from ..policy.budgets import SpendLedger, budget_of, models_of, resets_at, rpm_of
from ..policy.pricing import DEFAULT_PERIOD, Plans
from ..storage.backend import DB_ERRORS, error_text
from ..storage.records import KeyRecord
from ..storage.sqlite import KeyStore

log = logging.getLogger("apipod")

ACCOUNT_PATH = "/account"
SUBSCRIPTION_PATHS = ("/v1/dashboard/billing/subscription", "/dashboard/billing/subscription")
USAGE_PATHS = ("/v1/dashboard/billing/usage", "/dashboard/billing/usage")
PATHS = frozenset((ACCOUNT_PATH, *SUBSCRIPTION_PATHS, *USAGE_PATHS))
#: Days of usage in `/account`.
USAGE_DAYS = 30
#: The limit reported for a key without a budget (what one-api and new-api report).
UNLIMITED_USD = 100_000_000.0


def is_account_path(path: str) -> bool:
    return path in PATHS


@dataclass
class Account:
    settings: Settings
    store: KeyStore
    plans: Plans
    ledger: SpendLedger

    def answer(self, request: http.Request, record: KeyRecord) -> http.Response:
        """The answer to one of PATHS for the key `record`. Blocking (database work).

        Never raises: an exception in the request hook would let mitmproxy forward the
        request upstream.
        """
        try:
            return self._answer(request, record)
        except DB_ERRORS as exc:
            log.error("database error on /account: %s", error_text(exc))
            return error_response(503, "The key database is unavailable", "database_unavailable")
        except Exception:
            log.exception("internal error on %s", printable(request.path))
            return error_response(500, "Internal proxy error", "internal_error")

    def _answer(self, request: http.Request, record: KeyRecord) -> http.Response:
        path = request.path.partition("?")[0]
        if request.method != "GET":
            return error_response(
                405, f"{path} only accepts GET", "method_not_allowed", {"allow": "GET"}
            )
        if path == ACCOUNT_PATH:
            return json_response(200, self.account(record))
        if path in SUBSCRIPTION_PATHS:
            return json_response(200, self.subscription(record))
        try:
            start, end = _date_range(request.query.get("start_date"), request.query.get("end_date"))
        except ValueError as exc:
            return error_response(400, str(exc), "invalid_date")
        cost = self.store.cost_between(record.id, start.isoformat(), end.isoformat())
        return json_response(200, {"object": "list", "total_usage": round(cost * 100, 8)})

    def account(self, record: KeyRecord) -> dict[str, object]:
        now = clock.now_text()
        budget, period = budget_of(record, self.plans)
        models = models_of(record, self.plans)
        shown = period or DEFAULT_PERIOD  # without a budget: this month's spend
        reset = resets_at(shown, clock.utcnow())
        return {
            "id": record.id,
            "name": record.name,
            "tier": record.tier,
            "expires_at": record.expires_at,
            "rpm": rpm_of(record, self.plans, self.settings),
            "models": None if models is None else list(models),
            "budget": budget,
            "budget_period": period,
            "spend": round(self.ledger.spent(record.id, shown, now), 10),
            "resets_at": None if reset is None else clock.format_time(reset),
            "usage": self.store.daily_usage(record.id, clock.ago((USAGE_DAYS - 1) * 86400)),
        }

    def subscription(self, record: KeyRecord) -> dict[str, object]:
        budget, _ = budget_of(record, self.plans)
        limit = UNLIMITED_USD if budget is None else budget
        access_until = 0
        if record.expires_at is not None:
            moment = datetime.strptime(record.expires_at, "%Y-%m-%dT%H:%M:%SZ")
            access_until = int(moment.replace(tzinfo=UTC).timestamp())
        return {
            "object": "billing_subscription",
            "hard_limit_usd": limit,
            "soft_limit_usd": limit,
            "system_hard_limit_usd": limit,
            "has_payment_method": True,
            "access_until": access_until,
        }


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

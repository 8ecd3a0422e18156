"""Budgets and model allow-lists: what a key may spend and use, checked from memory.

What applies to a key: its own `budget`, `budget_period` and `models` when set, else
its tier's from the routing file's `[tiers]` table (pricing.py). A budget without a
period anywhere is monthly. Requests per minute: the key's own `rpm`, then the tier
table's, then `TIER_RPM`, then `DEFAULT_RPM`.

Periods are calendar periods in UTC: a day starts at midnight, a month on the 1st,
and "total" never resets. Spend is kept per key for all three periods at once, so a
key's period can change at any time.

The admission check reads a `SpendLedger` in memory: the spend the database held at
the last usage flush (every proxy process's, re-read with each flush) plus this
process's requests since. No request waits for the database.

Holds. Admission also reserves each request's estimated cost (`hold_estimate`): the
prompt at one token per `CHARS_PER_TOKEN` characters of the request's text (the
strings under messages, system, tools, prompt, input and instructions; inline data left
out) at the input price, plus `max_tokens` (`max_completion_tokens`; without either
`DEFAULT_MAX_TOKENS`) at the output price of the routed model. A request is admitted
while spend + holds in progress + its hold fit in the budget (`admits`); one whose
hold alone does not fit is admitted only when nothing else of the key is in
progress and the budget is not spent, so a small budget is never locked out by a
large `max_tokens`. When the request ends its hold is replaced by its real cost (an
upstream failure's is 0). So concurrent requests overshoot a budget by at most what
their real costs exceed their holds (a denser prompt, output past `max_tokens`),
plus, for a request admitted alone, its cost beyond what was left.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from .. import clock, keys
from ..config import Settings
from ..errors import Refusal
from ..storage.records import KEY_FIELDS, KeyRecord, SpendRows, period_start
from ..translate import DEFAULT_MAX_TOKENS
from .pricing import DEFAULT_PERIOD, PER_TOKENS, PERIODS, Plans, Price, money
from .routing import DEFAULT_ROUTE

#: Largest budget accepted, in USD (enough for any plan, small enough to print).
MAX_BUDGET = 1e9
MAX_MODELS = 200
MAX_MODEL_NAME = 200
#: The prompt estimate of a hold: characters of the request's text per token.
CHARS_PER_TOKEN = 4
#: A hold's output without `max_tokens`: what the translation asks the upstream for.
HOLD_DEFAULT_MAX_TOKENS = DEFAULT_MAX_TOKENS
#: Spend + holds may exceed the budget by this much (float sums), in USD.
EPSILON = 1e-9
#: Fields of a request body whose strings are prompt text, at any depth.
_PROMPT_FIELDS = ("messages", "system", "tools", "prompt", "input", "instructions")


# --- what applies to a key -----------------------------------------------------------


def budget_of(record: KeyRecord, plans: Plans) -> tuple[float | None, str | None]:
    """The key's budget in USD (None: unlimited) and its period (None without budget)."""
    tier = plans.tier(record.tier)
    budget = record.budget if record.budget is not None else tier and tier.budget
    period = record.budget_period or (tier and tier.budget_period) or None
    if budget is None:
        return None, period
    return budget, period or DEFAULT_PERIOD


def models_of(record: KeyRecord, plans: Plans) -> tuple[str, ...] | None:
    """The model names the key may ask for; None: every model."""
    if record.models is not None:
        return record.models
    tier = plans.tier(record.tier)
    return tier.models if tier is not None else None


def rpm_of(record: KeyRecord, plans: Plans, settings: Settings) -> int:
    """Key, then the tier table, then TIER_RPM, then DEFAULT_RPM; 0 is unlimited."""
    tier = plans.tier(record.tier) if record.rpm is None else None
    if tier is not None and tier.rpm is not None:
        return tier.rpm
    return settings.rpm_for(record.tier, record.rpm)


# --- calendar periods ----------------------------------------------------------------


def resets_at(period: str | None, now: datetime) -> datetime | None:
    """When the period holding `now` ends (UTC midnight, the 1st); None for "total"."""
    if period == "day":
        return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    if period == "month":
        year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
        return datetime(year, month, 1, tzinfo=UTC)
    return None


# --- the spend ledger ----------------------------------------------------------------


class SpendLedger:
    """Spend per (key, period, start): the database's as of the last flush, plus ours since.

    `pending` is this process's spend not yet handed to a flush; `flushing` is what a
    running flush writes. When the flush commits, it returns the database's spend,
    which then includes `flushing`.

    With REDIS_URL, `shared` holds every replica's spend as Redis last answered it
    (policy/shared.SharedSpend), which is at most one request old rather than one flush;
    a key's spend is the larger of the two views.
    """

    def __init__(self) -> None:
        self.base: SpendRows = {}
        self.pending: SpendRows = {}
        self.flushing: SpendRows = {}
        self.shared: SpendRows = {}
        #: This process's holds in progress: key id -> hold id -> USD.
        self.holds: dict[int, dict[str, float]] = {}

    def held(self, key_id: int) -> float:
        """USD held by the key's requests in progress in this process."""
        return sum(self.holds.get(key_id, {}).values())

    def hold(self, key_id: int, hold_id: str, amount: float) -> None:
        self.holds.setdefault(key_id, {})[hold_id] = amount

    def release(self, key_id: int, hold_id: str) -> None:
        held = self.holds.get(key_id)
        if held is not None:
            held.pop(hold_id, None)
            if not held:
                del self.holds[key_id]

    def add(self, key_id: int, cost: float, now: str) -> SpendRows:
        """Count `cost`; return what was added per slot (for SharedSpend)."""
        if cost <= 0:
            return {}
        pending, added = self.pending, {}
        for period in PERIODS:
            slot = (key_id, period, period_start(period, now))
            pending[slot] = pending.get(slot, 0.0) + cost
            added[slot] = cost
        return added

    def spent(self, key_id: int, period: str, now: str) -> float:
        slot = (key_id, period, period_start(period, now))
        local = (
            self.base.get(slot, 0.0) + self.pending.get(slot, 0.0) + self.flushing.get(slot, 0.0)
        )
        return max(local, self.shared.get(slot, 0.0))

    def note_shared(self, totals: SpendRows) -> None:
        """Every replica's spend per slot, as Redis answered it (never moves back)."""
        shared = self.shared
        for slot, total in totals.items():
            if total > shared.get(slot, 0.0):
                shared[slot] = total

    def take(self) -> None:
        """A flush starts: what is pending now goes with it."""
        _merge(self.flushing, self.pending)
        self.pending = {}

    def settle(self, base: SpendRows) -> None:
        """The flush committed; `base` is the database's spend, ours included."""
        self.base, self.flushing = base, {}
        # Shared totals of past periods are no longer read: keep the current ones only.
        now = clock.now_text()
        self.shared = {
            slot: total
            for slot, total in self.shared.items()
            if slot[2] == period_start(slot[1], now)
        }

    def give_back(self) -> None:
        """The flush failed: what it carried is pending again."""
        _merge(self.pending, self.flushing)
        self.flushing = {}


def _merge(into: SpendRows, rows: SpendRows) -> None:
    for slot, amount in rows.items():
        into[slot] = into.get(slot, 0.0) + amount


# --- the checks before forwarding ----------------------------------------------------


def model_refusal(
    record: KeyRecord, model: str, plans: Plans, via: str | None = None
) -> Refusal | None:
    """403 `model_not_allowed` unless `model` (as the client sent it) is on the list, or
    the routing pattern that matched it (`via`, as written in [patterns]) is: a pattern
    counts as itself, like an alias. The default route allows nothing by itself."""
    allowed = models_of(record, plans)
    if allowed is None or model in allowed:
        return None
    if via is not None and via != DEFAULT_ROUTE and via in allowed:
        return None
    listed = ", ".join(allowed) if allowed else "none"
    return Refusal(
        403,
        f"This API key may not use this model. Allowed models: {listed}",
        "model_not_allowed",
        {"x-should-retry": "false"},
    )


def price_refusal(record: KeyRecord, model: str, plans: Plans) -> Refusal | None:
    """403 `model_not_priced`: a budgeted key asks for a routed model without a price
    (neither under `[prices]` by its exact name nor by `[default_price]`)."""
    if budget_of(record, plans)[0] is None or plans.price_of(model) is not None:
        return None
    return Refusal(
        403,
        f"This API key has a budget and the model {model[:MAX_MODEL_NAME]!r} has no price;"
        " ask for a priced model",
        "model_not_priced",
        {"x-should-retry": "false"},
    )


def prompt_chars(body: dict[str, Any]) -> int:
    """Characters of the prompt text in a request body: the strings under its prompt
    fields at any depth, except inline base64 data (`"data"` fields, `data:` URLs)."""
    total = 0
    stack: list[object] = [body.get(name) for name in _PROMPT_FIELDS]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if not value.startswith("data:"):
                total += len(value)
        elif isinstance(value, dict):
            stack.extend(v for k, v in value.items() if k != "data")
        elif isinstance(value, list):
            stack.extend(value)
    return total


def output_allowance(body: dict[str, Any]) -> int:
    """`max_tokens` (or `max_completion_tokens`, or the Responses API's
    `max_output_tokens`), else HOLD_DEFAULT_MAX_TOKENS."""
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return HOLD_DEFAULT_MAX_TOKENS


def hold_estimate(body: dict[str, Any], price: Price | None) -> float:
    """USD a request may cost, estimated before it is sent (see the module's notes);
    0 for an unpriced model."""
    if price is None:
        return 0.0
    prompt = math.ceil(prompt_chars(body) / CHARS_PER_TOKEN)
    return (prompt * price.input + output_allowance(body) * price.output) / PER_TOKENS


def admits(budget: float, spent: float, held: float, amount: float) -> bool:
    """Whether a request holding `amount` fits: the budget is not spent, and either it
    fits next to what is held, or nothing is held (a request alone is admitted while
    anything is left), or it holds nothing (no priced model: a GET, a body without one).
    shared.HOLD_LUA decides the same in Redis."""
    if spent >= budget:
        return False
    return held <= 0 or amount <= 0 or spent + held + amount <= budget + EPSILON


def budget_refusal(
    record: KeyRecord, plans: Plans, ledger: SpendLedger, now: str, amount: float = 0.0
) -> Refusal | None:
    """429 `insufficient_quota` unless a request holding `amount` `admits` next to the
    key's spend and this process's holds."""
    budget, period = budget_of(record, plans)
    if budget is None or period is None:
        return None
    spent = ledger.spent(record.id, period, now)
    held = ledger.held(record.id)
    if admits(budget, spent, held, amount):
        return None
    return quota_refusal(budget, period, spent, held, amount, now)


def quota_refusal(
    budget: float, period: str, spent: float, held: float, amount: float, now: str
) -> Refusal:
    """The 429 `insufficient_quota` of a budget that is spent or held by requests in
    progress."""
    moment = datetime.strptime(now, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    reset = resets_at(period, moment)
    per = {"day": "per day", "month": "per month", "total": "in total"}[period]
    if spent >= budget:
        message = (
            f"This API key's budget of {money(budget)} {per} is used up ({money(spent)} spent)"
        )
    else:
        message = (
            f"This API key's budget of {money(budget)} {per} cannot cover this request"
            f" ({money(spent)} spent, {money(held)} held by requests in progress, this one"
            f" estimated at up to {money(amount)}); retry when they finish"
        )
    # Clients retry a 429 on their own; this one stays until the period ends.
    headers = {"x-should-retry": "false"}
    if reset is None:
        message += "; it does not reset"
    else:
        message += f"; it resets at {clock.format_time(reset)}"
        headers["retry-after"] = str(max(1, math.ceil((reset - moment).total_seconds())))
    # `insufficient_quota` is the type OpenAI sends for a used-up quota.
    return Refusal(429, message, "insufficient_quota", headers, kind="insufficient_quota")


def allowed_listing(listing: dict[str, Any], allowed: Iterable[str] | None) -> dict[str, Any]:
    """`GET /v1/models` cut to the key's allow-list."""
    if allowed is None:
        return listing
    names = set(allowed)
    return {**listing, "data": [m for m in listing["data"] if m.get("id") in names]}


# --- key objects ---------------------------------------------------------------------


def key_objects(rows: list[dict[str, Any]], plans: Plans) -> list[dict[str, Any]]:
    """store.list_keys rows as key objects: the budget, period and models that apply,
    and the spend in the current period (the month's for a key without a budget)."""
    objects = []
    for row in rows:
        record = KeyRecord(
            row["id"],
            row["name"],
            row["tier"],
            row["active"],
            row["created_at"],
            row["expires_at"],
            row["prefix"],
            row["rpm"],
            row["own_budget"],
            row["own_budget_period"],
            row["own_models"],
        )
        budget, period = budget_of(record, plans)
        models = models_of(record, plans)
        view = {name: row.get(name) for name in KEY_FIELDS}
        view["budget"] = budget
        view["budget_period"] = period
        view["spend"] = round(row[f"spend_{period or DEFAULT_PERIOD}"], 10)
        view["models"] = None if models is None else list(models)
        objects.append(view)
    return objects


# --- validation of operator input ----------------------------------------------------
# The admin API (endpoints/admin.py) and the CLI (cli.py) both take these fields.

#: A key's own plan: what applies instead of its tier's when set.
PLAN_FIELDS = ("budget", "budget_period", "models")
#: What an update of a key may change (`POST /admin/update-key`, `keys.py update`).
UPDATE_FIELDS = ("name", "tier", "rpm", "expires_in", *PLAN_FIELDS)


def validate_plan(fields: dict[str, Any]) -> dict[str, object]:
    """The key's own budget, budget_period and models among `fields`, validated."""
    plan: dict[str, object] = {}
    if "budget" in fields:
        plan["budget"] = validate_budget(fields["budget"])
    if "budget_period" in fields:
        plan["budget_period"] = validate_period(fields["budget_period"])
    if "models" in fields:
        plan["models"] = validate_models(fields["models"])
    return plan


def validate_changes(fields: dict[str, Any], expires_name: str = "expires_in") -> dict[str, object]:
    """store.update_key changes from update-key fields; a null clears a setting (rpm,
    budget, budget_period, models: the tier's apply again; expires_in: never expires)."""
    changes = validate_plan(fields)
    if "name" in fields or "tier" in fields:
        name, tier, _ = keys.validate_new_key(
            fields.get("name", "unchanged"), fields.get("tier", "unchanged")
        )
        if "name" in fields:
            changes["name"] = name
        if "tier" in fields:
            if fields["tier"] is None:
                raise ValueError("tier must be a non-empty string")
            changes["tier"] = tier
    if "rpm" in fields:
        changes["rpm"] = keys.validate_rpm(fields["rpm"])
    if "expires_in" in fields:
        expires_in = fields["expires_in"]
        seconds = None if expires_in is None else clock.parse_duration(expires_in, expires_name)
        changes["expires_at"] = clock.expiry_after(seconds)
    return changes


def validate_budget(value: object) -> float | None:
    """USD per period: None (the tier's), or a number from 0."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError("budget must be a number of US dollars, like 20 or 4.50") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("budget must be a number of US dollars, like 20 or 4.50")
    if not (0 <= value <= MAX_BUDGET):  # also refuses NaN
        raise ValueError(f"budget must be between 0 and {MAX_BUDGET:.0f} US dollars")
    return float(value)


def validate_period(value: object) -> str | None:
    if value is None:
        return None
    if value not in PERIODS:
        raise ValueError(f"budget_period must be one of {', '.join(PERIODS)}")
    return str(value)


def validate_models(value: object) -> tuple[str, ...] | None:
    """An allow-list: a list of names (or a comma-separated string); None: all models."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(
        isinstance(m, str) and m and len(m) <= MAX_MODEL_NAME and m.isprintable() for m in value
    ):
        raise ValueError("models must be a list of model names")
    if len(value) > MAX_MODELS:
        raise ValueError(f"models may list at most {MAX_MODELS} names")
    return tuple(dict.fromkeys(value))

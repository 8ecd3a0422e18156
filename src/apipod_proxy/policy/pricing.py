"""Prices and plans: what a request costs, and what a tier allows.

Both live in the routing TOML file (ROUTES_FILE), next to the aliases, and are
re-read with it:

    [prices."claude-sonnet-4-5"]   # USD per million tokens, by routed model
    input = 3.00
    output = 15.00
    cached_input = 0.30            # optional; defaults to input

    [tiers.elite]
    rpm = 600
    budget = 50.0                  # USD per period; omit for no budget
    budget_period = "month"        # "day" | "month" | "total"; calendar periods in UTC
    models = ["cursor-pro-sonnet", "gemini-3-flash"]   # omit for all models

    [default_price]                # optional: the price of every routed model not listed
    input = 1.00                   # under [prices] (same fields)
    output = 5.00

Names match exactly, as the routing table matches them: `CLAUDE-X`, `"claude-x "` and
`claude-x-20250101` are three other models than `claude-x`, priced by `[default_price]`
or not at all. A budgeted key may use only priced models (budgets.price_refusal).

Without a file there are no prices and no tiers: everything is free and unlimited.
Pure: no mitmproxy, no database.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..storage.records import PERIODS
from .forwarding import Forwarding
from .routing import Router, RoutesError, RoutesFile, only, read_toml, table_of

log = logging.getLogger("apipod")

#: The period of a budget that names none, neither on the key nor on its tier.
DEFAULT_PERIOD = "month"
PER_TOKENS = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float

    def cost(self, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> float:
        """`prompt_tokens` includes the cached ones, which are charged at their own price."""
        cached = min(cached_tokens, prompt_tokens)
        return (
            (prompt_tokens - cached) * self.input
            + cached * self.cached_input
            + completion_tokens * self.output
        ) / PER_TOKENS


@dataclass(frozen=True, slots=True)
class Tier:
    """A plan's settings; None means "not set here" (the next source applies)."""

    rpm: int | None = None
    budget: float | None = None
    budget_period: str | None = None
    models: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class PriceTable:
    prices: dict[str, Price] = field(default_factory=dict)
    tiers: dict[str, Tier] = field(default_factory=dict)
    #: `[default_price]`: the price of a model not under `[prices]` (None: unpriced).
    default_price: Price | None = None


def parse_plans(text: str) -> PriceTable:
    """Read `[prices]` and `[tiers]` from the routing file's TOML text."""
    return plans_from(read_toml(text))


def plans_from(document: dict[str, Any]) -> PriceTable:
    """`[prices]` and `[tiers]` of a routing file's document (routing.read_toml)."""
    prices = {name: _price(name, spec) for name, spec in table_of(document, "prices").items()}
    tiers = {name: _tier(name, spec) for name, spec in table_of(document, "tiers").items()}
    default = None
    if "default_price" in document:
        default = _price("", document["default_price"], "[default_price]")
    return PriceTable(prices, tiers, default)


def _where(section: str, name: str) -> str:
    return f'[{section}."{name}"]'


def _number(value: object, where: str, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RoutesError(f"{where} {field_name} must be a number, got {value!r}")
    if not (value >= 0 and math.isfinite(value)):
        raise RoutesError(f"{where} {field_name} must be zero or more, got {value!r}")
    return float(value)


def _price(name: str, spec: object, where: str | None = None) -> Price:
    where = where or _where("prices", name)
    if not isinstance(spec, dict):
        raise RoutesError(f"{where} must be a table with input and output")
    only(spec, ("input", "output", "cached_input"), where)
    for required in ("input", "output"):
        if required not in spec:
            raise RoutesError(f"{where} needs {required} (USD per million tokens)")
    input_price = _number(spec["input"], where, "input")
    output_price = _number(spec["output"], where, "output")
    cached = spec.get("cached_input")
    cached_price = input_price if cached is None else _number(cached, where, "cached_input")
    return Price(input_price, output_price, cached_price)


def _tier(name: str, spec: object) -> Tier:
    where = _where("tiers", name)
    if not isinstance(spec, dict):
        raise RoutesError(f"{where} must be a table")
    only(spec, ("rpm", "budget", "budget_period", "models"), where)
    rpm = spec.get("rpm")
    if rpm is not None and (isinstance(rpm, bool) or not isinstance(rpm, int) or rpm < 0):
        raise RoutesError(f"{where} rpm must be a whole number, 0 for unlimited, got {rpm!r}")
    budget = spec.get("budget")
    if budget is not None:
        budget = _number(budget, where, "budget")
    period = spec.get("budget_period")
    if period is not None and period not in PERIODS:
        raise RoutesError(f"{where} budget_period must be one of {', '.join(PERIODS)}")
    models = spec.get("models")
    if models is not None:
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            raise RoutesError(f"{where} models must be a list of model names")
        models = tuple(dict.fromkeys(models))
    return Tier(rpm, budget, period, models)


class Counted(Protocol):
    """Tokens counted for one request (usage.Usage)."""

    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


class Plans:
    """The live price table, replaced whole when the routing file changes."""

    def __init__(self, table: PriceTable | None = None) -> None:
        self.table = table or PriceTable()
        self._warned: set[str] = set()

    def prepare(self, document: dict[str, Any]) -> PriceTable:
        """Read the routing file's document; RoutesError when its plans are invalid."""
        return plans_from(document)

    def apply(self, table: PriceTable) -> None:
        self.table = table

    def tier(self, name: str) -> Tier | None:
        return self.table.tiers.get(name)

    def price_of(self, model: str) -> Price | None:
        """`model`'s price (exact name), else `[default_price]`; None: unpriced."""
        price = self.table.prices.get(model)
        return self.table.default_price if price is None else price

    def cost_of(self, model: str, usage: Counted) -> float:
        """USD for a request's counted usage (usage.Usage) at `model`'s price."""
        return self.cost(model, usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens)

    def cost(
        self, model: str, prompt_tokens: int, cached_tokens: int, completion_tokens: int
    ) -> float:
        """USD for one request's tokens at `model`'s price; an unpriced model costs 0."""
        price = self.price_of(model)
        if price is None:
            # Without prices (no [prices] table) everything is free, as documented: no
            # warning then. With some, an unpriced model is likely a forgotten one.
            warn = bool(self.table.prices) and model not in self._warned
            if model and warn and len(self._warned) < 1000:
                self._warned.add(model)
                log.warning(
                    "model %r has no price in ROUTES_FILE: its requests cost 0", model[:200]
                )
            return 0.0
        return price.cost(prompt_tokens, cached_tokens, completion_tokens)


def money(usd: float) -> str:
    """`$` and USD to the micro-dollar, at least cents: `$5.00`, `$0.000012`, `$0.0105`.
    A budget of a few cents is spent in millionths of a dollar, and `$0.00 … used up`
    would hide that."""
    whole, _, cents = f"{usd:.6f}".rstrip("0").partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


def open_routes_file(
    path: str,
    router: Router | None = None,
    plans: Plans | None = None,
    forwarding: Forwarding | None = None,
) -> RoutesFile:
    """ROUTES_FILE read and checked whole, routes, prices, tiers and [forward] rows, and
    put in force in `router`, `plans` and `forwarding`. The proxy loads it so at startup
    and `make run`'s pre-check (serve.py) calls the same, so both refuse the same files.
    RoutesError names the file."""
    sections = [
        plans if plans is not None else Plans(),
        forwarding if forwarding is not None else Forwarding(),
    ]
    routes = RoutesFile(path, router or Router(), sections)
    routes.load()
    return routes

"""Unit tests for the addon's plan wiring: a budgeted request held before it is forwarded,
refused from memory (no database hop, the key's record cached), and settled when it
ends, through the hooks in the order mitmproxy calls them.

The checks themselves are tested on one stage: the key's plan and the hold's estimate in
test_rewrite.py, the hold, the cost, the request log and the flush in test_accounting.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.flow import Error

from apipod_proxy import clock
from apipod_proxy.flowstate import state_of
from apipod_proxy.gateway import Gateway as ProxyGateway
from apipod_proxy.policy.pricing import Price, PriceTable, Tier
from tests.support.gateway import Gateway, chat_body, error_of

GEMINI = "gemini-3-flash"
#: 11 prompt (3 cached) and 5 completion tokens at these prices: (8*100 + 3*10 + 5*400)/1e6.
PRICES = PriceTable(
    prices={GEMINI: Price(100.0, 400.0, 10.0)},
    tiers={"trial": Tier(rpm=1, budget=0.01, budget_period="day", models=(GEMINI,))},
)
COST = (8 * 100 + 3 * 10 + 5 * 400) / 1e6


def answer(gw: Gateway, flow: http.HTTPFlow, status: int = 200) -> None:
    usage = {
        "prompt_tokens": 11,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 3},
    }
    flow.response = http.Response.make(
        status, json.dumps({"usage": usage}).encode(), {"content-type": "application/json"}
    )
    gw.addon.responseheaders(flow)
    gw.addon.response(flow)


def key_with(gw: Gateway, tier: str = "elite", **plan: Any) -> tuple[str, int]:
    plaintext, record = gw.addon.gateway.store.create("alice", tier, None, plan=plan)
    return plaintext, record.id


def count_db_hops(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """From now on, every function the addon runs on its database threads, in order."""
    hops: list[Any] = []
    original = ProxyGateway.db

    async def counting(self: ProxyGateway, fn: Any, *args: Any) -> Any:
        hops.append(fn)
        return await original(self, fn, *args)

    monkeypatch.setattr(ProxyGateway, "db", counting)
    return hops


@pytest.fixture
def priced(make_gateway: Callable[..., Gateway]) -> Gateway:
    gw = make_gateway()
    gw.addon.gateway.plans.apply(PRICES)
    return gw


def test_over_budget_is_refused_before_forwarding_without_a_database_hop(
    priced: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, key_id = key_with(priced, budget=0.01)
    priced.authed(key, body=chat_body(GEMINI))  # the key lookup is now cached
    priced.addon.gateway.accounting.ledger.add(key_id, 0.01, clock.now_text())
    hops = count_db_hops(monkeypatch)
    flow = priced.authed(key, body=chat_body(GEMINI))
    assert hops == []
    assert flow.response is not None and flow.response.status_code == 429
    assert error_of(flow.response)["code"] == "insufficient_quota"
    state = state_of(flow)
    assert state is not None and state.forwarded_at is None and state.answered_by_proxy
    # Refused requests are neither charged nor logged.
    priced.addon.response(flow)
    assert priced.addon.gateway.accounting.request_log.take() == []


#: max_tokens 20 at $400 per million output, a short prompt at $100 input: $0.0082.
HELD = {"max_tokens": 20}


@pytest.mark.parametrize("ending", ["answer", "failure", "abort"])
def test_a_hold_refuses_what_does_not_fit_until_it_is_settled_or_released(
    priced: Gateway, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    key, key_id = key_with(priced, budget=0.012)
    first = priced.authed(key, body=chat_body(GEMINI, **HELD))
    assert first.response is None  # forwarded, holding its estimate
    held = priced.addon.gateway.accounting.ledger.held(key_id)
    # "user" and "hi": 6 characters, 2 tokens at $100; 20 output tokens at $400 per million.
    assert held == pytest.approx((2 * 100 + 20 * 400) / 1e6)
    hops = count_db_hops(monkeypatch)
    second = priced.authed(key, body=chat_body(GEMINI, **HELD))
    assert hops == []  # held and refused from memory
    assert error_of(second.response)["code"] == "insufficient_quota"
    if ending == "answer":
        answer(priced, first)
        spent = COST
    elif ending == "failure":
        answer(priced, first, 503)
        spent = 0.0
    else:
        first.error = Error("Client disconnected.")  # the client hung up
        priced.addon.error(first)
        spent = 0.0
    assert priced.addon.gateway.accounting.ledger.held(key_id) == 0
    assert priced.addon.gateway.accounting.ledger.spent(
        key_id, "month", clock.now_text()
    ) == pytest.approx(spent)
    assert priced.authed(key, body=chat_body(GEMINI, **HELD)).response is None

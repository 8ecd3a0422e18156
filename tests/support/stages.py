"""One pipeline stage built from its parts, for the unit tests: no addon, no Gateway.

The stages (apipod_proxy.pipeline) are dataclasses with explicit fields; each builder
here gives them real small parts (a `Settings`, a `KeyStore` on a SQLite file, a
`RateLimiter`, `Metrics`, `Plans`, a `Router`, `Cooldowns`, a `SpendLedger`, a
`RequestLog`, a `UsageRecorder`, a `Traffic`) and takes any of them as a keyword, so a
test looks at the very part it handed in. The one stand-in is `FixedUpstream`: an
upstream that speaks the API it is told, and counts the times it is asked again.

A stage works on a flow's `FlowState`; `admitted` puts one on a flow as admission
leaves it for a request that may pass, so the later stages can be driven alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from apipod_proxy.clientapi import ClientApi
from apipod_proxy.config import Settings
from apipod_proxy.endpoints import ENDPOINTS
from apipod_proxy.flowstate import STATE, FlowState, Traffic
from apipod_proxy.metrics import Metrics
from apipod_proxy.pipeline.accounting import Accounting
from apipod_proxy.pipeline.admission import Admission
from apipod_proxy.pipeline.answers import Answers
from apipod_proxy.pipeline.rewrite import Rewrite
from apipod_proxy.pipeline.usage import UsageRecorder
from apipod_proxy.policy.budgets import SpendLedger
from apipod_proxy.policy.forwarding import Forwarding
from apipod_proxy.policy.pricing import Plans
from apipod_proxy.policy.ratelimit import RateLimiter
from apipod_proxy.policy.routing import Router
from apipod_proxy.storage.records import KeyRecord
from apipod_proxy.storage.requestlog import RequestLog
from apipod_proxy.storage.sqlite import KeyStore
from apipod_proxy.upstream.quota import Cooldowns
from tests.support.gateway import ConstantDraw

#: What `find_key` is: the record of a key hash, None for an unknown key.
FindKey = Callable[[str], Awaitable[KeyRecord | None]]


@dataclass
class FixedUpstream:
    """The upstream as the stages see it: the API it speaks (`current_api`), and
    `recheck`, which the answers stage calls on an "endpoint not found"."""

    api: str = "both"
    rechecks: int = 0

    async def current_api(self) -> str:
        return self.api

    def recheck(self) -> None:
        self.rechecks += 1


@dataclass
class KnownModels:
    """The upstream's model list as accounting reads it: its ids (none fetched)."""

    ids: frozenset[str] = frozenset()


def lookup_in(store: KeyStore) -> FindKey:
    """`find_key` reading `store` (on the loop: a test's database is small and local)."""

    async def find_key(key_hash: str) -> KeyRecord | None:
        return store.find(key_hash)

    return find_key


def admission(settings: Settings, find_key: FindKey, **parts: Any) -> Admission:
    fields: dict[str, Any] = {
        "settings": settings,
        "forwarding": Forwarding(ENDPOINTS),
        "endpoints": ENDPOINTS,
        "find_key": find_key,
        "limiter": RateLimiter(),
        "plans": Plans(),
        "metrics": Metrics(),
        "traffic": Traffic(),
    }
    return Admission(**{**fields, **parts})


def rewrite(settings: Settings, **parts: Any) -> Rewrite:
    """Routing draws 0.9 (the default alias's 20/80 split: Gemini) unless a `router`
    is given."""
    fields: dict[str, Any] = {
        "settings": settings,
        "router": Router(rng=ConstantDraw(0.9)),
        "plans": Plans(),
        "cooldowns": Cooldowns(),
        "upstream": FixedUpstream(settings.upstream_api),
    }
    return Rewrite(**{**fields, **parts})


def answers(settings: Settings, **parts: Any) -> Answers:
    fields: dict[str, Any] = {
        "settings": settings,
        "metrics": Metrics(),
        "cooldowns": Cooldowns(),
        "upstream": FixedUpstream(settings.upstream_api),
        "traffic": Traffic(),
    }
    return Answers(**{**fields, **parts})


def accounting(
    settings: Settings, store: Any, pool: ThreadPoolExecutor, **parts: Any
) -> Accounting:
    """`store` and `pool` are only used by `flush` and `final_flush`."""
    fields: dict[str, Any] = {
        "settings": settings,
        "router": Router(rng=ConstantDraw(0.9)),
        "plans": Plans(),
        "metrics": Metrics(),
        "models": KnownModels(),
        "ledger": SpendLedger(),
        "usage": UsageRecorder(),
        "request_log": RequestLog(settings.request_log_days),
        "store": store,
        "pool": pool,
        "traffic": Traffic(),
    }
    return Accounting(**{**fields, **parts})


def admitted(flow: http.HTTPFlow, user: KeyRecord | None = None, **fields: Any) -> FlowState:
    """The FlowState admission leaves on a request that may pass: its id, the client's
    API, the client's address and scheme (mitmproxy's test client: 127.0.0.1 over TLS),
    and the key's record. `fields` set any other of its fields."""
    request = flow.request
    peer = flow.client_conn.peername
    state = FlowState(
        request.headers.get("x-request-id", "req_test"),
        api=ClientApi.of(request.path, request.headers),
        client=str(peer[0]) if peer else "",
        client_proto="https" if flow.client_conn.tls_established else "http",
        user=user,
    )
    for name, value in fields.items():
        setattr(state, name, value)
    flow.metadata[STATE] = state
    return state


class NoDatabase:
    """A store that fails the test when anything is asked of it: what runs with it
    runs from memory, without a database hop."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the database was used: {name}")

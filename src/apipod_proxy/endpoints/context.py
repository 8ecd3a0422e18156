"""What the handlers of the proxy's own endpoints see: the `Context` and the `Caller`.

Every handler of the endpoint table (`endpoints/__init__.py`) is a function
`handler(context, request, caller) -> http.Response`. The context is built once at load
with the long-lived objects the handlers read; the caller is who sent this request, as
the request path found out before the handler runs (a `FlowState` is one).

A leaf of `endpoints/`: it imports no other module of the folder but `live.py` and
`access.py`, which import none, so every handler module can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..policy.budgets import SpendLedger
from ..policy.pricing import Plans
from .access import GuessLimiter
from .live import LiveStats

if TYPE_CHECKING:
    from ..config import Settings
    from ..metrics import Metrics
    from ..policy.routing import Router, RoutesFile
    from ..storage.records import KeyRecord
    from ..storage.sqlite import KeyStore
    from ..upstream.models import ModelList
    from ..upstream.probe import Upstream
    from ..upstream.quota import Cooldowns


class Caller(Protocol):
    """Who sent the request: the client's address (past trusted front proxies, for the
    admin throttle) and, on a customer's path, the key record the key check found."""

    @property
    def client(self) -> str: ...

    @property
    def user(self) -> KeyRecord | None: ...


def key_record(caller: Caller) -> KeyRecord:
    """The caller's key record, on a customer's endpoint. The key check runs before any
    of them (credentials.py), so a caller without one is a bug: the guard answers 500."""
    if caller.user is None:
        raise LookupError("a customer's endpoint was reached without a key record")
    return caller.user


@dataclass(eq=False)
class Context:
    """The long-lived objects the handlers read; the optional ones are None only in
    tests that build a bare context (each handler says what it does without them)."""

    settings: Settings
    store: KeyStore
    metrics: Metrics | None = None
    router: Router | None = None
    routes: RoutesFile | None = None
    live: LiveStats = field(default_factory=LiveStats)
    #: Prices and tiers (ROUTES_FILE): what applies to a key.
    plans: Plans = field(default_factory=Plans)
    #: The upstream's API, model check and cooldowns, for /health.
    upstream: Upstream | None = None
    #: Models out of upstream quota (the dashboard reads them here too).
    cooldowns: Cooldowns | None = None
    #: Failed admin authentications per client address (ADMIN_AUTH_LIMIT).
    guesses: GuessLimiter = field(default_factory=GuessLimiter)
    #: Every key's spend, for `/account`.
    ledger: SpendLedger = field(default_factory=SpendLedger)
    #: The upstream's model list, for `GET /v1/models`.
    models: ModelList | None = None

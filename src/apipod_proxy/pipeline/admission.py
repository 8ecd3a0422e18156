"""Admission: whether a request may go on, decided from its headers alone.

In the order it runs, before the body is read (a refused request never opens an upstream
connection, and its body is never read):

    start         the request id, the FlowState, the API the client speaks (ClientApi)
    headers       CR, LF or NUL in a header value: 400
    target        what neither the proxy nor the forwarding table serves: 400, 404, 405
                  (policy/forwarding.py), before any key check: nothing there to protect
    own paths     the proxy's own endpoints with their own checks (admin, health, pages)
                  go on without a customer key; endpoints/ answers them in `request`
    key           401 missing, 403 unknown, inactive or expired, 503 when the database
                  cannot say (credentials.py, the key cache)
    rate limit    429 past the key's requests per minute (per process, or REDIS_URL)
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .. import clock, credentials, keys, logs
from ..clientapi import ClientApi
from ..flowstate import STATE, FlowState, Traffic
from ..policy import budgets, forwarding
from ..storage.backend import DB_ERRORS, error_text

if TYPE_CHECKING:
    from mitmproxy import http

    from ..config import Settings
    from ..metrics import Metrics
    from ..policy.forwarding import Forwarding
    from ..policy.pricing import Plans
    from ..policy.ratelimit import RateLimiter
    from ..policy.shared import SharedLimiter
    from ..storage.records import KeyRecord

log = logging.getLogger("apipod")

#: A key lookup the database has not answered in this many seconds is answered 503
#: (longer than SQLite's busy wait and PostgreSQL's wait for a connection).
LOOKUP_TIMEOUT = 10.0
_REQUEST_ID = re.compile(r"[\w.:/+=-]{1,128}")
_DATABASE_AWAY = "The key database is unavailable, try again shortly"


class OwnPaths(Protocol):
    """What admission asks of the endpoint table (endpoints.ENDPOINTS, or Endpoints)."""

    def owns(self, method: str, path: str) -> bool: ...

    def before_auth(self, path: str) -> bool: ...


@dataclass(slots=True)
class Admission:
    settings: Settings
    forwarding: Forwarding
    #: The paths the proxy answers itself (endpoints/): never forwarded.
    endpoints: OwnPaths
    #: The record of a key hash (None: unknown), from memory while the database is unchanged.
    find_key: Callable[[str], Awaitable[KeyRecord | None]]
    limiter: RateLimiter
    plans: Plans
    metrics: Metrics
    traffic: Traffic
    shared_limiter: SharedLimiter | None = None

    def start(self, flow: http.HTTPFlow) -> FlowState:
        """The request's state: its id (the client's, when sane and not key-like) and API."""
        request = flow.request
        given_id = request.headers.get("x-request-id", "")
        sane = _REQUEST_ID.fullmatch(given_id) and not keys.looks_keyish(given_id)
        request_id = given_id if sane else "req_" + secrets.token_hex(8)
        state = flow.metadata[STATE] = FlowState(
            request_id, api=ClientApi.of(request.path, request.headers), client_path=request.path
        )
        self.traffic.in_flight.add(flow.id)
        return state

    async def admit(self, flow: http.HTTPFlow, state: FlowState) -> http.Response | None:
        """The refusal of a request by its headers, or None: one of the proxy's own paths
        (`state.internal`: answered in `request`), or a key that may pass (`state.user`)."""
        if has_forbidden_header_bytes(flow.request.headers):
            message = "Header values must not contain CR, LF or NUL"
            return state.api.error(400, message, "invalid_request_headers")
        if (refused := self.refuse_target(flow, state)) is not None:
            return refused
        if self.endpoints.before_auth(flow.request.path.partition("?")[0]):
            state.internal = True  # the operator's and everyone's paths: see `request`
            return None
        return await self.authenticate(flow.request.headers, state)

    def refuse_target(self, flow: http.HTTPFlow, state: FlowState) -> http.Response | None:
        """The refusal of a target that neither the proxy nor the forwarding table serves,
        or None. Resolves the client's address (TRUSTED_PROXIES) for the admin throttle
        and X-Forwarded-For."""
        request = flow.request
        peer = flow.client_conn.peername
        state.client, state.client_proto = forwarding.resolve_client(
            str(peer[0]) if peer else "",
            flow.client_conn.tls_established,
            request.headers,
            self.settings.trusted_proxies,
        )
        if forwarding.is_absolute_form(request):
            message = "Absolute-form request targets (GET http://host/path) are refused"
            return state.api.error(400, message, "invalid_request_target")
        path = request.path.partition("?")[0]
        own = self.endpoints.owns(request.method, path)
        found = forwarding.refusal(request.method, path, self.forwarding.routes, own)
        if not isinstance(found, forwarding.Refusal):
            return None
        message = logs.redact(found.message)
        return state.api.error(found.status, message, found.code, found.headers)

    async def authenticate(self, headers: http.Headers, state: FlowState) -> http.Response | None:
        """Put the caller's key record on `state`, or return the refusal."""
        key = credentials.client_key(headers)
        record = None
        if key is not None and credentials.needs_lookup(key):
            try:
                async with asyncio.timeout(LOOKUP_TIMEOUT):
                    record = await self.find_key(keys.hash_key(key))
            except TimeoutError:
                # A hung database holds its thread; the client is answered all the same
                # (a lookup still queued is dropped with the wait).
                log.error("key lookup failed: no answer within %g s", LOOKUP_TIMEOUT)
                return state.api.error(503, _DATABASE_AWAY, "database_unavailable")
            except DB_ERRORS as exc:
                log.error("key lookup failed: %s", error_text(exc))
                return state.api.error(503, _DATABASE_AWAY, "database_unavailable")
        if refused := credentials.refusal(key, record, clock.now_text()):
            reason, refusal = refused
            self.metrics.auth_failures.labels(reason).inc()
            return state.api.refuse(refusal)
        assert record is not None
        state.user = record
        rpm = budgets.rpm_of(record, self.plans, self.settings)
        if self.shared_limiter is not None:  # REDIS_URL: across replicas
            wait = await self.shared_limiter.acquire(record.id, rpm)
        else:
            wait = self.limiter.acquire(record.id, rpm)
        if wait:
            self.metrics.rate_limited.inc()
            return state.api.error(
                429,
                "Rate limit exceeded for this API key; retry later",
                "rate_limit_exceeded",
                {"retry-after": self.limiter.retry_after(wait)},
            )
        return None


def has_forbidden_header_bytes(headers: http.Headers) -> bool:
    """CR, LF (an obs-fold) or NUL in a value, which a proxy must not pass on (RFC 9110 5.5)."""
    return any(b"\r" in value or b"\n" in value or b"\0" in value for _, value in headers.fields)

"""Who may call the operator's endpoints: the ADMIN_SECRET check and its throttle.

The endpoint table runs `operator_refusal` before every row open to the operator only
(`/metrics`, `/admin/*`). It runs where the row runs (the database threads), so the
throttle's buckets are shared by those threads under a lock. A customer's rows need no
check here: the request path checked the key before (credentials.py). A leaf of
`endpoints/`: it imports no other module of the folder.
"""

from __future__ import annotations

import hmac
import logging
import threading
from typing import TYPE_CHECKING

from mitmproxy import http

from ..credentials import bearer_token
from ..errors import error_response
from ..logs import printable
from ..policy.ratelimit import RateLimiter

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("apipod")


class GuessLimiter:
    """Failed admin authentications per client address: a token bucket of `limit` per
    minute each (ratelimit.py), shared by the database threads the handlers run on."""

    def __init__(self) -> None:
        self._buckets = RateLimiter()
        self._lock = threading.Lock()

    def waiting(self, client: str, limit: int) -> float:
        """0, or the seconds until `client` may try a secret again."""
        with self._lock:
            return self._buckets.peek(client, limit)

    def failed(self, client: str, limit: int) -> bool:
        """Count one failure; True when it used up the address's allowance."""
        with self._lock:
            self._buckets.acquire(client, limit)
            return self._buckets.peek(client, limit) > 0


def operator_refusal(
    settings: Settings, guesses: GuessLimiter, request: http.Request, client: str
) -> http.Response | None:
    """None when `request` carries ADMIN_SECRET, else the refusal: 503 without a secret
    configured, 429 for an address that guessed too often, 401 for a wrong one."""
    secret = settings.admin_secret
    if secret is None:
        return error_response(
            503,
            "The admin API is disabled because ADMIN_SECRET is not set",
            "admin_disabled",
        )
    limit = settings.admin_auth_limit
    # Refused before the compare, right or wrong: a guesser learns nothing more.
    if wait := guesses.waiting(client, limit):
        return error_response(
            429,
            "Too many failed admin authentications from this address; retry later",
            "admin_auth_throttled",
            {"retry-after": RateLimiter.retry_after(wait)},
        )
    # x-admin-secret, or Authorization: Bearer (what Prometheus scrape configs send).
    given = request.headers.get("x-admin-secret") or bearer_token(request.headers) or ""
    if hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret.encode("utf-8")):
        return None
    if guesses.failed(client, limit):
        log.warning(
            "admin: %s used up its %d failed admin authentications a minute "
            "(ADMIN_AUTH_LIMIT); it gets 429 admin_auth_throttled until it slows down",
            client or "?",
            limit,
        )
    else:
        log.warning(
            "admin: wrong or missing admin secret from %s on %s",
            client or "?",
            printable(request.path.partition("?")[0])[:100],
        )
    return error_response(
        401,
        "Missing or wrong admin secret: send ADMIN_SECRET as the x-admin-secret "
        "header or as Authorization: Bearer",
        "invalid_admin_secret",
    )

"""Endpoints the proxy answers itself: `/health`, `/metrics` and `/admin/*`.

They never reach the upstream. A handful of exact paths does not need a web
framework: one dict lookup keeps the hot path (every other request) untouched.
The handlers do blocking SQLite work, so the addon runs them on its DB threads.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from .. import clock, keys
from ..bodies import BodyError, decoded, parse_json
from ..config import Settings
from ..credentials import bearer_token
from ..errors import error_response, json_response
from ..logs import printable
from ..metrics import CONTENT_TYPE, Metrics
from ..policy import budgets
from ..policy.pricing import Plans
from ..policy.ratelimit import RateLimiter
from ..policy.routing import Router, RoutesFile
from ..storage.backend import DB_ERRORS, error_text
from ..storage.requestlog import DEFAULT_LIMIT, parse_limit
from ..storage.sqlite import KeyStore
from ..upstream.models import MODELS_PATH
from . import dashboard, pages
from .account import PATHS as ACCOUNT_PATHS

if TYPE_CHECKING:
    from ..upstream.probe import Upstream
    from ..upstream.quota import Cooldowns

log = logging.getLogger("apipod")

Handler = Callable[["AdminApi", http.Request], http.Response]

ADMIN_PREFIX = "/admin/"
PORTAL_PREFIX = "/portal/"
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"


def is_internal(path: str) -> bool:
    """True for paths the proxy owns; such a request never goes upstream."""
    return path in (HEALTH_PATH, METRICS_PATH, "/admin", "/portal") or path.startswith(
        (ADMIN_PREFIX, PORTAL_PREFIX)
    )


#: Admin bodies are a few fields; nothing bigger is decoded.
MAX_ADMIN_BODY = 64 << 10
#: SQLite's integer range: no key can have an id outside it.
MAX_ID = 2**63 - 1


class UnknownFields(ValueError):
    """A well-formed body naming fields the endpoint does not take (a typo, say)."""


def _json_object(request: http.Request, allowed: set[str]) -> dict[str, Any]:
    """The request's JSON object body, or ValueError with a message for the client."""
    try:
        body = parse_json(decoded(request, MAX_ADMIN_BODY))
    except BodyError:
        body = None
    if not isinstance(body, dict):
        raise ValueError("Body must be a JSON object")
    if unknown := sorted(set(body) - allowed):
        raise UnknownFields(
            f"Unknown fields: {', '.join(unknown)} (this endpoint takes "
            f"{', '.join(sorted(allowed))})"
        )
    return body


def _body_error(exc: ValueError) -> http.Response:
    """400 for a body that is not a JSON object (`invalid_json`) or names unknown fields."""
    code = "unknown_field" if isinstance(exc, UnknownFields) else "invalid_json"
    return error_response(400, str(exc), code)


PLAN_FIELDS = ("budget", "budget_period", "models")
UPDATE_FIELDS = ("name", "tier", "rpm", "expires_in", *PLAN_FIELDS)


def _check_id(key_id: object) -> http.Response | None:
    if isinstance(key_id, bool) or not isinstance(key_id, int):
        return error_response(400, "id must be a key's whole-number id", "invalid_field")
    if not 1 <= key_id <= MAX_ID:
        return error_response(404, f"No key has id {key_id}", "key_not_found")
    return None


def validate_plan(fields: dict[str, Any]) -> dict[str, object]:
    """The key's own budget, budget_period and models among `fields`, validated."""
    plan: dict[str, object] = {}
    if "budget" in fields:
        plan["budget"] = budgets.validate_budget(fields["budget"])
    if "budget_period" in fields:
        plan["budget_period"] = budgets.validate_period(fields["budget_period"])
    if "models" in fields:
        plan["models"] = budgets.validate_models(fields["models"])
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


@dataclass
class AdminApi:
    settings: Settings
    store: KeyStore
    metrics: Metrics | None = None
    router: Router | None = None
    routes: RoutesFile | None = None
    live: dashboard.LiveStats = field(default_factory=dashboard.LiveStats)
    plans: Plans | None = None
    #: The upstream's API, model check and cooldowns, for /health (None in bare tests).
    upstream: Upstream | None = None
    #: Models out of upstream quota (the dashboard reads them here too).
    cooldowns: Cooldowns | None = None
    #: Failed admin authentications per client address (ADMIN_AUTH_LIMIT).
    guesses: GuessLimiter = field(default_factory=GuessLimiter)

    def handle(self, request: http.Request, client: str = "") -> http.Response:
        """The answer to an internal path; `client` is the caller's address (forwarding.py)."""
        response = self._answer(request, client)
        self.live.count_internal(response.status_code)  # kept out of the live API figures
        return response

    def _answer(self, request: http.Request, client: str) -> http.Response:
        path = request.path.partition("?")[0]
        route = ROUTES.get(path)
        if route is None:
            if request.method in ("GET", "HEAD") and pages.is_page(path):
                # The dashboard and portal pages need no secret: they sign in themselves.
                return pages.serve(request)
            return error_response(404, f"Unknown endpoint {path}", "not_found")
        method, handler, needs_secret = route
        if request.method != method:
            return error_response(
                405, f"{path} only accepts {method}", "method_not_allowed", {"allow": method}
            )
        if needs_secret and (denied := self._check_secret(request, client)) is not None:
            return denied
        try:
            return handler(self, request)
        except DB_ERRORS as exc:
            log.error("database error on %s: %s", printable(path), error_text(exc))
            return error_response(503, "The key database is unavailable", "database_unavailable")
        except Exception:  # a bug answers 500; an internal path is never forwarded
            log.exception("internal error on %s", printable(path))
            return error_response(500, "Internal proxy error", "internal_error")

    def _check_secret(self, request: http.Request, client: str) -> http.Response | None:
        secret = self.settings.admin_secret
        if secret is None:
            return error_response(
                503,
                "The admin API is disabled because ADMIN_SECRET is not set",
                "admin_disabled",
            )
        limit = self.settings.admin_auth_limit
        # Refused before the compare, right or wrong: a guesser learns nothing more.
        if wait := self.guesses.waiting(client, limit):
            return error_response(
                429,
                "Too many failed admin authentications from this address; retry later",
                "admin_auth_throttled",
                {"retry-after": RateLimiter.retry_after(wait)},
            )
        # x-admin-secret, or Authorization: Bearer (what Prometheus scrape configs send).
        given = request.headers.get("x-admin-secret") or bearer_token(request.headers) or ""
        if not hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), secret.encode("utf-8")
        ):
            if self.guesses.failed(client, limit):
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
        return None

    def health(self, request: http.Request) -> http.Response:
        try:
            self.store.ping()
            database = "ok"
        except DB_ERRORS as exc:
            log.warning("health check: database error: %s", error_text(exc))
            # PostgreSQL: known keys are still served from memory, and every replica
            # sees the same outage, so a load balancer must not drain them all.
            database = (
                "degraded" if getattr(self.store, "survives_outage", False) else "unavailable"
            )
        healthy = database == "ok"
        # 503 when keys cannot be checked, so load balancers take this replica out.
        return json_response(
            200 if database != "unavailable" else 503,
            {
                "status": "ok" if healthy else "degraded",
                "database": database,
                "admin": self.settings.admin_enabled,
                **(self.upstream.health() if self.upstream is not None else {}),
            },
        )

    def create_key(self, request: http.Request) -> http.Response:
        try:
            body = _json_object(request, {"name", "tier", "expires_in", "rpm", *PLAN_FIELDS})
        except ValueError as exc:
            return _body_error(exc)
        try:
            name, tier, expires_in = keys.validate_new_key(
                body.get("name"), body.get("tier"), body.get("expires_in")
            )
            rpm = keys.validate_rpm(body.get("rpm"))
            plan = validate_plan(body)
        except ValueError as exc:
            return error_response(400, str(exc), "invalid_field")
        api_key, record = self.store.create(name, tier, expires_in, rpm, plan)
        log.info("admin: created key id=%s name=%s tier=%s", record.id, record.name, record.tier)
        return json_response(201, record.created_view(api_key))

    def list_keys(self, request: http.Request) -> http.Response:
        return json_response(200, {"data": self._key_objects()})

    def _key_objects(self, key_id: int | None = None) -> list[dict[str, Any]]:
        return budgets.key_objects(self.store.list_keys(key_id), self.plans or Plans())

    def update_key(self, request: http.Request) -> http.Response:
        try:
            body = _json_object(request, {"id", *UPDATE_FIELDS})
        except ValueError as exc:
            return _body_error(exc)
        key_id = body.pop("id", None)
        if (refused := _check_id(key_id)) is not None:
            return refused
        try:
            changes = validate_changes(body)
        except ValueError as exc:
            return error_response(400, str(exc), "invalid_field")
        if self.store.update(key_id, changes) is None:
            return error_response(404, f"No key has id {key_id}", "key_not_found")
        log.info("admin: updated key id=%s (%s)", key_id, ", ".join(sorted(changes)) or "nothing")
        return json_response(200, self._key_objects(key_id)[0])

    def rotate_key(self, request: http.Request) -> http.Response:
        try:
            key_id = _json_object(request, {"id"}).get("id")
        except ValueError as exc:
            return _body_error(exc)
        if (refused := _check_id(key_id)) is not None:
            return refused
        rotated = self.store.rotate(key_id)
        if rotated is None:
            return error_response(404, f"No key has id {key_id}", "key_not_found")
        api_key, record = rotated
        log.info("admin: rotated key id=%s; the old secret no longer works", key_id)
        return json_response(200, record.created_view(api_key))

    def requests(self, request: http.Request) -> http.Response:
        query = request.query
        try:
            key_id = query.get("key_id")
            if key_id is not None:
                key_id = int(key_id) if key_id.isascii() and key_id.isdigit() else -1
                if not 1 <= key_id <= MAX_ID:
                    raise ValueError("key_id must be a key's whole-number id")
            start = clock.since(query.get("since"))
            limit = parse_limit(query.get("limit", DEFAULT_LIMIT))
        except ValueError as exc:
            return error_response(400, str(exc), "invalid_field")
        return json_response(200, {"data": self.store.requests(key_id, start, limit)})

    def revoke_key(self, request: http.Request) -> http.Response:
        return self._set_active(request, False)

    def activate_key(self, request: http.Request) -> http.Response:
        return self._set_active(request, True)

    def _set_active(self, request: http.Request, active: bool) -> http.Response:
        try:
            key_id = _json_object(request, {"id"}).get("id")
        except ValueError as exc:
            return _body_error(exc)
        if isinstance(key_id, bool) or not isinstance(key_id, int):
            return error_response(400, "id must be a key's whole-number id", "invalid_field")
        if not (1 <= key_id <= MAX_ID and self.store.set_active(key_id, active)):
            return error_response(404, f"No key has id {key_id}", "key_not_found")
        log.info("admin: %s key id=%s", "activated" if active else "revoked", key_id)
        return json_response(200, {"id": key_id, "active": active})

    def usage(self, request: http.Request) -> http.Response:
        try:
            start = clock.since(request.query.get("since"))
        except ValueError:
            return error_response(400, "since must look like 90m, 24h, 30d or 2w", "invalid_field")
        return json_response(200, {"data": self.store.usage(start)})

    def metrics_page(self, request: http.Request) -> http.Response:
        body = self.metrics.render() if self.metrics else b""
        return http.Response.make(200, body, {"content-type": CONTENT_TYPE})


#: path -> (method, handler, needs the admin secret)
ROUTES: dict[str, tuple[str, Handler, bool]] = {
    HEALTH_PATH: ("GET", AdminApi.health, False),
    "/admin/create-key": ("POST", AdminApi.create_key, True),
    "/admin/keys": ("GET", AdminApi.list_keys, True),
    "/admin/revoke-key": ("POST", AdminApi.revoke_key, True),
    "/admin/activate-key": ("POST", AdminApi.activate_key, True),
    "/admin/usage": ("GET", AdminApi.usage, True),
    "/admin/update-key": ("POST", AdminApi.update_key, True),
    "/admin/rotate-key": ("POST", AdminApi.rotate_key, True),
    "/admin/requests": ("GET", AdminApi.requests, True),
    METRICS_PATH: ("GET", AdminApi.metrics_page, True),
    **dashboard.ROUTES,
}


def own_paths() -> list[str]:
    """The paths the proxy answers itself, which a `[forward]` row may not take: the
    addon and `make run`'s pre-check (pricing.open_routes_file) use the same list."""
    return [*ROUTES, "/admin", "/portal", *ACCOUNT_PATHS, MODELS_PATH]

"""Endpoints the proxy answers itself: `GET /health` and `POST /admin/*`.

They never reach the upstream. A handful of exact paths does not need a web
framework: one dict lookup keeps the hot path (every other request) untouched.
The handlers do blocking SQLite work, so the addon runs them on its DB thread.
"""

from __future__ import annotations

import hmac
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from mitmproxy import http

from . import keys
from .config import Settings
from .errors import error_response, json_response
from .routing import BodyError, parse_json_body
from .store import KeyStore

log = logging.getLogger("apipod")

Handler = Callable[["AdminApi", http.Request], http.Response]

ADMIN_PREFIX = "/admin/"
HEALTH_PATH = "/health"


def is_internal(path: str) -> bool:
    """True for paths the proxy owns; such a request never goes upstream."""
    return path == HEALTH_PATH or path.startswith(ADMIN_PREFIX) or path == "/admin"


@dataclass
class AdminApi:
    settings: Settings
    store: KeyStore

    def handle(self, request: http.Request) -> http.Response:
        path = request.path.partition("?")[0]
        route = ROUTES.get(path)
        if route is None:
            return error_response(404, f"Unknown endpoint {path}", "not_found")
        method, handler, needs_secret = route
        if request.method != method:
            return error_response(
                405, f"{path} only accepts {method}", "method_not_allowed", {"allow": method}
            )
        if needs_secret and (denied := self._check_secret(request)) is not None:
            return denied
        try:
            return handler(self, request)
        except sqlite3.Error as exc:
            log.error("database error on %s: %s", path, exc)
            return error_response(503, "The key database is unavailable", "database_unavailable")

    def _check_secret(self, request: http.Request) -> http.Response | None:
        secret = self.settings.admin_secret
        if secret is None:
            return error_response(
                503,
                "The admin API is disabled because ADMIN_SECRET is not set",
                "admin_disabled",
            )
        given = request.headers.get("x-admin-secret", "")
        if not hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), secret.encode("utf-8")
        ):
            return error_response(
                401, "Missing or wrong x-admin-secret header", "invalid_admin_secret"
            )
        return None

    def health(self, request: http.Request) -> http.Response:
        try:
            self.store.ping()
            database = "ok"
        except sqlite3.Error as exc:
            log.warning("health check: database error: %s", exc)
            database = "unavailable"
        healthy = database == "ok"
        # 503 when keys cannot be checked, so load balancers take this replica out.
        return json_response(
            200 if healthy else 503,
            {
                "status": "ok" if healthy else "degraded",
                "database": database,
                "admin": self.settings.admin_enabled,
            },
        )

    def create_key(self, request: http.Request) -> http.Response:
        try:
            body = parse_json_body(request.get_content(strict=False) or b"")
        except BodyError:
            return error_response(400, "Body must be a JSON object", "invalid_json")
        if not isinstance(body, dict):
            return error_response(400, "Body must be a JSON object", "invalid_json")
        unknown = sorted(set(body) - {"name", "tier", "expires_in"})
        if unknown:
            return error_response(400, f"Unknown fields: {', '.join(unknown)}", "invalid_field")
        try:
            name, tier, expires_in = keys.validate_new_key(
                body.get("name"), body.get("tier"), body.get("expires_in")
            )
        except ValueError as exc:
            return error_response(400, str(exc), "invalid_field")
        api_key, record = self.store.create(name, tier, expires_in)
        log.info("admin: created key id=%s name=%s tier=%s", record.id, record.name, record.tier)
        return json_response(201, record.created_view(api_key))


#: path -> (method, handler, needs the admin secret)
ROUTES: dict[str, tuple[str, Handler, bool]] = {
    HEALTH_PATH: ("GET", AdminApi.health, False),
    "/admin/create-key": ("POST", AdminApi.create_key, True),
}

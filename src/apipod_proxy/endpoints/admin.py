"""The operator's API (`/admin/*`, behind ADMIN_SECRET), and `/health` and `/metrics`.

Handlers of the endpoint table (`endpoints/__init__.py`), which matches the path and
method, checks the secret (access.py) and runs them on the database threads (`/health`
on its own thread) under its guard: a database error answers 503, a bug 500. They do
blocking database work and read small JSON bodies.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from .. import clock, keys
from ..bodies import BodyError, decoded, parse_json
from ..errors import error_response, json_response
from ..metrics import CONTENT_TYPE
from ..policy import budgets
from ..storage.backend import DB_ERRORS, error_text
from ..storage.requestlog import DEFAULT_LIMIT, parse_limit

if TYPE_CHECKING:
    from .context import Caller, Context

log = logging.getLogger("apipod")

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


def _check_id(key_id: object) -> http.Response | None:
    if isinstance(key_id, bool) or not isinstance(key_id, int):
        return error_response(400, "id must be a key's whole-number id", "invalid_field")
    if not 1 <= key_id <= MAX_ID:
        return error_response(404, f"No key has id {key_id}", "key_not_found")
    return None


def health(context: Context, request: http.Request, caller: Caller) -> http.Response:
    try:
        context.store.ping()
        database = "ok"
    except DB_ERRORS as exc:
        log.warning("health check: database error: %s", error_text(exc))
        # PostgreSQL: known keys are still served from memory, and every replica
        # sees the same outage, so a load balancer must not drain them all.
        database = "degraded" if getattr(context.store, "survives_outage", False) else "unavailable"
    healthy = database == "ok"
    # 503 when keys cannot be checked, so load balancers take this replica out.
    return json_response(
        200 if database != "unavailable" else 503,
        {
            "status": "ok" if healthy else "degraded",
            "database": database,
            "admin": context.settings.admin_enabled,
            **(context.upstream.health() if context.upstream is not None else {}),
        },
    )


def create_key(context: Context, request: http.Request, caller: Caller) -> http.Response:
    try:
        body = _json_object(request, {"name", "tier", "expires_in", "rpm", *budgets.PLAN_FIELDS})
    except ValueError as exc:
        return _body_error(exc)
    try:
        name, tier, expires_in = keys.validate_new_key(
            body.get("name"), body.get("tier"), body.get("expires_in")
        )
        rpm = keys.validate_rpm(body.get("rpm"))
        plan = budgets.validate_plan(body)
    except ValueError as exc:
        return error_response(400, str(exc), "invalid_field")
    api_key, record = context.store.create(name, tier, expires_in, rpm, plan)
    log.info("admin: created key id=%s name=%s tier=%s", record.id, record.name, record.tier)
    return json_response(201, record.created_view(api_key))


def list_keys(context: Context, request: http.Request, caller: Caller) -> http.Response:
    return json_response(200, {"data": _key_objects(context)})


def _key_objects(context: Context, key_id: int | None = None) -> list[dict[str, Any]]:
    return budgets.key_objects(context.store.list_keys(key_id), context.plans)


def update_key(context: Context, request: http.Request, caller: Caller) -> http.Response:
    try:
        body = _json_object(request, {"id", *budgets.UPDATE_FIELDS})
    except ValueError as exc:
        return _body_error(exc)
    key_id = body.pop("id", None)
    if (refused := _check_id(key_id)) is not None:
        return refused
    try:
        changes = budgets.validate_changes(body)
    except ValueError as exc:
        return error_response(400, str(exc), "invalid_field")
    if context.store.update(key_id, changes) is None:
        return error_response(404, f"No key has id {key_id}", "key_not_found")
    log.info("admin: updated key id=%s (%s)", key_id, ", ".join(sorted(changes)) or "nothing")
    return json_response(200, _key_objects(context, key_id)[0])


def rotate_key(context: Context, request: http.Request, caller: Caller) -> http.Response:
    try:
        key_id = _json_object(request, {"id"}).get("id")
    except ValueError as exc:
        return _body_error(exc)
    if (refused := _check_id(key_id)) is not None:
        return refused
    rotated = context.store.rotate(key_id)
    if rotated is None:
        return error_response(404, f"No key has id {key_id}", "key_not_found")
    api_key, record = rotated
    log.info("admin: rotated key id=%s; the old secret no longer works", key_id)
    return json_response(200, record.created_view(api_key))


def requests(context: Context, request: http.Request, caller: Caller) -> http.Response:
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
    return json_response(200, {"data": context.store.requests(key_id, start, limit)})


def revoke_key(context: Context, request: http.Request, caller: Caller) -> http.Response:
    return _set_active(context, request, False)


def activate_key(context: Context, request: http.Request, caller: Caller) -> http.Response:
    return _set_active(context, request, True)


def _set_active(context: Context, request: http.Request, active: bool) -> http.Response:
    try:
        key_id = _json_object(request, {"id"}).get("id")
    except ValueError as exc:
        return _body_error(exc)
    if isinstance(key_id, bool) or not isinstance(key_id, int):
        return error_response(400, "id must be a key's whole-number id", "invalid_field")
    if not (1 <= key_id <= MAX_ID and context.store.set_active(key_id, active)):
        return error_response(404, f"No key has id {key_id}", "key_not_found")
    log.info("admin: %s key id=%s", "activated" if active else "revoked", key_id)
    return json_response(200, {"id": key_id, "active": active})


def usage(context: Context, request: http.Request, caller: Caller) -> http.Response:
    try:
        start = clock.since(request.query.get("since"))
    except ValueError:
        return error_response(400, "since must look like 90m, 24h, 30d or 2w", "invalid_field")
    return json_response(200, {"data": context.store.usage(start)})


def metrics_page(context: Context, request: http.Request, caller: Caller) -> http.Response:
    if context.metrics is None:
        return http.Response.make(200, b"", {"content-type": CONTENT_TYPE})
    try:  # on the database threads; PostgreSQL's ping is bounded (postgres.PING_WAIT)
        context.store.ping()
        context.metrics.database_up.set(1)
    except DB_ERRORS as exc:
        log.warning("metrics: database error: %s", error_text(exc))
        context.metrics.database_up.set(0)
    body = context.metrics.render()
    return http.Response.make(200, body, {"content-type": CONTENT_TYPE})

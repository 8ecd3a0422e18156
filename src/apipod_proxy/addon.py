"""The mitmproxy addon: one object whose hooks walk each request through the proxy.

requestheaders  authenticate (before the body is read; a refused request never
                opens an upstream connection)
request         answer internal endpoints, route the model, swap credentials,
                start the upstream timeout
responseheaders stream Server-Sent Events as they arrive
response/error  one access-log line per request

Blocking SQLite work runs on a small thread pool so no hook stalls the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from mitmproxy import ctx, http
from mitmproxy.net.http import http1
from mitmproxy.proxy import events
from mitmproxy.proxy.mode_specs import ProxyMode, ReverseMode
from mitmproxy.utils import asyncio_utils

from . import errors, keys, logs
from .admin import AdminApi, is_internal
from .config import ConfigError, Settings, load_settings
from .routing import BodyError, Router, parse_json_body
from .store import KeyRecord, KeyStore

log = logging.getLogger("apipod")
T = TypeVar("T")

STATE = "apipod"
#: Client credentials that must never reach the upstream.
CLIENT_CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "x-api-key", "x-goog-api-key")
#: mitmproxy options a gateway needs, whatever the command line says.
GATEWAY_OPTIONS: dict[str, Any] = {
    # Customers (and Cursor's backend) connect from public addresses.
    "block_global": False,
    # Connect upstream only when a request is forwarded: refused requests open no
    # upstream connection, and a down upstream yields an answer instead of a dropped client.
    "connection_strategy": "lazy",
}


@dataclass(slots=True)
class FlowState:
    """What the proxy knows about one request, kept on `flow.metadata`."""

    started: float = field(default_factory=time.perf_counter)
    internal: bool = False
    user: KeyRecord | None = None
    requested_model: str | None = None
    routed_model: str | None = None
    timer: asyncio.TimerHandle | None = None
    timed_out: bool = False


def state_of(flow: http.HTTPFlow) -> FlowState | None:
    return flow.metadata.get(STATE)


class Apipod:
    # Set by `load`; the hooks only run once loading succeeded.
    settings: Settings
    store: KeyStore
    admin: AdminApi

    def __init__(self, settings: Settings | None = None, router: Router | None = None) -> None:
        self._given_settings = settings
        self.router = router or Router()
        self._db_pool: ThreadPoolExecutor | None = None

    # --- lifecycle ---------------------------------------------------------------

    def load(self, loader: Any) -> None:
        logs.setup()
        try:
            settings = self._given_settings or load_settings()
            store = KeyStore(settings.database_path)
            store.ping()  # creates the folder, file and schema now, not on first use
        except ConfigError as exc:
            # Logged at ERROR during startup: mitmdump prints the line and exits.
            logs.startup_error(str(exc))
            return
        except (OSError, sqlite3.Error) as exc:
            logs.startup_error(f"DATABASE_PATH {settings.database_path}: {exc}")
            return
        self.settings, self.store = settings, store
        self.admin = AdminApi(settings, store)
        self._db_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="apipod-db")
        errors.install_json_error_pages()
        ctx.options.update(**GATEWAY_OPTIONS, body_size_limit=str(settings.max_body_size))
        if not settings.admin_enabled:
            log.warning("ADMIN_SECRET is not set: the admin API is disabled")
        if not runs_in_front_of(ctx.options.mode, settings.antigravity_url):
            log.warning(
                "mitmdump --mode %s does not forward to ANTIGRAVITY_URL=%s; "
                "run it with --mode reverse:%s",
                ",".join(ctx.options.mode),
                settings.antigravity_url,
                settings.antigravity_url,
            )
        log.info(
            "apipod ready: upstream %s, database %s, upstream timeout %gs",
            settings.antigravity_url,
            settings.database_path,
            settings.upstream_timeout,
        )

    def done(self) -> None:
        if self._db_pool is not None:
            self._db_pool.shutdown(wait=True)

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._db_pool is not None
        return await asyncio.get_running_loop().run_in_executor(self._db_pool, fn, *args)

    # --- request path ------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        state = flow.metadata[STATE] = FlowState()
        if is_internal(flow.request.path.partition("?")[0]):
            state.internal = True
            return
        flow.response = await self._authenticate(flow.request.headers, state)

    async def _authenticate(self, headers: http.Headers, state: FlowState) -> http.Response | None:
        """Put the caller's key record on `state`, or return the refusal."""
        key = bearer_token(headers)
        if key is None:
            return errors.error_response(
                401,
                "Missing API key: send it as 'Authorization: Bearer apk_...'",
                "missing_api_key",
            )
        if not keys.looks_like_key(key):
            return errors.error_response(403, "Invalid API key", "invalid_api_key")
        try:
            record = await self._db(self.store.find, keys.hash_key(key))
        except sqlite3.Error as exc:
            log.error("key lookup failed: %s", exc)
            return errors.error_response(
                503, "The key database is unavailable, try again shortly", "database_unavailable"
            )
        if record is None:
            return errors.error_response(403, "Invalid API key", "invalid_api_key")
        if not record.active:
            return errors.error_response(
                403, "This API key has been deactivated", "inactive_api_key"
            )
        if not record.is_usable(keys.format_time(keys.utcnow())):
            return errors.error_response(403, "This API key has expired", "expired_api_key")
        state.user = record
        return None

    async def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or flow.response is not None:
            return
        if state.internal:
            flow.response = await self._db(self.admin.handle, flow.request)
            return
        is_api_post = flow.request.method == "POST" and flow.request.path.startswith("/v1/")
        if is_api_post and (refusal := self._route(flow, state)) is not None:
            flow.response = refusal
            return
        swap_credentials(flow.request.headers, self.settings.antigravity_key)
        state.timer = asyncio.get_running_loop().call_later(
            self.settings.upstream_timeout, self._upstream_timed_out, flow
        )

    def _route(self, flow: http.HTTPFlow, state: FlowState) -> http.Response | None:
        """Rewrite the body's `model` per the routing table; refuse malformed JSON."""
        content_type = flow.request.headers.get("content-type", "").lower()
        if content_type.startswith("multipart/"):
            return None
        try:
            raw = flow.request.get_content(strict=True)
        except ValueError:
            return errors.error_response(
                400, "Request body cannot be decoded (bad Content-Encoding)", "invalid_encoding"
            )
        if not raw:
            return None
        try:
            body = parse_json_body(raw)
        except BodyError as exc:
            return errors.error_response(400, str(exc), "invalid_json")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return None
        state.requested_model = body["model"]
        state.routed_model = self.router.route(state.requested_model)
        if state.routed_model != state.requested_model:
            body["model"] = state.routed_model
            flow.request.content = errors.json_bytes(body)
        return None

    def _upstream_timed_out(self, flow: http.HTTPFlow) -> None:
        """No response headers within UPSTREAM_TIMEOUT: answer 504 and drop the upstream."""
        state = state_of(flow)
        if state is None or flow.response is not None or not flow.live:
            return
        state.timed_out = True
        handler = ctx.master.addons.get("proxyserver").connections.get(flow.client_conn.id)
        if handler is None:
            return
        server = flow.server_conn
        if server.connected and not server.tls:
            # Answer on the upstream's behalf, so the 504 takes the normal response path
            # (hooks, logs) and `connection: close` makes mitmproxy drop the upstream socket.
            timeout = self.settings.upstream_timeout
            reply = errors.error_response(
                504,
                f"The upstream did not answer within {timeout:g} seconds (UPSTREAM_TIMEOUT)",
                "upstream_timeout",
                {"connection": "close"},
            )
            event = events.DataReceived(server, http1.assemble_response(reply))
            asyncio_utils.create_task(
                handler.server_event(event), name="apipod upstream timeout", keep_ref=True
            )
        elif server in handler.transports:
            # Still connecting, or TLS (bytes cannot be injected under TLS): close it,
            # and mitmproxy answers with its (JSON) 502.
            handler.close_connection(server)

    # --- response path -----------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is not None and state.timer is not None:
            state.timer.cancel()
        response = flow.response
        assert response is not None
        response.headers.pop("x-api-key", None)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            response.stream = True
            # Ask front proxies such as nginx not to buffer the stream.
            response.headers["x-accel-buffering"] = "no"

    def response(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is not None and flow.response is not None:
            logs.access(flow, state, flow.response.status_code)

    def error(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None:
            return
        if state.timer is not None:
            state.timer.cancel()
        logs.access(flow, state, None)


def runs_in_front_of(modes: list[str], url: str) -> bool:
    """True when one of mitmdump's modes is `reverse:` to the configured upstream."""
    parts = urlsplit(url)
    expected = (
        parts.scheme,
        (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
    )
    for spec in modes:
        mode = ProxyMode.parse(spec)
        if isinstance(mode, ReverseMode) and (mode.scheme, mode.address) == expected:
            return True
    return False


def bearer_token(headers: http.Headers) -> str | None:
    """The key from `Authorization: Bearer <key>`, or None when there is none."""
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def swap_credentials(headers: http.Headers, upstream_key: str) -> None:
    for name in CLIENT_CREDENTIAL_HEADERS:
        headers.pop(name, None)
    headers["x-api-key"] = upstream_key

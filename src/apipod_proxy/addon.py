"""The mitmproxy addon: one object whose hooks walk each request through the proxy.

requestheaders  request id; authenticate and rate-limit before the body is read
                (a refused request never opens an upstream connection)
request         answer internal endpoints, route the model, ask upstream for usage,
                swap credentials, start the upstream timeout
responseheaders stream Server-Sent Events as they arrive, watching them for usage
response/error  count usage and metrics, write the access line

Key lookups are answered from memory while the database is unchanged (keycache.py);
other SQLite work runs on a small thread pool, so no hook stalls the event loop, and
usage is written in batches about once a second.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import sqlite3
import time
from typing import Any, cast

from mitmproxy import http

from . import auth, budgets, errors, keys, logs, mitm_compat
from .account import is_account_path
from .admin import is_internal
from .bodies import BodyError, BodyTooLarge, decoded, json_bytes, parse_json
from .config import Settings
from .connections import ConnectionPolicy
from .flowstate import STATE, FlowState, state_of
from .keycache import MISS
from .lifecycle import Lifecycle, Runtime
from .logs import printable
from .metrics import Metrics
from .models import MODELS_PATH
from .pricing import Plans
from .ratelimit import RateLimiter
from .routing import SESSION_HEADER, Router, conversation_key
from .store import KeyRecord
from .usage import SseWatcher, Usage, UsageRecorder, usage_from_body

log = logging.getLogger("apipod")

#: Larger non-streaming responses are not parsed for usage (they are forwarded all the same).
MAX_USAGE_BODY = 4 << 20
_REQUEST_ID = re.compile(r"[\w.:/+=-]{1,128}")


class Apipod:
    """The request path. Start-up, timed jobs and shutdown live in the `Lifecycle`
    sub-addon, which gives this addon its `runtime` when loading succeeded."""

    def __init__(self, settings: Settings | None = None, router: Router | None = None) -> None:
        self.given_settings = settings
        self.router = router or Router()
        self.plans = Plans()  # prices and tiers, from ROUTES_FILE too
        self.ledger = budgets.SpendLedger()
        self.metrics = Metrics()
        self.limiter = RateLimiter()
        self.usage = UsageRecorder()
        self.in_flight: set[str] = set()
        self.draining = False
        self.runtime: Runtime | None = None
        self.lifecycle = Lifecycle(self)
        self.connections = ConnectionPolicy(self)
        #: Sub-addons: mitmproxy loads and calls them with this one, in this order.
        self.addons = [self.lifecycle, self.connections]

    @property
    def rt(self) -> Runtime:
        """The runtime. mitmproxy only runs the hooks once loading succeeded; before,
        this is None (a property that raised would break mitmproxy's command scan)."""
        return cast(Runtime, self.runtime)

    # --- request path ------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        given_id = flow.request.headers.get("x-request-id", "")
        sane = _REQUEST_ID.fullmatch(given_id) and not keys.looks_keyish(given_id)
        request_id = given_id if sane else "req_" + secrets.token_hex(8)
        state = flow.metadata[STATE] = FlowState(request_id)
        self.in_flight.add(flow.id)
        if has_forbidden_header_bytes(flow.request.headers):
            message = "Header values must not contain CR, LF or NUL"
            flow.response = errors.error_response(400, message, "invalid_request_headers")
            state.answered_by_proxy = True
            return
        if is_internal(flow.request.path.partition("?")[0]):
            state.internal = True
            return
        try:
            flow.response = await self._authenticate(flow.request.headers, state)
        except Exception:  # never let a bug wave an unauthenticated request through
            log.exception("internal error authenticating %s", printable(flow.request.path))
            flow.response = errors.error_response(500, "Internal proxy error", "internal_error")
        state.answered_by_proxy = flow.response is not None

    async def _authenticate(self, headers: http.Headers, state: FlowState) -> http.Response | None:
        """Put the caller's key record on `state`, or return the refusal."""
        key = auth.client_key(headers)
        record = None
        if key is not None and auth.needs_lookup(key):
            try:
                record = await self._lookup(key)
            except sqlite3.Error as exc:
                log.error("key lookup failed: %s", exc)
                message = "The key database is unavailable, try again shortly"
                return errors.error_response(503, message, "database_unavailable")
        if refused := auth.refusal(key, record, keys.now_text()):
            reason, response = refused
            self.metrics.auth_failures.labels(reason).inc()
            return response
        assert record is not None
        state.user = record
        wait = self.limiter.acquire(record.id, budgets.rpm_of(record, self.plans, self.rt.settings))
        if wait:
            self.metrics.rate_limited.inc()
            return errors.error_response(
                429,
                "Rate limit exceeded for this API key; retry later",
                "rate_limit_exceeded",
                {"retry-after": self.limiter.retry_after(wait)},
            )
        return None

    async def _lookup(self, key: str) -> KeyRecord | None:
        """The key's record (None: unknown), from memory while the database is unchanged."""
        key_hash = keys.hash_key(key)
        version = self.rt.key_cache.version()
        cached = self.rt.key_cache.get(key_hash, version)
        if cached is not MISS:
            return cached  # type: ignore[return-value]
        record = await self.rt.db(self.rt.store.find, key_hash)
        self.rt.key_cache.put(key_hash, record, version)
        return record

    async def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or flow.response is not None:
            return
        if state.internal:
            flow.response = await self.rt.db(self.rt.admin.handle, flow.request)
            return
        path = flow.request.path.partition("?")[0]
        if flow.request.method == "GET" and path == MODELS_PATH:
            # Fetched on the loop, bounded; never on the database threads (models.py).
            listing = await self.rt.models.listing(self.router.table.names())
            allowed = budgets.models_of(state.user, self.plans) if state.user else None
            flow.response = errors.json_response(200, budgets.allowed_listing(listing, allowed))
            return
        if is_account_path(path) and state.user is not None:
            flow.response = await self.rt.db(self.rt.account.answer, flow.request, state.user)
            return
        # Swap first: whatever happens next, the client's key never goes upstream.
        auth.swap_credentials(flow.request.headers, self.rt.settings.antigravity_key)
        try:
            is_api_post = flow.request.method == "POST" and flow.request.path.startswith("/v1/")
            refusal = self._rewrite_body(flow, state) if is_api_post else None
            if refusal is None and state.user is not None:
                refusal = budgets.budget_refusal(
                    state.user, self.plans, self.ledger, keys.now_text()
                )
            if refusal is not None:
                flow.response = refusal
                state.answered_by_proxy = True
                return
        except Exception:  # a bug must answer 500, never forward a half-processed request
            log.exception("internal error handling %s", printable(flow.request.path))
            flow.response = errors.error_response(500, "Internal proxy error", "internal_error")
            state.answered_by_proxy = True
            return
        flow.request.headers["x-request-id"] = state.request_id
        state.forwarded_at = time.perf_counter()
        state.timer = asyncio.get_running_loop().call_later(
            self.rt.settings.upstream_timeout,
            mitm_compat.logged(self._upstream_timed_out, "upstream timeout"),
            flow,
        )

    def _rewrite_body(self, flow: http.HTTPFlow, state: FlowState) -> http.Response | None:
        """Route the body's `model` and ask for stream usage; refuse malformed JSON."""
        content_type = flow.request.headers.get("content-type", "").lower()
        if content_type.startswith("multipart/"):
            return None
        try:
            raw = decoded(flow.request, self.rt.settings.max_body_size)
        except BodyTooLarge:
            message = "Decoded request body is larger than the proxy accepts (MAX_BODY_SIZE)"
            return errors.error_response(413, message, "request_too_large")
        except BodyError as exc:
            message = f"Request body cannot be decoded: {exc}"
            return errors.error_response(400, message, "invalid_encoding")
        if not raw:
            return None
        try:
            body = parse_json(raw)
        except BodyError as exc:
            return errors.error_response(400, str(exc), "invalid_json")
        if not isinstance(body, dict):
            return None
        changed = False
        if isinstance(model := body.get("model"), str):
            state.requested_model = model
            if state.user is not None and (
                refusal := budgets.model_refusal(state.user, model, self.plans)
            ):
                return refusal
            conversation = None
            if self.router.is_sticky(model) and state.user is not None:
                session = flow.request.headers.get(SESSION_HEADER)
                conversation = conversation_key(state.user.id, session, body)
            state.routed_model = self.router.route(model, conversation)
            if state.routed_model != model:
                body["model"] = state.routed_model
                changed = True
        if _wants_usage_injected(flow.request.path, body):
            options = body.get("stream_options")
            body["stream_options"] = {**(options or {}), "include_usage": True}
            state.strip_usage_chunk = changed = True
        if changed:
            try:
                flow.request.content = json_bytes(body, strict=True)
            except ValueError:  # 1e400 parses as infinity, which JSON cannot carry
                return errors.error_response(
                    400, "A number in the body is out of range", "invalid_json"
                )
        return None

    def _upstream_timed_out(self, flow: http.HTTPFlow) -> None:
        """No response headers within UPSTREAM_TIMEOUT: answer 504 and drop the upstream."""
        state = state_of(flow)
        if state is None or flow.response is not None or not flow.live:
            return
        state.timed_out = True
        timeout = self.rt.settings.upstream_timeout
        reply = errors.error_response(
            504,
            f"The upstream did not answer within {timeout:g} seconds (UPSTREAM_TIMEOUT)",
            "upstream_timeout",
            {"connection": "close"},
        )
        mitm_compat.answer_for_upstream(flow, reply)

    # --- response path -----------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        response = flow.response
        if state is None or response is None:
            return
        if state.timer is not None:
            state.timer.cancel()
        if state.forwarded_at is not None and not state.timed_out:
            self.metrics.upstream_ttfb.observe(time.perf_counter() - state.forwarded_at)
        response.headers.pop("x-api-key", None)
        response.headers["x-request-id"] = state.request_id
        own_error = (state.answered_by_proxy or state.timed_out) and response.status_code >= 400
        if own_error and errors.is_anthropic_path(flow.request.path):
            response.content = errors.anthropic_shape(response.content or b"")
        if self.draining:
            response.headers["connection"] = "close"
        if response.headers.get("content-type", "").lower().startswith("text/event-stream"):
            state.watcher = SseWatcher(state.strip_usage_chunk)
            response.stream = state.watcher
            # Ask front proxies such as nginx not to buffer the stream.
            response.headers["x-accel-buffering"] = "no"
            self.metrics.active_streams.inc()

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            self._finish(flow, flow.response.status_code)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow, None)

    def _finish(self, flow: http.HTTPFlow, status: int | None) -> None:
        """Count and log a request once, whether it ended in a response or an error."""
        state = state_of(flow)
        if state is None or state.finished:
            return
        state.finished = True
        self.in_flight.discard(flow.id)
        if state.timer is not None:
            state.timer.cancel()
        if state.watcher is not None:
            self.metrics.active_streams.dec()
        if status is None:
            forwarded = state.forwarded_at is not None
            status = 504 if state.timed_out else logs.failure_status(flow.error, forwarded)
        try:
            self._account(flow, state, status)
        except Exception:  # accounting must never break the proxy, nor skip the log line
            log.exception("internal error accounting %s", printable(flow.request.path))
        logs.access(flow, state, status)

    def _account(self, flow: http.HTTPFlow, state: FlowState, status: int) -> None:
        model = printable(state.routed_model or "")
        label = self.metrics.model_label(model)
        self.metrics.requests.labels(label, str(status)).inc()
        self.metrics.duration.observe(time.perf_counter() - state.started)
        if state.user is not None and state.forwarded_at is not None:
            usage = self._usage_of(flow, state)
            # What the upstream failed (5xx, unreachable, timeout) costs nothing.
            cost = self.plans.cost_of(model, usage) if status < 500 else 0.0
            self.ledger.add(state.user.id, cost, keys.now_text())
            self.usage.add(state.user.id, model, status, usage, cost)
            self.rt.request_log.add(
                state.request_id,
                state.user.id,
                state.requested_model and printable(state.requested_model),
                model or None,
                status,
                time.perf_counter() - state.started,
                usage,
                cost,
            )
            if usage.prompt_tokens or usage.completion_tokens:
                self.metrics.tokens.labels(label, "prompt").inc(usage.prompt_tokens)
                self.metrics.tokens.labels(label, "completion").inc(usage.completion_tokens)

    @staticmethod
    def _usage_of(flow: http.HTTPFlow, state: FlowState) -> Usage:
        if state.watcher is not None:
            return state.watcher.usage
        response = flow.response
        if response is None or "json" not in response.headers.get("content-type", ""):
            return Usage()
        try:
            return usage_from_body(decoded(response, MAX_USAGE_BODY))
        except BodyError:  # too large or oddly encoded: forwarded all the same, not counted
            return Usage()


def has_forbidden_header_bytes(headers: http.Headers) -> bool:
    """CR, LF (an obs-fold) or NUL in a value, which a proxy must not pass on (RFC 9110 5.5)."""
    return any(b"\r" in value or b"\n" in value or b"\0" in value for _, value in headers.fields)


def _wants_usage_injected(path: str, body: dict[str, Any]) -> bool:
    """An OpenAI stream that did not ask for its usage chunk (we ask, then strip it)."""
    if body.get("stream") is not True or not path.startswith("/v1/chat/completions"):
        return False
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return False
    return not (options or {}).get("include_usage")

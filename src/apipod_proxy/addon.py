"""The mitmproxy addon: one object whose hooks walk each request through the proxy.

requestheaders  request id; refuse what the forwarding table (forwarding.py) and
                the proxy's own endpoints do not serve; authenticate and rate-limit,
                all before the body is read (a refused request never opens an
                upstream connection)
request         answer internal endpoints, route the model (around models out of
                quota), translate the body to the upstream's API (UPSTREAM_API), ask
                upstream for usage, swap credentials, start the upstream timeout
responseheaders stream Server-Sent Events as they arrive, translated when the request
                was, watching them for usage and quota errors
response/error  translate whole answers back, turn quota answers into 429 and cool the
                model down, count usage and metrics, write the access line

Key lookups are answered from memory while the database is unchanged (keycache.py);
other SQLite work runs on a small thread pool, so no hook stalls the event loop, and
usage is written in batches about once a second.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable, Container
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http import HTTPStatus
from typing import Any, cast

from mitmproxy import http
from mitmproxy.net.http import http1
from redis.exceptions import RedisError

from . import errors, keys, logs, mitm_compat
from .bodies import (
    BodyError,
    BodyTooLarge,
    InvalidJson,
    decoded,
    is_json_type,
    is_model_endpoint,
    json_bytes,
    json_bytes_in_parts,
    model_body_refusal,
    parse_json_strict,
)
from .config import Settings
from .connections import ConnectionPolicy, expects_body
from .endpoints import ENDPOINTS
from .flowstate import STATE, FlowState, state_of
from .lifecycle import Lifecycle, Runtime
from .logs import printable
from .metrics import Metrics
from .pipeline import auth
from .pipeline.usage import SseWatcher, Usage, UsageRecorder, usage_from_body
from .policy import budgets, forwarding
from .policy.pricing import Plans
from .policy.ratelimit import RateLimiter
from .policy.routing import SESSION_HEADER, AllTargetsCooling, Router, conversation_key
from .policy.shared import SPEND_TTL_SECONDS, SharedSpend
from .storage.backend import DB_ERRORS, error_text
from .storage.keycache import MISS
from .storage.sqlite import KeyRecord, SpendRows
from .translate import Direction, TranslationError, direction_for, is_endpoint_missing
from .translate.directions import CHAT_PATH, MESSAGES_PATH
from .translate.failures import (
    cooling_for_anthropic_client,
    cooling_for_openai_client,
    error_for_anthropic_client,
    error_for_openai_client,
)
from .translate.streams import AnthropicPassthroughStream, _SseTranslator
from .upstream.quota import QUOTA_ANSWERS, Cooldowns, QuotaExhausted, retry_after

log = logging.getLogger("apipod")

#: A key lookup the database has not answered in this many seconds is answered 503
#: (longer than SQLite's busy wait and PostgreSQL's wait for a connection).
LOOKUP_TIMEOUT = 10.0
#: Larger non-streaming responses are not parsed for usage (they are forwarded all the same).
MAX_USAGE_BODY = 4 << 20
#: Larger non-streamed answers to a translated request are answered 502, not translated.
MAX_TRANSLATED_BODY = 32 << 20
#: Words every upstream quota answer holds (quota.py), looked for before parsing an error
#: body; the parse then decides (status, error type, and the start of the message).
_QUOTA_HINTS = (b"exhausted your capacity",)
_REQUEST_ID = re.compile(r"[\w.:/+=-]{1,128}")
#: Request bodies larger than this are decoded, parsed, translated and written on a
#: thread, so one large body does not stall every other connection's event loop.
OFF_LOOP_BODY = 1 << 20


class Apipod:
    """The request path. Start-up, timed jobs and shutdown live in the `Lifecycle`
    sub-addon, which gives this addon its `runtime` when loading succeeded."""

    def __init__(self, settings: Settings | None = None, router: Router | None = None) -> None:
        self.given_settings = settings
        self.router = router or Router()
        self.plans = Plans()  # prices and tiers, from ROUTES_FILE too
        #: What reaches the upstream (forwarding.py); [forward] rows from ROUTES_FILE too.
        self.forwarding = forwarding.Forwarding(ENDPOINTS)
        self.ledger = budgets.SpendLedger()
        self._spend_warned = -60.0
        self._spend_tasks: set[asyncio.Task[None]] = set()
        self.metrics = Metrics()
        self.limiter = RateLimiter()
        self.usage = UsageRecorder()
        self.in_flight: set[str] = set()
        #: Models out of upstream quota, kept out of alias rotation until their reset.
        self.cooldowns = Cooldowns()
        self.metrics.watch_cooldowns(self.cooldowns)
        self.draining = False
        self.runtime: Runtime | None = None
        self.lifecycle = Lifecycle(self)
        self.connections = ConnectionPolicy(self)
        #: Sub-addons: mitmproxy loads and calls them with this one, after it, in this order.
        self.addons = [self.lifecycle, self.connections, ChargeBeforeRelease()]

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
        try:
            flow.response = await self._admit(flow, state)
        except Exception:  # never let a bug wave an unauthenticated request through
            log.exception("internal error authenticating %s", logs.shown_path(flow))
            flow.response = errors.error_response(500, "Internal proxy error", "internal_error")
        state.answered_by_proxy = flow.response is not None
        if flow.response is not None and expects_body(flow.request):
            self._answer_unread(flow)

    def _answer_unread(self, flow: http.HTTPFlow) -> None:
        """A request refused on its headers: answered and closed now, its body never read,
        so a slow or large body holds neither a connection nor memory. Logged here: the
        flow mitmproxy goes on with ends as a client disconnect."""
        response = flow.response
        assert response is not None
        self.responseheaders(flow)  # request id, the caller's error shape
        response.headers["connection"] = "close"
        if self.connections.close_unread(flow.client_conn, http1.assemble_response(response)):
            self._finish(flow, response.status_code)

    async def _admit(self, flow: http.HTTPFlow, state: FlowState) -> http.Response | None:
        """The refusal of a request by its headers, or None: an internal path (answered in
        `request`), or a key that may pass (put on `state`)."""
        if has_forbidden_header_bytes(flow.request.headers):
            message = "Header values must not contain CR, LF or NUL"
            return errors.error_response(400, message, "invalid_request_headers")
        if (refused := self._refuse_target(flow, state)) is not None:
            return refused
        if self.rt.endpoints.before_auth(flow.request.path.partition("?")[0]):
            state.internal = True
            return None
        return await self._authenticate(flow.request.headers, state)

    # --- what is forwarded, and who the client is (forwarding.py) ---------------------

    def _refuse_target(self, flow: http.HTTPFlow, state: FlowState) -> http.Response | None:
        """The refusal of a target that neither the proxy nor the forwarding table serves
        (before any key check: nothing there to protect), or None. Resolves the client's
        address (TRUSTED_PROXIES) for the admin throttle and X-Forwarded-For."""
        request, settings = flow.request, self.rt.settings
        peer = flow.client_conn.peername
        state.client, state.client_proto = forwarding.resolve_client(
            str(peer[0]) if peer else "",
            flow.client_conn.tls_established,
            request.headers,
            settings.trusted_proxies,
        )
        if forwarding.is_absolute_form(request):
            message = "Absolute-form request targets (GET http://host/path) are refused"
            return errors.error_response(400, message, "invalid_request_target")
        path = request.path.partition("?")[0]
        own = self.rt.endpoints.owns(request.method, path)
        found = forwarding.refusal(request.method, path, self.forwarding.routes, own)
        if not isinstance(found, forwarding.Refusal):
            return None
        message = logs.redact(found.message)
        return errors.error_response(found.status, message, found.code, dict(found.headers or {}))

    # --- keys ----------------------------------------------------------------------------

    async def _authenticate(self, headers: http.Headers, state: FlowState) -> http.Response | None:
        """Put the caller's key record on `state`, or return the refusal."""
        key = auth.client_key(headers)
        record = None
        if key is not None and auth.needs_lookup(key):
            try:
                async with asyncio.timeout(LOOKUP_TIMEOUT):
                    record = await self._lookup(key)
            except TimeoutError:
                # A hung database holds its thread; the client is answered all the same
                # (a lookup still queued is dropped with the wait).
                log.error("key lookup failed: no answer within %g s", LOOKUP_TIMEOUT)
                message = "The key database is unavailable, try again shortly"
                return errors.error_response(503, message, "database_unavailable")
            except DB_ERRORS as exc:
                log.error("key lookup failed: %s", error_text(exc))
                message = "The key database is unavailable, try again shortly"
                return errors.error_response(503, message, "database_unavailable")
        if refused := auth.refusal(key, record, keys.now_text()):
            reason, response = refused
            self.metrics.auth_failures.labels(reason).inc()
            return response
        assert record is not None
        state.user = record
        rpm = budgets.rpm_of(record, self.plans, self.rt.settings)
        if (shared := self.rt.shared_limiter) is not None:  # REDIS_URL: across replicas
            wait = await shared.acquire(record.id, rpm)
        else:
            wait = self.limiter.acquire(record.id, rpm)
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
        try:
            flow.response = await self._answer_or_prepare(flow, state)
        except Exception:  # a bug must answer 500, never forward a half-processed request
            log.exception("internal error handling %s", logs.shown_path(flow))
            flow.response = errors.error_response(500, "Internal proxy error", "internal_error")
            state.answered_by_proxy = True
            return
        if flow.response is not None:
            return
        flow.request.headers["x-request-id"] = state.request_id
        state.forwarded_at = time.perf_counter()
        state.timer = asyncio.get_running_loop().call_later(
            self.rt.settings.upstream_timeout,
            mitm_compat.logged(self._upstream_timed_out, "upstream timeout"),
            flow,
        )

    async def _answer_or_prepare(
        self, flow: http.HTTPFlow, state: FlowState
    ) -> http.Response | None:
        """The proxy's own answer (internal endpoints, the model list, /account, a
        refusal), or None once the request is ready to forward. Runs under `request`'s
        guard: whatever raises here is answered 500, never forwarded."""
        if (own := await self.rt.endpoints.answer(flow.request, state)) is not None:
            return own  # the endpoint table's row ran where it says, under its guard
        # Swap first: whatever happens next, the client's key never goes upstream.
        auth.swap_credentials(flow.request.headers, self.rt.settings.antigravity_key)
        forwarding.set_forwarding_headers(flow.request.headers, state.client, state.client_proto)
        is_api_post = flow.request.method == "POST" and flow.request.path.startswith("/v1/")
        if is_api_post:
            api = await self.rt.upstream.current_api()
            state.direction = direction_for("POST", flow.request.path, api)
        refusal = await self._rewrite_body(flow, state) if is_api_post else None
        if refusal is None and state.user is not None:
            refusal = await self._hold_budget(state.user, state)
        state.answered_by_proxy = refusal is not None
        return refusal

    async def _hold_budget(self, record: KeyRecord, state: FlowState) -> http.Response | None:
        """Hold the request's estimated cost against a budgeted key's budget, here and
        (REDIS_URL) for every replica; the refusal when it does not fit (budgets.py).
        From memory and Redis only, never the database."""
        budget, period = budgets.budget_of(record, self.plans)
        if budget is None or period is None:
            return None
        shared, amount = self.rt.shared_spend, state.hold_estimate
        if shared is not None and amount <= 0:  # no hold script to read the spend with
            await self._refresh_shared_spend(shared, record)
        now = keys.now_text()
        refusal = budgets.budget_refusal(record, self.plans, self.ledger, now, amount)
        if refusal is not None or amount <= 0:  # nothing to hold: no priced model
            return refusal
        hold_id = secrets.token_hex(8)
        if shared is not None:
            slot = (record.id, period, budgets.period_start(period, now))
            try:
                known = self.ledger.spent(record.id, period, now)
                admitted, spent, held = await shared.hold(slot, budget, amount, hold_id, known)
            except (RedisError, OSError, TimeoutError) as exc:
                self._redis_away(exc)  # this process's holds decide meanwhile
            else:
                self.ledger.note_shared({slot: spent})
                if not admitted:
                    return budgets.quota_refusal(budget, period, spent, held, amount, now)
        self.ledger.hold(record.id, hold_id, amount)
        state.hold_id = hold_id
        return None

    async def _rewrite_body(self, flow: http.HTTPFlow, state: FlowState) -> http.Response | None:
        """Check the body, route its `model`, translate it to the upstream's API or ask for
        stream usage; refuse malformed JSON, a model that cannot be read as one id, and
        what cannot be translated. What is forwarded is the object checked: its very bytes
        when nothing changed (`_forwardable_as_is`), else written again from it."""
        content_type = flow.request.headers.get("content-type", "")
        model_bearing = is_model_endpoint(flow.request.path)
        if model_bearing and not is_json_type(content_type):
            message = "The request body must be JSON (Content-Type: application/json)"
            return errors.error_response(400, message, "unsupported_content_type")
        if content_type.lower().startswith("multipart/"):
            return self._untranslatable(flow, state)
        size = len(flow.request.raw_content or b"")
        limit = self.rt.settings.max_body_size
        try:
            body, state.request_chars = await _off_loop_if_large(
                size, _parse_request, flow.request, limit
            )
        except BodyTooLarge:
            message = "Decoded request body is larger than the proxy accepts (MAX_BODY_SIZE)"
            return errors.error_response(413, message, "request_too_large")
        except InvalidJson as exc:
            return errors.error_response(400, str(exc), "invalid_json")
        except BodyError as exc:
            message = f"Request body cannot be decoded: {exc}"
            return errors.error_response(400, message, "invalid_encoding")
        names_model = model_bearing or (isinstance(body, dict) and "model" in body)
        if names_model and (refused := model_body_refusal(body)):
            return errors.error_response(400, refused.message, refused.code)
        if not isinstance(body, dict):
            return self._untranslatable(flow, state)
        changed = not _forwardable_as_is(flow.request)
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
            try:
                state.routed_model = self.router.route(
                    model, conversation, avoid=self.cooldowns.active()
                )
            except AllTargetsCooling as cooling:
                return self._all_cooling(flow, model, cooling.targets)
            if state.user is not None and (refusal := self._price_check(state, body)):
                return refusal
            if state.routed_model != model:
                body["model"] = state.routed_model
                changed = True
        if state.direction is not None:
            return await self._translate(flow, state, body, size)
        if _wants_usage_injected(flow.request.path, body):
            options = body.get("stream_options")
            body["stream_options"] = {**(options or {}), "include_usage": True}
            state.strip_usage_chunk = changed = True
        if not changed:
            return None  # the very bytes the strict parse read: the object checked
        try:
            content = await _off_loop_if_large(size, _written, body, size)
        except ValueError:  # 1e400 parses as infinity, which JSON cannot carry
            message = "A number in the body is out of range"
            return errors.error_response(400, message, "invalid_json")
        _set_body(flow.request, content)
        return None

    def _price_check(self, state: FlowState, body: dict[str, Any]) -> http.Response | None:
        """A budgeted key: 403 `model_not_priced` for an unpriced routed model, else the
        request's estimated cost, which admission holds against the budget."""
        assert state.user is not None and state.routed_model is not None
        if budgets.budget_of(state.user, self.plans)[0] is None:
            return None
        if refusal := budgets.price_refusal(state.user, state.routed_model, self.plans):
            return refusal
        price = self.plans.price_of(state.routed_model)
        state.hold_estimate = budgets.hold_estimate(body, price)
        return None

    async def _translate(
        self, flow: http.HTTPFlow, state: FlowState, body: dict[str, Any], size: int
    ) -> http.Response | None:
        """Rewrite the request into the upstream's API (path, body, headers)."""
        assert state.direction is not None
        try:
            translated, content = await _off_loop_if_large(
                size, _translated, state.direction, body, size
            )
        except TranslationError as exc:
            return self._translation_refusal(flow, exc)
        except ValueError:  # 1e400 parses as infinity, which JSON cannot carry
            return errors.error_response(
                400, "A number in the body is out of range", "invalid_json"
            )
        state.include_usage = translated.include_usage
        flow.request.path = translated.path
        for name, value in translated.headers.items():
            if name not in flow.request.headers:
                flow.request.headers[name] = value
        _set_body(flow.request, content)
        return None

    def _untranslatable(self, flow: http.HTTPFlow, state: FlowState) -> http.Response | None:
        """A body that is not a JSON object: forwarded as is, unless it needs translating."""
        if state.direction is None:
            return None
        return self._translation_refusal(
            flow, TranslationError("The request body must be a JSON object")
        )

    @staticmethod
    def _translation_refusal(flow: http.HTTPFlow, exc: TranslationError) -> http.Response:
        """400 in the client's shape, code `unsupported_by_upstream` (see docs/translation.md)."""
        if errors.is_anthropic_path(flow.request.path):
            return errors.json_response(400, exc.anthropic_payload())
        return errors.json_response(400, exc.openai_payload())

    def _all_cooling(
        self, flow: http.HTTPFlow, alias: str, targets: tuple[str, ...]
    ) -> http.Response:
        """429 at once, without calling the upstream: every target of `alias` is out of
        quota. Retry-After is the earliest reset."""
        until = self.cooldowns.earliest_reset(targets)
        seconds = max(1.0, (until or 0.0) - time.time())
        if errors.is_anthropic_path(flow.request.path):
            answer = cooling_for_anthropic_client(printable(alias), seconds)
        else:
            answer = cooling_for_openai_client(printable(alias), seconds)
        return errors.json_response(answer.status, answer.payload, answer.headers)

    def _quota_ran_out(self, model: str | None, quota: QuotaExhausted) -> None:
        """The upstream said `model` (the one we sent) is out of quota: cool it down."""
        if not model:
            return
        default, cap = self.rt.settings.quota_cooldown, self.rt.settings.quota_cooldown_max
        if quota.exceeds(cap):
            log.warning(
                "upstream quota for %s names a reset after %s s, longer than "
                "QUOTA_COOLDOWN_MAX: cooled for %s s instead",
                printable(model),
                retry_after(quota.reset_seconds or 0.0),
                retry_after(cap),
            )
        until = self.cooldowns.mark_for(model, quota.reset_seconds, default, cap)
        log.warning(
            "upstream quota for %s is used up: it leaves alias rotation for %s s",
            printable(model),
            retry_after(until - time.time()),
        )

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
        if own_error and _client_speaks_anthropic(flow, state):
            response.content = errors.anthropic_shape(response.content or b"")
        if self.draining:
            response.headers["connection"] = "close"
        if response.headers.get("content-type", "").lower().startswith("text/event-stream"):
            state.watcher = self._stream_watcher(flow, state)
            response.stream = state.watcher
            # Ask front proxies such as nginx not to buffer the stream.
            response.headers["x-accel-buffering"] = "no"
            self.metrics.active_streams.inc()

    def _stream_watcher(self, flow: http.HTTPFlow, state: FlowState) -> SseWatcher | _SseTranslator:
        """The stream callable: a translator, Anthropic's passthrough (which rewrites an
        in-stream quota error), or the plain usage watcher."""
        response = flow.response
        assert response is not None
        stream: _SseTranslator
        if state.direction is not None and 200 <= response.status_code < 300:
            stream = state.direction.stream(state.requested_model, state.include_usage)
            if "content-length" in response.headers:  # the translation changes the length
                del response.headers["content-length"]
                response.headers["transfer-encoding"] = "chunked"
        elif state.direction is None and _is_api_call(flow.request, MESSAGES_PATH):
            stream = AnthropicPassthroughStream()
        else:
            watcher = SseWatcher(state.strip_usage_chunk)
            watcher.meter.request_chars = state.request_chars
            return watcher
        stream.on_quota = partial(self._quota_ran_out, state.routed_model)
        stream.meter.request_chars = state.request_chars
        return stream

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            try:
                self._answer_in_client_api(flow)
            except Exception:  # the answer goes out untranslated rather than not at all
                log.exception("internal error translating %s", logs.shown_path(flow))
            self._finish(flow, flow.response.status_code)

    def _answer_in_client_api(self, flow: http.HTTPFlow) -> None:
        """A whole upstream answer: translated back when the request was; a quota answer
        becomes 429 (and cools the model down); "endpoint not found" asks the upstream
        which API it speaks again."""
        state, response = state_of(flow), flow.response
        if state is None or response is None or state.watcher is not None:
            return
        if state.forwarded_at is None or state.answered_by_proxy or state.timed_out:
            return
        status = response.status_code
        is_chat = _is_api_call(flow.request, CHAT_PATH, MESSAGES_PATH)
        if state.direction is None and not (is_chat and 400 <= status < 500):
            return
        try:
            content = decoded(response, MAX_TRANSLATED_BODY)
        except BodyError:
            if state.direction is None:
                return
            status, content = 502, b"The upstream's answer is too large or cannot be decoded"
        if status in (404, 405) and is_endpoint_missing(status, content):
            self.rt.upstream.recheck()
        if state.direction is not None:
            settings = self.rt.settings
            answer = state.direction.answer(
                status,
                content,
                state.requested_model,
                settings.quota_cooldown,
                settings.quota_cooldown_max,
            )
            new_status, new_content, headers, quota = (
                answer.status,
                answer.content,
                answer.headers,
                answer.quota,
            )
        elif status in QUOTA_ANSWERS and any(hint in content for hint in _QUOTA_HINTS):
            to_client = (
                error_for_anthropic_client
                if errors.is_anthropic_path(flow.request.path)
                else error_for_openai_client
            )
            settings = self.rt.settings
            error = to_client(
                status,
                content,
                state.routed_model,
                settings.quota_cooldown,
                settings.quota_cooldown_max,
            )
            if error.quota is None:
                return  # another 4xx: passed through untouched
            new_status, new_content, headers, quota = (
                error.status,
                error.content,
                error.headers,
                error.quota,
            )
        else:
            return
        response.status_code = new_status
        response.reason = HTTPStatus(new_status).phrase if new_status in _PHRASES else ""
        response.headers.pop("content-encoding", None)
        response.headers["content-type"] = "application/json"
        response.content = new_content
        response.headers.update(headers)
        if quota is not None:
            self._quota_ran_out(state.routed_model, quota)

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
            log.exception("internal error accounting %s", logs.shown_path(flow))
        logs.access(flow, state, status)

    def _account(self, flow: http.HTTPFlow, state: FlowState, status: int) -> None:
        model = printable(state.routed_model or "")
        label = self.metrics.model_label(model, self._known_models(model))
        self.metrics.requests.labels(label, str(status)).inc()
        self.metrics.duration.observe(time.perf_counter() - state.started)
        # The budget hold is settled to the cost below (0 for a failure) in any case.
        release = self._release_hold(state)
        added: SpendRows = {}
        if state.user is not None and state.forwarded_at is not None:
            # A stream's figures are its watcher's, also when the client hung up (`error`):
            # estimated from what was delivered if its usage never came (metering.py).
            usage = self._usage_of(flow, state)
            # What the upstream failed (5xx, unreachable, timeout) costs nothing.
            cost = self._cost(model, usage) if status < 500 else 0.0
            added = self.ledger.add(state.user.id, cost, keys.now_text())
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
        if (added or release) and (shared := self.rt.shared_spend) is not None:
            task = asyncio.get_running_loop().create_task(self._share_spend(shared, added, release))
            self._spend_tasks.add(task)  # a reference until done
            task.add_done_callback(self._spend_tasks.discard)
            state.charging = task

    def _cost(self, model: str, usage: Usage) -> float:
        """USD for `usage` at `model`'s price; estimated reasoning tokens at the output
        price too with BILL_REASONING_ESTIMATE=on."""
        extra = usage.billable_reasoning(self.rt.settings.bill_reasoning_estimate == "on")
        completion = usage.completion_tokens + extra
        return self.plans.cost(model, usage.prompt_tokens, usage.cached_tokens, completion)

    def _known_models(self, model: str) -> Container[str]:
        """Model names that may be metric labels: the routing table's, the upstream's list."""
        table = self.router.table
        if model in self.rt.models.ids or model in table.aliases or model in table.renames:
            return (model,)
        return table.targets()

    async def _refresh_shared_spend(self, shared: SharedSpend, record: KeyRecord) -> None:
        """Read a budgeted key's spend fresh from Redis before admitting it: the ledger only
        hears of other replicas' requests when one of its own ends, which may be long ago."""
        try:
            budget, period = budgets.budget_of(record, self.plans)
            if budget is None or period is None:
                return
            now = keys.now_text()
            slot = (record.id, period, budgets.period_start(period, now))
            self.ledger.note_shared(await shared.totals([slot]))
        except (RedisError, OSError, TimeoutError):
            pass  # the ledger's own figure decides; _share_spend reports the outage
        except Exception:  # never let a bug here forward or fail the request
            log.exception("internal error reading shared spend")

    def _release_hold(self, state: FlowState) -> tuple[int, str] | None:
        """Drop the request's budget hold here; (key id, hold id) to drop in Redis."""
        if state.hold_id is None or state.user is None:
            return None
        release = (state.user.id, state.hold_id)
        self.ledger.release(*release)
        state.hold_id = None
        return release

    async def _share_spend(
        self, shared: SharedSpend, added: SpendRows, release: tuple[int, str] | None = None
    ) -> None:
        """Add a request's cost in Redis and drop its hold, at once; every replica's
        total goes into the ledger. A hold Redis does not hear of lapses (HOLD_TTL)."""
        try:
            self.ledger.note_shared(await shared.add(added, SPEND_TTL_SECONDS, release))
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_away(exc)

    def _redis_away(self, exc: BaseException) -> None:
        # The database still shares spend with every flush; say so once a minute.
        now = time.monotonic()
        if now - self._spend_warned >= 60:
            self._spend_warned = now
            log.warning(
                "Redis unreachable, spend is shared by the database only and budget holds"
                " are per process: %s",
                f"{type(exc).__name__}: {exc}".strip().rstrip(":"),
            )

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


async def _off_loop_if_large[T](size: int, func: Callable[..., T], *args: Any) -> T:
    """`func(*args)`, on the body thread when the body is over OFF_LOOP_BODY bytes.

    The GIL still serialises the work, but the loop gets a turn at every switch interval
    (5 ms) instead of waiting for the whole parse. One thread, not a pool: with four
    threads wanting the GIL, each turn of the loop waited for all of them (a 0.03 s
    request took 0.3-0.7 s during four 29 MB bodies; with one, see test_e2e_bodies)."""
    if size > OFF_LOOP_BODY:
        return await asyncio.get_running_loop().run_in_executor(_BODY_THREAD, func, *args)
    return func(*args)


_BODY_THREAD = ThreadPoolExecutor(1, thread_name_prefix="apipod body")


def _parse_request(request: http.Request, limit: int) -> tuple[Any, int]:
    """The request body decoded and parsed strictly (`None` when there is none), and its
    decoded length (what a cut stream's prompt is estimated from, metering.py)."""
    raw = decoded(request, limit)
    return (parse_json_strict(raw) if raw else None), len(raw)


def _written(body: Any, size: int) -> bytes:
    """Strict compact JSON; in parts for a large body (it is being written on a thread)."""
    return json_bytes_in_parts(body) if size > OFF_LOOP_BODY else json_bytes(body, strict=True)


def _translated(direction: Direction, body: dict[str, Any], size: int) -> tuple[Any, bytes]:
    translated = direction.request(body)
    return translated, _written(translated.body, size)


def _forwardable_as_is(request: http.Request) -> bool:
    """Whether the raw bytes, once strictly parsed, are the object checked to any reader:
    not compressed (decoders differ, e.g. on gzip members after the first) and without a
    BOM (which some readers refuse or keep). Only such bodies may go out unchanged; every
    other one is written again from the object."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    raw = request.raw_content or b""
    return encoding in ("", "identity") and not raw.startswith(b"\xef\xbb\xbf")


def _set_body(request: http.Request, content: bytes) -> None:
    """Forward `content`, written from the decoded body: it goes out uncompressed."""
    request.headers.pop("content-encoding", None)
    request.content = content


def has_forbidden_header_bytes(headers: http.Headers) -> bool:
    """CR, LF (an obs-fold) or NUL in a value, which a proxy must not pass on (RFC 9110 5.5)."""
    return any(b"\r" in value or b"\n" in value or b"\0" in value for _, value in headers.fields)


_PHRASES = {status.value for status in HTTPStatus}


def _client_speaks_anthropic(flow: http.HTTPFlow, state: FlowState) -> bool:
    """Whether the client uses the Messages API (the path may have been translated)."""
    if state.direction is not None:
        return state.direction is Direction.ANTHROPIC_TO_OPENAI
    # An unknown path (a 404) says nothing: the Anthropic SDKs send anthropic-version.
    return (
        errors.is_anthropic_path(flow.request.path) or "anthropic-version" in flow.request.headers
    )


def _is_api_call(request: http.Request, *paths: str) -> bool:
    """A POST to one of `paths` (a query string and a trailing slash aside)."""
    return request.method == "POST" and request.path.partition("?")[0].rstrip("/") in paths


def _wants_usage_injected(path: str, body: dict[str, Any]) -> bool:
    """An OpenAI stream that did not ask for its usage chunk (we ask, then strip it)."""
    if body.get("stream") is not True or not path.startswith("/v1/chat/completions"):
        return False
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return False
    return not (options or {}).get("include_usage")


class ChargeBeforeRelease:
    """Hold a priced answer's end until its cost is in Redis (REDIS_URL).

    mitmproxy calls `response` before the end of the message reaches the client, streamed
    or not, and calls this sub-addon after `Apipod.response` has started the charge. The
    client's next request, on whichever replica, is then admitted against a spend that
    includes this one. The wait is bounded by sharedlimit.TIMEOUT; without Redis, or for
    a request that costs nothing, there is nothing to wait for.
    """

    async def response(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is not None and state.charging is not None:
            await asyncio.wait({state.charging})

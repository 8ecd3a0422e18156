"""Answers: what the client gets back from the upstream.

forwarded        the upstream timeout starts (UPSTREAM_TIMEOUT: 504 when no response
                 headers come in time)
headers          the upstream's key never echoed, the request id, a close while
                 draining; Server-Sent Events are streamed as they arrive through a
                 watcher that counts usage and reads quota errors, translated back
                 when the request was (translate/streams.py)
whole answers    translated back when the request was; an upstream quota answer
                 becomes 429 and cools the model down; "endpoint not found" asks the
                 upstream which API it speaks again
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import TYPE_CHECKING

from .. import mitm_compat
from ..bodies import BodyError, decoded
from ..flowstate import Traffic, state_of
from ..logs import printable
from ..translate import is_endpoint_missing
from ..translate.directions import CHAT_PATH, MESSAGES_PATH
from ..translate.responses_stream import Chained
from ..translate.streams import AnthropicPassthroughStream, _SseTranslator
from ..upstream.quota import QUOTA_ANSWERS, QuotaExhausted, retry_after
from .usage import SseWatcher

if TYPE_CHECKING:
    from mitmproxy import http

    from ..config import Settings
    from ..flowstate import FlowState
    from ..metrics import Metrics
    from ..upstream.probe import Upstream
    from ..upstream.quota import Cooldowns

log = logging.getLogger("apipod")

#: Larger non-streamed answers to a translated request are answered 502, not translated.
MAX_TRANSLATED_BODY = 32 << 20
#: Words every upstream quota answer holds (upstream/quota.py), looked for before parsing
#: an error body; the parse then decides (status, error type, and the start of the message).
_QUOTA_HINTS = (b"exhausted your capacity",)
_PHRASES = {status.value for status in HTTPStatus}


@dataclass(slots=True)
class Answers:
    settings: Settings
    metrics: Metrics
    cooldowns: Cooldowns
    upstream: Upstream
    traffic: Traffic

    # --- the request leaves -----------------------------------------------------------

    def forwarded(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """The request goes upstream now: its id, and the upstream timeout."""
        flow.request.headers["x-request-id"] = state.request_id
        state.forwarded_at = time.perf_counter()
        state.timer = asyncio.get_running_loop().call_later(
            self.settings.upstream_timeout,
            mitm_compat.logged(self.upstream_timed_out, "upstream timeout"),
            flow,
        )

    def upstream_timed_out(self, flow: http.HTTPFlow) -> None:
        """No response headers within UPSTREAM_TIMEOUT: answer 504 and drop the upstream."""
        state = state_of(flow)
        if state is None or flow.response is not None or not flow.live:
            return
        state.timed_out = True
        timeout = self.settings.upstream_timeout
        reply = state.api.error(
            504,
            f"The upstream did not answer within {timeout:g} seconds (UPSTREAM_TIMEOUT)",
            "upstream_timeout",
            {"connection": "close"},
        )
        mitm_compat.answer_for_upstream(flow, reply)

    # --- response headers -------------------------------------------------------------

    def headers(self, flow: http.HTTPFlow) -> None:
        """Response headers arrived (or the proxy answered): stream SSE through a watcher."""
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
        if self.traffic.draining:
            response.headers["connection"] = "close"
        if response.headers.get("content-type", "").lower().startswith("text/event-stream"):
            state.watcher = self._stream_watcher(flow, state)
            response.stream = state.watcher
            # Ask front proxies such as nginx not to buffer the stream.
            response.headers["x-accel-buffering"] = "no"
            self.metrics.active_streams.inc()

    def _stream_watcher(
        self, flow: http.HTTPFlow, state: FlowState
    ) -> SseWatcher | _SseTranslator | Chained:
        """The stream callable: a translator, Anthropic's passthrough (which rewrites an
        in-stream quota error), or the plain usage watcher."""
        response = flow.response
        assert response is not None
        stream: _SseTranslator | Chained
        if state.direction is not None and 200 <= response.status_code < 300:
            stream = state.direction.stream(
                state.requested_model, state.include_usage, state.translation_context
            )
            if "content-length" in response.headers:  # the translation changes the length
                del response.headers["content-length"]
                response.headers["transfer-encoding"] = "chunked"
        elif state.direction is None and _is_api_call(flow.request, MESSAGES_PATH):
            stream = AnthropicPassthroughStream()
        else:
            watcher = SseWatcher(state.strip_usage_chunk)
            watcher.meter.request_chars = state.request_chars
            return watcher
        stream.on_quota = partial(self.quota_ran_out, state.routed_model)
        stream.meter.request_chars = state.request_chars
        return stream

    # --- whole answers ----------------------------------------------------------------

    def whole(self, flow: http.HTTPFlow) -> None:
        """A whole upstream answer, in the client's API: translated back when the request
        was; a quota answer becomes 429 (and cools the model down); "endpoint not found"
        asks the upstream which API it speaks again."""
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
            self.upstream.recheck()
        cooldown, cap = self.settings.quota_cooldown, self.settings.quota_cooldown_max
        if state.direction is not None:
            answer = state.direction.answer(
                status, content, state.requested_model, cooldown, cap, state.translation_context
            )
            new_status, new_content, headers, quota = (
                answer.status,
                answer.content,
                answer.headers,
                answer.quota,
            )
        elif status in QUOTA_ANSWERS and any(hint in content for hint in _QUOTA_HINTS):
            error = state.api.upstream_error(status, content, state.routed_model, cooldown, cap)
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
            self.quota_ran_out(state.routed_model, quota)

    def quota_ran_out(self, model: str | None, quota: QuotaExhausted) -> None:
        """The upstream said `model` (the one we sent) is out of quota: cool it down."""
        if not model:
            return
        default, cap = self.settings.quota_cooldown, self.settings.quota_cooldown_max
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


def _is_api_call(request: http.Request, *paths: str) -> bool:
    """A POST to one of `paths` (a query string and a trailing slash aside)."""
    return request.method == "POST" and request.path.partition("?")[0].rstrip("/") in paths

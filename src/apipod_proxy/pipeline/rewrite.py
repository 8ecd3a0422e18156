"""Rewrite: what is forwarded, once a request is admitted and its body read.

    credentials   every client credential dropped, the upstream key added (first:
                  whatever happens next, the client's key never goes upstream), and the
                  proxy's own X-Forwarded-For/-Proto (policy/forwarding.py)
    body          decoded and parsed strictly; a model that cannot be read as one id, a
                  body that is not JSON, a chat body with neither `messages` nor `input`,
                  or one too large decoded: 400/413
    model         the route (aliases, around models out of quota: 429 when every
                  target is; patterns and the default route for names the upstream's
                  list lacks), the key's allow-list (403), a budgeted key's price (403) and the
                  estimate its budget hold is for
    translation   into the upstream's API when it does not speak the client's (translate/,
                  ClientApi.translation); else an OpenAI stream is asked for its usage

What is forwarded is the object checked: its very bytes when nothing changed
(`_forwardable_as_is`), else written again from it. Bodies over OFF_LOOP_BODY are
decoded, parsed, translated and written on a thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import credentials
from ..bodies import (
    BodyError,
    BodyTooLarge,
    InvalidJson,
    decoded,
    is_json_type,
    is_model_endpoint,
    model_body_refusal,
    parse_json_strict,
)
from ..jsonenc import json_bytes, json_bytes_in_parts
from ..logs import printable
from ..policy import budgets, forwarding
from ..policy.routing import SESSION_HEADER, AllTargetsCooling, conversation_key
from ..translate import TranslationError

if TYPE_CHECKING:
    from mitmproxy import http

    from ..config import Settings
    from ..flowstate import FlowState
    from ..policy.pricing import Plans
    from ..policy.routing import Router
    from ..translate import Direction
    from ..upstream.models import ModelList
    from ..upstream.probe import Upstream
    from ..upstream.quota import Cooldowns

#: Request bodies larger than this are decoded, parsed, translated and written on a
#: thread, so one large body does not stall every other connection's event loop.
OFF_LOOP_BODY = 1 << 20
_OUT_OF_RANGE = "A number in the body is out of range"


@dataclass(slots=True)
class Rewrite:
    settings: Settings
    router: Router
    plans: Plans
    cooldowns: Cooldowns
    #: Which API the upstream speaks (UPSTREAM_API, or what its probe found).
    upstream: Upstream
    #: The upstream's model list, for patterns and the default route (None: unknown).
    models: ModelList | None = None

    async def prepare(self, flow: http.HTTPFlow, state: FlowState) -> http.Response | None:
        """Make the request ready to forward, or the refusal."""
        request = flow.request
        credentials.swap_credentials(request.headers, self.settings.antigravity_key)
        forwarding.set_forwarding_headers(request.headers, state.client, state.client_proto)
        if request.method != "POST" or not request.path.startswith("/v1/"):
            return None
        api = await self.upstream.current_api()
        state.direction = state.api.translation("POST", request.path, api)
        return await self._rewrite_body(flow, state, api)

    async def _rewrite_body(
        self, flow: http.HTTPFlow, state: FlowState, api: str
    ) -> http.Response | None:
        request = flow.request
        content_type = request.headers.get("content-type", "")
        model_bearing = is_model_endpoint(request.path)
        if model_bearing and not is_json_type(content_type):
            message = "The request body must be JSON (Content-Type: application/json)"
            return state.api.error(400, message, "unsupported_content_type")
        if content_type.lower().startswith("multipart/"):
            return self._untranslatable(state)
        size = len(request.raw_content or b"")
        limit = self.settings.max_body_size
        try:
            body, state.request_chars = await _off_loop_if_large(
                size, _parse_request, request, limit
            )
        except BodyTooLarge:
            message = "Decoded request body is larger than the proxy accepts (MAX_BODY_SIZE)"
            return state.api.error(413, message, "request_too_large")
        except InvalidJson as exc:
            return state.api.error(400, str(exc), "invalid_json")
        except BodyError as exc:
            message = f"Request body cannot be decoded: {exc}"
            return state.api.error(400, message, "invalid_encoding")
        names_model = model_bearing or (isinstance(body, dict) and "model" in body)
        if names_model and (refused := model_body_refusal(body, request.path)):
            return state.api.error(400, refused.message, refused.code)
        if not isinstance(body, dict):
            return self._untranslatable(state)
        # A Responses-shaped body on the Chat Completions path (Cursor's Agent mode).
        state.direction = state.api.translation("POST", request.path, api, body)
        changed = not _forwardable_as_is(request)
        if isinstance(model := body.get("model"), str):
            state.requested_model = model
            if (refusal := await self._route(flow, state, body, model)) is not None:
                return refusal
            if state.routed_model != model:
                body["model"] = state.routed_model
                changed = True
        if state.direction is not None:
            return await self._translate(flow, state, body, size)
        if _wants_usage_injected(request.path, body):
            options = body.get("stream_options")
            body["stream_options"] = {**(options or {}), "include_usage": True}
            state.strip_usage_chunk = changed = True
        if not changed:
            return None  # the very bytes the strict parse read: the object checked
        try:
            content = await _off_loop_if_large(size, _written, body, size)
        except ValueError:  # 1e400 parses as infinity, which JSON cannot carry
            return state.api.error(400, _OUT_OF_RANGE, "invalid_json")
        _set_body(request, content)
        return None

    async def _route(
        self, flow: http.HTTPFlow, state: FlowState, body: dict[str, Any], model: str
    ) -> http.Response | None:
        """Check `model` against the key's allow-list, route it (`state.routed_model`)
        and price it for a budgeted key; the refusal, or None."""
        user = state.user
        table = self.router.table
        listed = None
        if self.models is not None and table.needs_listing(model):
            listed = await self.models.known_ids()  # cached; bounded when it fetches
        match = table.match(model, listed)
        if user is not None and (
            refusal := budgets.model_refusal(user, model, self.plans, via=match.via)
        ):
            return state.api.refuse(refusal)
        conversation = None
        if match.sticky and user is not None:
            session = flow.request.headers.get(SESSION_HEADER)
            conversation = conversation_key(user.id, session, body)
        try:
            state.routed_model = self.router.route_match(
                match, conversation, avoid=self.cooldowns.active()
            )
        except AllTargetsCooling as cooling:
            until = self.cooldowns.earliest_reset(cooling.targets)
            seconds = max(1.0, (until or 0.0) - time.time())
            return state.api.cooling(printable(model), seconds)
        if user is not None:
            return self._price(state, body)
        return None

    def _price(self, state: FlowState, body: dict[str, Any]) -> http.Response | None:
        """A budgeted key: 403 `model_not_priced` for an unpriced routed model, else the
        request's estimated cost, which accounting holds against the budget."""
        assert state.user is not None and state.routed_model is not None
        if budgets.budget_of(state.user, self.plans)[0] is None:
            return None
        if refusal := budgets.price_refusal(state.user, state.routed_model, self.plans):
            return state.api.refuse(refusal)
        price = self.plans.price_of(state.routed_model)
        state.hold_estimate = budgets.hold_estimate(body, price)
        return None

    async def _translate(
        self, flow: http.HTTPFlow, state: FlowState, body: dict[str, Any], size: int
    ) -> http.Response | None:
        """Rewrite the request into the upstream's API (path, body, headers)."""
        assert state.direction is not None
        request = flow.request
        try:
            translated, content = await _off_loop_if_large(
                size, _translated, state.direction, body, size
            )
        except TranslationError as exc:
            return state.api.untranslatable(exc)
        except ValueError:  # 1e400 parses as infinity, which JSON cannot carry
            return state.api.error(400, _OUT_OF_RANGE, "invalid_json")
        state.include_usage = translated.include_usage
        state.translation_context = translated.context
        request.path = translated.path
        for name, value in translated.headers.items():
            if name not in request.headers:
                request.headers[name] = value
        _set_body(request, content)
        return None

    @staticmethod
    def _untranslatable(state: FlowState) -> http.Response | None:
        """A body that is not a JSON object: forwarded as is, unless it needs translating."""
        if state.direction is None:
            return None
        return state.api.untranslatable(TranslationError("The request body must be a JSON object"))


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


def _wants_usage_injected(path: str, body: dict[str, Any]) -> bool:
    """An OpenAI stream that did not ask for its usage chunk (we ask, then strip it)."""
    if body.get("stream") is not True or not path.startswith("/v1/chat/completions"):
        return False
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return False
    return not (options or {}).get("include_usage")

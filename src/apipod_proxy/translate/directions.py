"""Which translation a request needs, and one entry point per hook for each direction.

The addon asks `direction_for(method, path, upstream_api)` in its request hook. When
the answer is not None, it calls, in order:

    request hook          translated = direction.request(body)       (TranslationError: 400)
                          flow.request.path = translated.path; content = translated.body;
                          add translated.headers the client did not send
    responseheaders hook  SSE: flow.response.stream =
                              direction.stream(model, include_usage, translated.context)
    response hook         not SSE: direction.answer(status, content, model, default_reset,
                              context=translated.context)

A Responses-shaped body on the Chat Completions path (Cursor's Agent mode) is told by
its body, once it is parsed: `direction_for(..., body)`.

`UPSTREAM_API` values: "anthropic" (the upstream speaks only Messages), "openai" (only
Chat Completions), "both" (forward each request as it came). "auto" is resolved to one of
these at startup (see `api_from_probe`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..jsonenc import json_bytes
from ..upstream.quota import QuotaExhausted
from .failures import Shape, error_for_client
from .requests import anthropic_request_to_openai, openai_request_to_anthropic
from .responses import anthropic_response_to_openai, openai_response_to_anthropic
from .responses_api import (
    RESPONSES_PATH,
    ResponsesContext,
    chat_answer_for_cursor,
    chat_response_to_responses,
    is_responses_body,
    responses_request_to_chat,
)
from .responses_stream import Chained, ChatToResponsesStream, CursorChatStream
from .streams import AnthropicToOpenAIStream, OpenAIToAnthropicStream, _SseTranslator

CHAT_PATH = "/v1/chat/completions"
MESSAGES_PATH = "/v1/messages"
UPSTREAM_APIS = ("auto", "anthropic", "openai", "both")
#: Sent with translated Messages requests when the client (an OpenAI one) sent none.
ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True, slots=True)
class TranslatedRequest:
    path: str
    body: dict[str, Any]
    stream: bool
    include_usage: bool
    #: Headers to add upstream when the client did not send them.
    headers: dict[str, str] = field(default_factory=dict)
    #: What the answer needs from the request (Responses: custom tools, echoed fields).
    context: ResponsesContext | None = None


@dataclass(slots=True)
class TranslatedAnswer:
    """A complete (non-streamed) answer in the client's API; `quota` set for a quota answer."""

    status: int
    content: bytes
    headers: dict[str, str] = field(default_factory=dict)
    quota: QuotaExhausted | None = None


class Direction(Enum):
    """client API -> upstream API."""

    OPENAI_TO_ANTHROPIC = "openai->anthropic"
    ANTHROPIC_TO_OPENAI = "anthropic->openai"
    #: `/v1/responses`, through Chat Completions (and on to Messages).
    RESPONSES_TO_ANTHROPIC = "responses->anthropic"
    RESPONSES_TO_OPENAI = "responses->openai"
    #: A Responses body on `/v1/chat/completions` (Cursor), answered as Chat Completions.
    CURSOR_TO_ANTHROPIC = "responses-on-chat->anthropic"
    CURSOR_TO_OPENAI = "responses-on-chat->openai"

    @property
    def client(self) -> Shape:
        """The error shape the client reads (the Responses API's is OpenAI's)."""
        return "anthropic" if self is Direction.ANTHROPIC_TO_OPENAI else "openai"

    @property
    def client_api(self) -> str:
        """The API the client speaks (clientapi.ClientApi's values)."""
        if self is Direction.ANTHROPIC_TO_OPENAI:
            return "anthropic"
        if self in (Direction.RESPONSES_TO_ANTHROPIC, Direction.RESPONSES_TO_OPENAI):
            return "responses"
        return "openai"

    @property
    def to_anthropic(self) -> bool:
        return self in _TO_ANTHROPIC

    def request(self, body: dict[str, Any]) -> TranslatedRequest:
        """The upstream path and body; raises TranslationError for what cannot map."""
        if self is Direction.ANTHROPIC_TO_OPENAI:
            back = anthropic_request_to_openai(body)
            return TranslatedRequest(CHAT_PATH, back.body, back.stream, False)
        context = None
        include_usage = False
        if self is Direction.OPENAI_TO_ANTHROPIC:
            chat = body
        else:
            cursor = self in (Direction.CURSOR_TO_ANTHROPIC, Direction.CURSOR_TO_OPENAI)
            translated = responses_request_to_chat(body, for_cursor=cursor)
            chat, context, include_usage = (
                translated.body,
                translated.context,
                translated.include_usage,
            )
            if not self.to_anthropic:
                return TranslatedRequest(
                    CHAT_PATH, chat, translated.stream, include_usage, context=context
                )
        forward = openai_request_to_anthropic(chat)
        if context is None:
            include_usage = forward.include_usage
        return TranslatedRequest(
            MESSAGES_PATH,
            forward.body,
            forward.stream,
            include_usage,
            {"anthropic-version": ANTHROPIC_VERSION},
            context,
        )

    def stream(
        self,
        model: str | None,
        include_usage: bool = False,
        context: ResponsesContext | None = None,
    ) -> _SseTranslator | Chained:
        """The `flow.response.stream` callable for a 200 SSE answer."""
        if self is Direction.OPENAI_TO_ANTHROPIC:
            return AnthropicToOpenAIStream(model, include_usage)
        if self is Direction.ANTHROPIC_TO_OPENAI:
            return OpenAIToAnthropicStream(model)
        if self is Direction.RESPONSES_TO_OPENAI:
            return ChatToResponsesStream(model, context)
        if self is Direction.RESPONSES_TO_ANTHROPIC:
            # The usage chunk is always asked of the first: the second reads it.
            return Chained(
                AnthropicToOpenAIStream(model, True), ChatToResponsesStream(model, context)
            )
        custom = context.custom if context is not None else frozenset()
        if self is Direction.CURSOR_TO_OPENAI:
            return CursorChatStream(custom, include_usage)
        first = AnthropicToOpenAIStream(model, include_usage)
        return Chained(first, CursorChatStream(custom)) if custom else first

    def answer(
        self,
        status: int,
        content: bytes,
        model: str | None = None,
        default_reset: float = 60.0,
        max_reset: float = math.inf,
        context: ResponsesContext | None = None,
    ) -> TranslatedAnswer:
        """A whole upstream answer (success or error) in the client's API.

        `model` is the model the client asked for (shown in the answer) and the one the
        quota message is about; `default_reset` is the cooldown when a quota answer names
        no reset time, `max_reset` the longest one (QUOTA_COOLDOWN_MAX).
        """
        if status >= 400:
            error = error_for_client(self.client, status, content, model, default_reset, max_reset)
            return TranslatedAnswer(error.status, error.content, error.headers, error.quota)
        try:
            body = json.loads(content)
        except (ValueError, RecursionError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return self.answer(502, b"The upstream sent an answer that is not a JSON object")
        if self is Direction.ANTHROPIC_TO_OPENAI:
            return TranslatedAnswer(status, json_bytes(openai_response_to_anthropic(body, model)))
        if self.to_anthropic:
            body = anthropic_response_to_openai(body, model)
        context = context or ResponsesContext()
        if self in (Direction.RESPONSES_TO_ANTHROPIC, Direction.RESPONSES_TO_OPENAI):
            body = chat_response_to_responses(body, context, model)
        elif self in (Direction.CURSOR_TO_ANTHROPIC, Direction.CURSOR_TO_OPENAI):
            body = chat_answer_for_cursor(body, context.custom)
        return TranslatedAnswer(status, json_bytes(body))


_TO_ANTHROPIC = frozenset(
    {
        Direction.OPENAI_TO_ANTHROPIC,
        Direction.RESPONSES_TO_ANTHROPIC,
        Direction.CURSOR_TO_ANTHROPIC,
    }
)


def direction_for(method: str, path: str, upstream_api: str, body: Any = None) -> Direction | None:
    """The translation a request needs under UPSTREAM_API (already resolved, not "auto").

    `/v1/responses` is always translated: to Chat Completions, and on to Messages over an
    Anthropic-only upstream (while the API is unknown, "both", as over an OpenAI one).
    With its parsed `body`, a Responses-shaped body on the Chat Completions path is too.
    """
    if method != "POST":
        return None
    bare = path.partition("?")[0].rstrip("/")
    if bare == RESPONSES_PATH:
        if upstream_api == "anthropic":
            return Direction.RESPONSES_TO_ANTHROPIC
        return Direction.RESPONSES_TO_OPENAI
    if bare == CHAT_PATH and is_responses_body(body):
        if upstream_api == "anthropic":
            return Direction.CURSOR_TO_ANTHROPIC
        return Direction.CURSOR_TO_OPENAI
    if upstream_api == "anthropic" and bare == CHAT_PATH:
        return Direction.OPENAI_TO_ANTHROPIC
    if upstream_api == "openai" and bare == MESSAGES_PATH:
        return Direction.ANTHROPIC_TO_OPENAI
    return None


def is_endpoint_missing(status: int, content: bytes) -> bool:
    """The upstream's "no such endpoint" (not a 404 about a model or another resource).

    antigravity-claude-proxy: `not_found_error` "Endpoint POST /v1/... not found";
    OpenAI-style servers: code `unknown_url`, or a bare 404 without a JSON error.
    """
    if status not in (404, 405):
        return False
    try:
        payload = json.loads(content)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return True  # an HTML or empty 404: nothing serves that path
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return True
    message = str(error.get("message", "")).lower()
    return (
        error.get("code") == "unknown_url"
        or (message.startswith("endpoint ") and message.endswith(" not found"))
        or "invalid url" in message
        or "unknown request url" in message
        or status == 405
    )


def api_from_probe(
    chat: tuple[int, bytes] | None, messages: tuple[int, bytes] | None
) -> str | None:
    """UPSTREAM_API from probing both endpoints with an empty POST (which spends no tokens).

    Each argument is the (status, body) the endpoint answered, or None when the probe
    failed (upstream down). A path is served unless it answered "endpoint not found":
    an empty body gets 400 or 422 from a served endpoint. The probe must carry the
    upstream key: antigravity-claude-proxy checks it before routing, so a 401 or 403
    says nothing about the path. None when nothing can be concluded, so the caller
    keeps its current choice and retries later.
    """
    if chat is None or messages is None:
        return None
    if {chat[0], messages[0]} & {401, 403}:
        return None  # refused before routing (the upstream key is wrong): nothing learned
    serves_chat = not is_endpoint_missing(*chat)
    serves_messages = not is_endpoint_missing(*messages)
    if serves_chat and serves_messages:
        return "both"
    if serves_messages:
        return "anthropic"
    if serves_chat:
        return "openai"
    return None

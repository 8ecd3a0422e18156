"""Which translation a request needs, and one entry point per hook for each direction.

The addon asks `direction_for(method, path, upstream_api)` in its request hook. When
the answer is not None, it calls, in order:

    request hook          translated = direction.request(body)       (TranslationError: 400)
                          flow.request.path = translated.path; content = translated.body;
                          add translated.headers the client did not send
    responseheaders hook  SSE: flow.response.stream = direction.stream(model, include_usage)
    response hook         not SSE: direction.answer(status, content, model, default_reset)

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
from .streams import AnthropicToOpenAIStream, OpenAIToAnthropicStream

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

    @property
    def client(self) -> Shape:
        """The API the client speaks."""
        return "openai" if self is Direction.OPENAI_TO_ANTHROPIC else "anthropic"

    def request(self, body: dict[str, Any]) -> TranslatedRequest:
        """The upstream path and body; raises TranslationError for what cannot map."""
        if self is Direction.OPENAI_TO_ANTHROPIC:
            forward = openai_request_to_anthropic(body)
            return TranslatedRequest(
                MESSAGES_PATH,
                forward.body,
                forward.stream,
                forward.include_usage,
                {"anthropic-version": ANTHROPIC_VERSION},
            )
        back = anthropic_request_to_openai(body)
        return TranslatedRequest(CHAT_PATH, back.body, back.stream, False)

    def stream(
        self, model: str | None, include_usage: bool = False
    ) -> AnthropicToOpenAIStream | OpenAIToAnthropicStream:
        """The `flow.response.stream` callable for a 200 SSE answer."""
        if self is Direction.OPENAI_TO_ANTHROPIC:
            return AnthropicToOpenAIStream(model, include_usage)
        return OpenAIToAnthropicStream(model)

    def answer(
        self,
        status: int,
        content: bytes,
        model: str | None = None,
        default_reset: float = 60.0,
        max_reset: float = math.inf,
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
        if self is Direction.OPENAI_TO_ANTHROPIC:
            return TranslatedAnswer(status, json_bytes(anthropic_response_to_openai(body, model)))
        return TranslatedAnswer(status, json_bytes(openai_response_to_anthropic(body, model)))


def direction_for(method: str, path: str, upstream_api: str) -> Direction | None:
    """The translation a request needs under UPSTREAM_API (already resolved, not "auto")."""
    if method != "POST":
        return None
    bare = path.partition("?")[0].rstrip("/")
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

"""The API a client speaks, read once from its request and kept on its FlowState.

`ClientApi` owns what differs between the APIs a client may speak: the shape of the
errors the proxy answers itself, the answer when every model behind an alias is out of
quota, the shape an upstream error is given, and which translation (translate/) a
request needs under UPSTREAM_API. Nothing else in the request path asks the path again.

    OPENAI     Chat Completions and Completions, and any path not Anthropic's
    RESPONSES  OpenAI Responses (`/v1/responses`); its errors are OpenAI's shape, which
               the openai SDK reads for it too (`error.message`, `error.code`)
    ANTHROPIC  Messages (`/v1/messages…`); on a path the proxy does not serve, a
               request with `anthropic-version` (the Anthropic SDKs send it)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import Enum
from typing import Any

from mitmproxy import http

from . import errors
from .errors import Refusal
from .translate import Direction, TranslationError, direction_for
from .translate.failures import ErrorAnswer, Shape, cooling_for_client, error_for_client

#: Paths of the OpenAI APIs the proxy forwards: a client there speaks OpenAI's, whatever
#: other headers it sends.
_OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions")
_RESPONSES_PATH = "/v1/responses"
_ANTHROPIC_PREFIX = "/v1/messages"


class ClientApi(Enum):
    OPENAI = "openai"
    RESPONSES = "responses"
    ANTHROPIC = "anthropic"

    @classmethod
    def of(cls, path: str, headers: Mapping[str, str]) -> ClientApi:
        """The API of a request as the client sent it (before any translation)."""
        bare = path.partition("?")[0]
        if bare.startswith(_ANTHROPIC_PREFIX):
            return cls.ANTHROPIC
        if bare.startswith(_OPENAI_PATHS):
            return cls.OPENAI
        if bare == _RESPONSES_PATH or bare.startswith(_RESPONSES_PATH + "/"):
            return cls.RESPONSES
        return cls.ANTHROPIC if "anthropic-version" in headers else cls.OPENAI

    @property
    def shape(self) -> Shape:
        """The error shape this API's clients read."""
        return "anthropic" if self is ClientApi.ANTHROPIC else "openai"

    # --- errors the proxy answers itself -------------------------------------------------

    def payload(self, refusal: Refusal) -> dict[str, Any]:
        """The error body: OpenAI's `{"error": {...}}`; Anthropic clients also get
        `"type": "error"` (the OpenAI fields stay, so either kind of client reads it)."""
        payload = refusal.payload()
        return {"type": "error", **payload} if self is ClientApi.ANTHROPIC else payload

    def refuse(self, refusal: Refusal) -> http.Response:
        return errors.json_response(refusal.status, self.payload(refusal), dict(refusal.headers))

    def error(
        self, status: int, message: str, code: str, headers: Mapping[str, str] | None = None
    ) -> http.Response:
        return self.refuse(Refusal(status, message, code, headers or {}))

    def cooling(self, alias: str, seconds: float) -> http.Response:
        """429 without calling the upstream: every target of `alias` is out of quota."""
        answer = cooling_for_client(self.shape, alias, seconds)
        return errors.json_response(answer.status, answer.payload, answer.headers)

    def untranslatable(self, exc: TranslationError) -> http.Response:
        """400 `unsupported_by_upstream` (docs/translation.md)."""
        payload = exc.anthropic_payload() if self is ClientApi.ANTHROPIC else exc.openai_payload()
        return errors.json_response(400, payload)

    # --- upstream answers ----------------------------------------------------------------

    def upstream_error(
        self,
        status: int,
        content: bytes,
        model: str | None,
        default_reset: float = 60.0,
        max_reset: float = math.inf,
    ) -> ErrorAnswer:
        """An upstream error answered in this API's shape (a quota answer becomes 429)."""
        return error_for_client(self.shape, status, content, model, default_reset, max_reset)

    def translation(
        self, method: str, path: str, upstream_api: str, body: Any = None
    ) -> Direction | None:
        """The translation a request needs to reach an upstream that speaks
        `upstream_api` (resolved, not "auto"); None: forwarded in the API it came in.
        With the parsed `body`, a Responses-shaped body on `/v1/chat/completions`
        (Cursor's Agent mode) is recognised too."""
        direction = direction_for(method, path, upstream_api, body)
        if direction is None:
            return None
        return direction if direction.client_api == self.value else None

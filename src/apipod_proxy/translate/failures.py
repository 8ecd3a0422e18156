"""Upstream error answers, in the shape of the API the client speaks.

An upstream error keeps its status and message and changes shape only:
Anthropic's `{"type": "error", "error": {"type", "message"}}` becomes OpenAI's
`{"error": {"message", "type", "param", "code"}}` and back. The exception is an
exhausted upstream quota (see quota.py), which antigravity-claude-proxy reports as 400:
every client gets 429 with code `upstream_quota_exhausted` and a Retry-After, so clients
back off instead of treating their request as malformed. Only a JSON error object is read
for that, by its status, type and the start of its message (quota.quota_answer).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ..jsonenc import json_bytes, json_text
from ..upstream.quota import QUOTA_CODE, QuotaExhausted, quota_answer, retry_after

#: The API whose error shape a client reads (clientapi.ClientApi's values).
type Shape = Literal["openai", "anthropic"]
#: What a client reads of an error body that is not JSON.
MAX_RAW_MESSAGE = 500
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


@dataclass(slots=True)
class ErrorAnswer:
    """The error response to give the client; `quota` is set for a quota answer."""

    status: int
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    quota: QuotaExhausted | None = None

    @property
    def content(self) -> bytes:
        return json_bytes(self.payload)


def read_error(status: int, body: bytes) -> tuple[str, str]:
    """(type, message) of an upstream error body in either API's shape, or of raw text."""
    kind, message, _ = _read(status, body)
    return kind, message


def _read(status: int, body: bytes) -> tuple[str, str, QuotaExhausted | None]:
    """(type, message, quota signal): only a JSON error object can be a quota signal."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError, UnicodeDecodeError):
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        message = error.get("message")
        kind = error.get("type")
        shown = message if isinstance(message, str) else _as_text(error)
        return (
            kind if isinstance(kind, str) and kind else _default_type(status),
            shown,
            quota_answer(status, kind, message),
        )
    if isinstance(error, str):  # {"error": "text"}, as some servers answer
        return _default_type(status), error, None
    text = body.decode("utf-8", "replace").strip()[:MAX_RAW_MESSAGE]
    return _default_type(status), text or f"Upstream error (HTTP {status})", None


def _as_text(error: dict[str, Any]) -> str:
    """An error object without a message, shown as its JSON (ASCII, cut short)."""
    return json_text(error, spaced=True, ascii_only=True)[:MAX_RAW_MESSAGE]


def _default_type(status: int) -> str:
    return _TYPE_BY_STATUS.get(status, "api_error" if status >= 500 else "invalid_request_error")


def quota_message(model: str | None, seconds: float) -> str:
    subject = f"model {model}" if model else "this model"
    return (
        f"The upstream quota for {subject} is used up; it resets in about {retry_after(seconds)} s"
    )


def shaped(shape: Shape, kind: str, message: str, code: str | None = None) -> dict[str, Any]:
    """An error body in the client's API: OpenAI's `{"error": {message, type, param,
    code}}` (code: the type when none is given), or Anthropic's `{"type": "error",
    "error": {type, message}}` (with `code` when one is given)."""
    if shape == "anthropic":
        error: dict[str, Any] = {"type": kind, "message": message}
        if code is not None:
            error["code"] = code
        return {"type": "error", "error": error}
    return {"error": {"message": message, "type": kind, "param": None, "code": code or kind}}


def quota_for_client(
    shape: Shape,
    quota: QuotaExhausted,
    model: str | None,
    default_reset: float,
    max_reset: float = math.inf,
) -> ErrorAnswer:
    """429 `upstream_quota_exhausted`, with a Retry-After of the (capped) reset."""
    seconds = quota.cooldown(default_reset, max_reset)
    payload = shaped(shape, "rate_limit_error", quota_message(model, seconds), QUOTA_CODE)
    return ErrorAnswer(429, payload, {"retry-after": retry_after(seconds)}, quota)


def error_for_client(
    shape: Shape,
    status: int,
    body: bytes,
    model: str | None = None,
    default_reset: float = 60.0,
    max_reset: float = math.inf,
) -> ErrorAnswer:
    """An upstream error (either shape) in the client's; `model` is the one sent.
    A quota answer's cooldown is `default_reset` when it names none, at most `max_reset`."""
    kind, message, quota = _read(status, body)
    if quota is not None:
        return quota_for_client(shape, quota, model, default_reset, max_reset)
    return ErrorAnswer(status, shaped(shape, kind, message))


def cooling_for_client(shape: Shape, alias: str, seconds: float) -> ErrorAnswer:
    """Every target of `alias` is cooling down: answered without calling the upstream."""
    message = (
        f"Every model behind {alias} is out of upstream quota; "
        f"retry in about {retry_after(seconds)} s"
    )
    payload = shaped(shape, "rate_limit_error", message, QUOTA_CODE)
    return ErrorAnswer(429, payload, {"retry-after": retry_after(seconds)})

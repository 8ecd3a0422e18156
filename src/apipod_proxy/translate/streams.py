"""SSE streams: Anthropic Messages events to OpenAI chunks, and back.

Each translator is a `flow.response.stream` callable. It is fed the upstream's bytes in
whatever pieces TCP delivers them (an event may be split across reads, several may
arrive in one) and returns the translated bytes to forward now: every complete event is
translated the moment its last byte arrives, and only the unfinished tail of an event is
kept. The end of the stream is a call with b"".

The return value is a list holding at most one bytes object: mitmproxy sends each item
as one chunk, and an empty bytes object would end a chunked body, so "nothing yet" is [].

`meter` (metering.py) merges the usage the stream reported so far, per field, and counts
the text, tool arguments and thinking that passed through; `usage` is its reading for
accounting (estimated when the stream was cut before its usage). `quota` is set when the upstream
reported an exhausted quota inside the stream (and `on_quota`, when set, is called at
once), and `error` holds any in-stream error.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from ..jsonenc import json_bytes, json_text
from ..metering import Meter, Usage, count_raw
from ..upstream.quota import QUOTA_CODE, QuotaExhausted, quota_in_stream
from .responses import (
    anthropic_id,
    finish_reason,
    openai_id,
    stop_reason_for,
)

log = logging.getLogger("apipod")

_EVENT_END = re.compile(rb"\r?\n\r?\n")
#: An event larger than this is not waited for: the stream is ended with an error.
MAX_EVENT_BYTES = 1 << 20
INCOMPLETE = "The upstream ended the stream before it was complete"


def _index(value: Any) -> int:
    """A block or tool index as an int (-1: none usable)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def chat_chunk(payload: dict[str, Any]) -> tuple[dict[str, Any] | None, Any, Any]:
    """A Chat Completions chunk's usage object, its first choice's delta and that
    choice's finish_reason; each None where the chunk has none."""
    usage = payload.get("usage")
    choices = payload.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict):
        choice = {}
    return (
        (usage if isinstance(usage, dict) else None),
        choice.get("delta"),
        choice.get("finish_reason"),
    )


def _parse_event(raw: bytes) -> tuple[str | None, str | None]:
    """(event name, data) of one SSE event; multi-line data is joined with newlines."""
    name = None
    data: list[str] = []
    # bytes.splitlines splits at CR and LF only, as SSE does; str.splitlines would also
    # split at U+2028 and friends, which JSON strings may hold unescaped.
    for line in raw.splitlines():
        field, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if field == b"event":
            name = value.decode("utf-8", "replace")
        elif field == b"data":
            data.append(value.decode("utf-8", "replace"))
    return name, ("\n".join(data) if data else None)


class _SseTranslator:
    """The carry-over buffer and the output contract; subclasses translate one event."""

    def __init__(self) -> None:
        self.meter = Meter()
        self.quota: QuotaExhausted | None = None
        self.error: dict[str, Any] | None = None
        self.done = False
        #: Called the moment an in-stream quota error is seen (the addon cools the model
        #: down then, before the client can send its next request).
        self.on_quota: Callable[[QuotaExhausted], None] | None = None
        self._buffer = b""
        self._out: list[bytes] = []

    def _note_quota(self, quota: QuotaExhausted) -> None:
        self.quota = quota
        if self.on_quota is not None:
            self.on_quota(quota)

    @property
    def usage(self) -> Usage:
        return self.meter.usage()

    def __call__(self, data: bytes) -> list[bytes]:
        if self.done:
            return []
        if data:
            # Only the new bytes (and a terminator begun just before them) need scanning.
            scan_from = max(0, len(self._buffer) - 3)
            self._buffer += data
            start = 0
            for boundary in _EVENT_END.finditer(self._buffer, scan_from):
                self._event(self._buffer[start : boundary.start()])
                start = boundary.end()
                if self.done:
                    break
            self._buffer = self._buffer[start:] if not self.done else b""
            if len(self._buffer) > MAX_EVENT_BYTES:
                log.warning("SSE event over %d bytes: stream ended", MAX_EVENT_BYTES)
                self._buffer = b""
                self._fail("The upstream sent an event too large to translate", "api_error")
        else:  # end of stream: an unterminated last event still counts
            rest, self._buffer = self._buffer, b""
            if rest.strip():
                self._event(rest)
            if not self.done:
                self._end()
        out, self._out = self._out, []
        return [b"".join(out)] if out else []

    def _event(self, raw: bytes) -> None:
        name, data = _parse_event(raw)
        if data is None:
            return
        if data.strip() == "[DONE]":
            self._on_done()
            return
        try:
            payload = json.loads(data)
        except (ValueError, RecursionError):
            log.warning("untranslatable SSE event from upstream dropped")
            return
        if not isinstance(payload, dict):
            return
        try:
            self._on_payload(name, payload)
        except (TypeError, ValueError, AttributeError, KeyError):
            # An event of an unexpected shape: dropped, never allowed to break the stream.
            log.warning("malformed SSE event from upstream dropped", exc_info=True)

    def _on_payload(self, name: str | None, payload: dict[str, Any]) -> None:
        raise NotImplementedError

    def _on_done(self) -> None:
        raise NotImplementedError

    def _end(self) -> None:
        raise NotImplementedError

    def _fail(self, message: str, kind: str) -> None:
        raise NotImplementedError


class AnthropicToOpenAIStream(_SseTranslator):
    """Anthropic Messages events in, OpenAI chat.completion.chunk events out.

    `model` names the model in every chunk (default: the one message_start reports);
    `include_usage` adds OpenAI's usage chunk (`choices: []`) before `data: [DONE]`,
    and `"usage": null` to every other chunk, as OpenAI does.
    """

    def __init__(
        self, model: str | None = None, include_usage: bool = False, created: int | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.include_usage = include_usage
        self.created = int(time.time()) if created is None else created
        self.id = "chatcmpl-unknown"
        self._started = False
        self._finished = False
        self._tool_index: dict[int, int] = {}
        self._stop_reason: Any = None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> None:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None
        self._out.append(b"data: " + json_bytes(chunk) + b"\n\n")

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._chunk({"role": "assistant", "content": ""})

    def _on_payload(self, name: str | None, payload: dict[str, Any]) -> None:
        kind = payload.get("type") or name
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                if message.get("id"):
                    self.id = openai_id(message["id"])
                if self.model is None and isinstance(message.get("model"), str):
                    self.model = message["model"]
                self.meter.add_anthropic(message.get("usage"), final=False)
            self._start()
        elif kind == "content_block_start":
            self._block_start(payload)
        elif kind == "content_block_delta":
            self._block_delta(payload)
        elif kind == "message_delta":
            self.meter.add_anthropic(payload.get("usage"))
            delta = payload.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self._stop_reason = delta["stop_reason"]
            self._finish()
        elif kind == "message_stop":
            self._on_done()
        elif kind == "error":
            error = payload.get("error")
            error = error if isinstance(error, dict) else {}
            message = error.get("message")
            self._fail(
                message if isinstance(message, str) else "Upstream error",
                error.get("type") if isinstance(error.get("type"), str) else "api_error",
            )
        # ping, content_block_stop and unknown events carry nothing a chunk needs

    def _block_start(self, payload: dict[str, Any]) -> None:
        block = payload.get("content_block")
        if not isinstance(block, dict):
            return
        self._start()
        if block.get("type") == "tool_use":
            tool = self._tool_index[_index(payload.get("index"))] = len(self._tool_index)
            call = {
                "index": tool,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            self._chunk({"tool_calls": [call]})
            if isinstance(block.get("input"), dict) and block["input"]:  # not streamed in pieces
                self._arguments(tool, json_text(block["input"], spaced=True))
        elif block.get("type") == "text" and block.get("text"):
            self.meter.delivered(block["text"])
            self._chunk({"content": block["text"]})
        elif block.get("type") == "thinking" and block.get("thinking"):
            self.meter.thought(block["thinking"])
            self._chunk({"reasoning_content": block["thinking"]})

    def _arguments(self, tool: int, piece: str) -> None:
        self.meter.delivered(piece)
        self._chunk({"tool_calls": [{"index": tool, "function": {"arguments": piece}}]})

    def _block_delta(self, payload: dict[str, Any]) -> None:
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            return
        self._start()
        kind = delta.get("type")
        if kind == "text_delta" and isinstance(delta.get("text"), str) and delta["text"]:
            self.meter.delivered(delta["text"])
            self._chunk({"content": delta["text"]})
        elif kind == "thinking_delta" and isinstance(delta.get("thinking"), str):
            if delta["thinking"]:
                self.meter.thought(delta["thinking"])
                self._chunk({"reasoning_content": delta["thinking"]})
        elif kind == "input_json_delta" and isinstance(delta.get("partial_json"), str):
            tool = self._tool_index.get(_index(payload.get("index")))
            if tool is not None and delta["partial_json"]:
                self._arguments(tool, delta["partial_json"])
        # signature_delta: OpenAI clients have nowhere to keep it

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._start()
            self._chunk({}, finish_reason(self._stop_reason, bool(self._tool_index)))

    def _on_done(self) -> None:
        self._finish()
        if self.include_usage:
            chunk = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self.meter.openai(),
            }
            self._out.append(b"data: " + json_bytes(chunk) + b"\n\n")
        self._out.append(b"data: [DONE]\n\n")
        self.done = True

    def _end(self) -> None:
        if self._finished:  # cut after message_delta: the answer itself is whole
            self._on_done()
        else:
            self._fail(INCOMPLETE, "upstream_error", code="upstream_stream_incomplete")

    def _fail(self, message: str, kind: str, code: str | None = None) -> None:
        """An OpenAI stream error chunk, then the end (the SDK raises APIError on it)."""
        quota = quota_in_stream(kind, message)
        if quota is not None:
            self._note_quota(quota)
            kind, code = "rate_limit_error", QUOTA_CODE
        self.error = {"message": message, "type": kind, "param": None, "code": code or kind}
        self._out.append(b"data: " + json_bytes({"error": self.error}) + b"\n\n")
        self.done = True


def _anthropic_event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json_bytes(payload) + b"\n\n"


class OpenAIToAnthropicStream(_SseTranslator):
    """OpenAI chat.completion.chunk events in, Anthropic Messages events out.

    The upstream request must ask for `stream_options.include_usage` (the request
    translation does), since the usage chunk is how the token counts are learned.
    They are reported in `message_delta`, before `message_stop`.
    """

    def __init__(self, model: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.id = "msg_unknown"
        self._started = False
        self._next_index = 0
        self._open: tuple[str, int] | None = None  # (kind, Anthropic block index)
        self._tool_blocks: dict[int, int] = {}
        self._finish_reason: Any = None

    def _emit(self, name: str, payload: dict[str, Any]) -> None:
        self._out.append(_anthropic_event(name, payload))

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        self._emit("message_start", {"type": "message_start", "message": message})

    def _close_block(self) -> None:
        if self._open is not None:
            self._emit("content_block_stop", {"type": "content_block_stop", "index": self._open[1]})
            self._open = None

    def _open_block(self, kind: str, block: dict[str, Any]) -> int:
        self._close_block()
        index = self._next_index
        self._next_index += 1
        self._open = (kind, index)
        self._emit(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": block},
        )
        return index

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        payload = {"type": "content_block_delta", "index": index, "delta": delta}
        self._emit("content_block_delta", payload)

    def _on_payload(self, name: str | None, payload: dict[str, Any]) -> None:
        if "error" in payload:
            error = payload["error"] if isinstance(payload["error"], dict) else {}
            message = error.get("message")
            kind = error.get("type")
            self._fail(
                message if isinstance(message, str) else "Upstream error",
                kind if isinstance(kind, str) else "api_error",
            )
            return
        if not self._started:
            if isinstance(payload.get("id"), str):
                self.id = anthropic_id(payload["id"])
            if self.model is None and isinstance(payload.get("model"), str):
                self.model = payload["model"]
            self._start()
        usage, delta, finish_reason = chat_chunk(payload)
        if usage is not None:
            self.meter.add_openai(usage)
        if isinstance(delta, dict):
            self._translate_delta(delta)
        if finish_reason:
            self._finish_reason = finish_reason
            self._close_block()

    def _translate_delta(self, delta: dict[str, Any]) -> None:
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            self.meter.thought(reasoning)
            if self._open is None or self._open[0] != "thinking":
                self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            assert self._open is not None
            self._delta(self._open[1], {"type": "thinking_delta", "thinking": reasoning})
        content = delta.get("content")
        if isinstance(content, str) and content:
            self.meter.delivered(content)
            if self._open is None or self._open[0] != "text":
                self._open_block("text", {"type": "text", "text": ""})
            assert self._open is not None
            self._delta(self._open[1], {"type": "text_delta", "text": content})
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            if not isinstance(call, dict):
                continue
            tool = _index(call.get("index", 0))
            function = call.get("function") if isinstance(call.get("function"), dict) else {}
            index = self._tool_blocks.get(tool)
            if index is None:
                block = {
                    "type": "tool_use",
                    "id": call.get("id") or f"toolu_{self.id}_{tool}",
                    "name": function.get("name") or "",
                    "input": {},
                }
                index = self._tool_blocks[tool] = self._open_block("tool", block)
            piece = function.get("arguments")
            if isinstance(piece, str) and piece:
                self.meter.delivered(piece)
                self._delta(index, {"type": "input_json_delta", "partial_json": piece})

    def _on_done(self) -> None:
        self._start()
        self._close_block()
        reason = stop_reason_for(self._finish_reason, bool(self._tool_blocks))
        self._emit(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": None},
                "usage": self.meter.anthropic(),
            },
        )
        self._emit("message_stop", {"type": "message_stop"})
        self.done = True

    def _end(self) -> None:
        if self._finish_reason is not None:  # cut before [DONE]: the answer itself is whole
            self._on_done()
        else:
            self._fail(INCOMPLETE, "api_error")

    def _fail(self, message: str, kind: str, code: str | None = None) -> None:
        self.error = {"type": kind, "message": message}
        quota = quota_in_stream(kind, message)
        if quota is not None:
            self._note_quota(quota)
            self.error = {"type": "rate_limit_error", "message": message, "code": QUOTA_CODE}
        self._emit("error", {"type": "error", "error": self.error})
        self.done = True


class AnthropicPassthroughStream(_SseTranslator):
    """Anthropic events to an Anthropic client, untranslated, for `/v1/messages` passthrough.

    Events are forwarded as they complete, unchanged, except an in-stream quota error,
    which gets type `rate_limit_error` and code `upstream_quota_exhausted` like the 429
    answer, and sets `quota` so the model can be cooled down. Usage is merged and what
    passes through is counted as in the translating streams. Only events that may hold
    usage or an error are parsed; delivered content is counted in the raw event.
    """

    def _event(self, raw: bytes) -> None:
        if not any(word in raw for word in _PASSTHROUGH_PARSED):
            if b"content_block_" in raw:
                count_raw(self.meter, raw)  # delivered content: counted without parsing
            self._out.append(raw + b"\n\n")
            return
        name, data = _parse_event(raw)
        try:
            payload = json.loads(data) if data is not None else None
        except (ValueError, RecursionError):
            payload = None
        if not isinstance(payload, dict):
            self._out.append(raw + b"\n\n")
            return
        kind = payload.get("type") or name
        if kind == "message_start" and isinstance(payload.get("message"), dict):
            self.meter.add_anthropic(payload["message"].get("usage"), final=False)
        elif kind in ("content_block_delta", "content_block_start"):
            count_raw(self.meter, raw)  # an event that merely mentions "usage" or "error"
        elif kind == "message_delta":
            self.meter.add_anthropic(payload.get("usage"))
        elif kind == "message_stop":
            self.finished = True
        elif kind == "error" and isinstance(payload.get("error"), dict):
            message = payload["error"].get("message")
            quota = quota_in_stream(payload["error"].get("type"), message)
            self.error = payload["error"]
            if quota is not None:
                self._note_quota(quota)
                self.error = {**payload["error"], "type": "rate_limit_error", "code": QUOTA_CODE}
                raw = _anthropic_event("error", {"type": "error", "error": self.error})[:-2]
        self._out.append(raw + b"\n\n")

    def _end(self) -> None:
        pass  # an unfinished stream ends as the upstream ended it

    def _on_done(self) -> None:
        pass

    def _on_payload(self, name: str | None, payload: dict[str, Any]) -> None:
        pass

    def _fail(self, message: str, kind: str, code: str | None = None) -> None:
        self.error = {"type": kind, "message": message}
        self._out.append(_anthropic_event("error", {"type": "error", "error": self.error}))
        self.done = True


#: Events the passthrough parses: those that may hold usage, an error or the end.
_PASSTHROUGH_PARSED = (b"usage", b"error", b"message_stop")

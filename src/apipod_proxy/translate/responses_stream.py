"""Streams for the Responses API: Chat Completions chunks in, typed Responses events out.

`ChatToResponsesStream` is a `flow.response.stream` callable like those of streams.py
(arbitrary byte pieces in, every complete event translated the moment its last byte
arrives). Each chat chunk becomes the Responses events it implies, with a
`sequence_number`:

    response.created, response.in_progress                     first chunk
    response.output_item.added (reasoning), reasoning_summary_part.added,
      response.reasoning_summary_text.delta ...                reasoning_content
    response.output_item.added (message), content_part.added,
      response.output_text.delta ...                           content
    response.output_item.added (function_call | custom_tool_call),
      response.function_call_arguments.delta ...               tool_calls
      | response.custom_tool_call_input.delta ...              (a custom tool's input
                                                                unwrapped as it streams)
    the matching .done events                                  as each item ends
    response.completed | response.incomplete                   [DONE]
    response.failed                                            an error chunk, or a cut

Over an Anthropic upstream, `Chained` feeds AnthropicToOpenAIStream's output into it.
`CursorChatStream` serves Cursor's Responses-shaped Chat Completions requests over an
OpenAI upstream: the chunks pass as they are, except a custom tool's arguments, which
are unwrapped to its input text, and the usage chunk the client did not ask for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..jsonenc import json_bytes
from ..metering import Meter, Usage
from ..upstream.quota import QUOTA_CODE, QuotaExhausted, quota_in_stream
from .custom_tools import InputUnwrapper
from .responses_api import (
    ResponsesContext,
    _item_id,
    call_item,
    message_item,
    reasoning_item,
    response_object,
    status_of,
    usage_of,
)
from .streams import INCOMPLETE, _index, _SseTranslator, chat_chunk


@dataclass(slots=True)
class _Item:
    """One output item being streamed."""

    index: int  # output_index
    id: str
    kind: str  # "message", "reasoning", "function_call", "custom_tool_call"
    text: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    unwrapper: InputUnwrapper | None = None
    done: bool = False


class ChatToResponsesStream(_SseTranslator):
    """OpenAI chat.completion.chunk events in, Responses API events out."""

    def __init__(
        self,
        model: str | None = None,
        context: ResponsesContext | None = None,
        created: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.context = context or ResponsesContext()
        self.created = int(time.time()) if created is None else created
        self._sequence = 0
        self._started = False
        self._items: list[_Item] = []
        self._open: _Item | None = None  # the open message or reasoning item
        self._calls: dict[int, _Item] = {}  # chat tool index -> its item
        self._finish_reason: Any = None

    # --- writing -------------------------------------------------------------------

    def _emit(self, kind: str, payload: dict[str, Any]) -> None:
        payload = {"type": kind, "sequence_number": self._sequence, **payload}
        self._sequence += 1
        self._out.append(b"event: " + kind.encode() + b"\ndata: " + json_bytes(payload) + b"\n\n")

    def _response(
        self,
        status: str,
        usage: dict[str, Any] | None = None,
        incomplete: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        output = [self._final(item) for item in self._items] if status != "in_progress" else []
        return response_object(
            self.context, self.model, self.created, status, output, usage, incomplete, error
        )

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._emit("response.created", {"response": self._response("in_progress")})
            self._emit("response.in_progress", {"response": self._response("in_progress")})

    # --- items ---------------------------------------------------------------------

    @staticmethod
    def _final(item: _Item, status: str = "completed") -> dict[str, Any]:
        text = "".join(item.text)
        if item.kind == "message":
            return message_item(item.id, text, status)
        if item.kind == "reasoning":
            return reasoning_item(item.id, text)
        return call_item(
            item.id, item.call_id, item.name, text, item.kind == "custom_tool_call", status
        )

    def _add(self, kind: str, prefix: str, **fields: Any) -> _Item:
        item = _Item(len(self._items), _item_id(prefix), kind, **fields)
        self._items.append(item)
        added: dict[str, Any]
        if kind == "message":
            added = {**message_item(item.id, "", "in_progress"), "content": []}
        elif kind == "reasoning":
            added = {**reasoning_item(item.id, ""), "summary": []}
        else:
            added = call_item(
                item.id, item.call_id, item.name, "", kind == "custom_tool_call", "in_progress"
            )
        self._emit("response.output_item.added", {"output_index": item.index, "item": added})
        where = {"item_id": item.id, "output_index": item.index}
        if kind == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            self._emit("response.content_part.added", {**where, "content_index": 0, "part": part})
        elif kind == "reasoning":
            part = {"type": "summary_text", "text": ""}
            self._emit(
                "response.reasoning_summary_part.added", {**where, "summary_index": 0, "part": part}
            )
        return item

    def _close(self, item: _Item) -> None:
        if item.done:
            return
        item.done = True
        where = {"item_id": item.id, "output_index": item.index}
        if item.unwrapper is not None and (rest := item.unwrapper.finish()):
            self._custom_delta(item, rest)
        text = "".join(item.text)
        if item.kind == "message":
            self._emit(
                "response.output_text.done",
                {**where, "content_index": 0, "text": text, "logprobs": []},
            )
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            self._emit("response.content_part.done", {**where, "content_index": 0, "part": part})
        elif item.kind == "reasoning":
            self._emit(
                "response.reasoning_summary_text.done", {**where, "summary_index": 0, "text": text}
            )
            part = {"type": "summary_text", "text": text}
            self._emit(
                "response.reasoning_summary_part.done", {**where, "summary_index": 0, "part": part}
            )
        elif item.kind == "function_call":
            self._emit(
                "response.function_call_arguments.done",
                {**where, "name": item.name, "arguments": text},
            )
        else:
            self._emit("response.custom_tool_call_input.done", {**where, "input": text})
        self._emit(
            "response.output_item.done", {"output_index": item.index, "item": self._final(item)}
        )
        if self._open is item:
            self._open = None

    def _text_item(self, kind: str, prefix: str) -> _Item:
        if self._open is not None and self._open.kind == kind:
            return self._open
        if self._open is not None:
            self._close(self._open)
        self._open = self._add(kind, prefix)
        return self._open

    def _custom_delta(self, item: _Item, text: str) -> None:
        item.text.append(text)
        self._emit(
            "response.custom_tool_call_input.delta",
            {"item_id": item.id, "output_index": item.index, "delta": text},
        )

    # --- reading chat chunks -------------------------------------------------------

    def _on_payload(self, name: str | None, payload: dict[str, Any]) -> None:
        if "error" in payload:
            error = payload["error"] if isinstance(payload["error"], dict) else {}
            message, kind = error.get("message"), error.get("type")
            self._fail(
                message if isinstance(message, str) else "Upstream error",
                kind if isinstance(kind, str) else "api_error",
                error.get("code") if isinstance(error.get("code"), str) else None,
            )
            return
        if self.model is None and isinstance(payload.get("model"), str):
            self.model = payload["model"]
        self._start()
        usage, delta, finish_reason = chat_chunk(payload)
        if usage is not None:
            self.meter.add_openai(usage)
        if isinstance(delta, dict):
            self._delta(delta)
        if finish_reason:
            self._finish_reason = finish_reason

    def _delta(self, delta: dict[str, Any]) -> None:
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            self.meter.thought(reasoning)
            item = self._text_item("reasoning", "rs")
            item.text.append(reasoning)
            self._emit(
                "response.reasoning_summary_text.delta",
                {
                    "item_id": item.id,
                    "output_index": item.index,
                    "summary_index": 0,
                    "delta": reasoning,
                },
            )
        content = delta.get("content")
        if isinstance(content, str) and content:
            self.meter.delivered(content)
            item = self._text_item("message", "msg")
            item.text.append(content)
            self._emit(
                "response.output_text.delta",
                {
                    "item_id": item.id,
                    "output_index": item.index,
                    "content_index": 0,
                    "delta": content,
                    "logprobs": [],
                },
            )
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            if isinstance(call, dict):
                self._call(call)

    def _call(self, call: dict[str, Any]) -> None:
        tool = _index(call.get("index", 0))
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        item = self._calls.get(tool)
        if item is None:
            if self._open is not None:
                self._close(self._open)
            name = function.get("name") if isinstance(function.get("name"), str) else ""
            call_id = call.get("id") if isinstance(call.get("id"), str) else _item_id("call")
            if name in self.context.custom:
                unwrapper = InputUnwrapper()
                item = self._add(
                    "custom_tool_call", "ctc", call_id=call_id, name=name, unwrapper=unwrapper
                )
            else:
                item = self._add("function_call", "fc", call_id=call_id, name=name)
            self._calls[tool] = item
        piece = function.get("arguments")
        if not isinstance(piece, str) or not piece or item.done:
            return
        self.meter.delivered(piece)
        if item.unwrapper is not None:
            if text := item.unwrapper.feed(piece):
                self._custom_delta(item, text)
            return
        item.text.append(piece)
        self._emit(
            "response.function_call_arguments.delta",
            {"item_id": item.id, "output_index": item.index, "delta": piece},
        )

    # --- the end -------------------------------------------------------------------

    def _on_done(self) -> None:
        self._start()
        for item in self._items:
            self._close(item)
        status, incomplete = status_of(self._finish_reason)
        usage = usage_of(self.meter.openai())
        event = "response.completed" if status == "completed" else "response.incomplete"
        self._emit(event, {"response": self._response(status, usage, incomplete)})
        self.done = True

    def _end(self) -> None:
        if self._finish_reason is not None:  # cut before [DONE]: the answer itself is whole
            self._on_done()
        else:
            self._fail(INCOMPLETE, "api_error", code="upstream_stream_incomplete")

    def _fail(self, message: str, kind: str, code: str | None = None) -> None:
        """`response.failed`, with the error's code (the quota's, for a quota error)."""
        quota = quota_in_stream(kind, message)
        if quota is not None:
            self._note_quota(quota)
            kind, code = "rate_limit_error", QUOTA_CODE
        self.error = {"message": message, "type": kind, "param": None, "code": code or kind}
        self._start()
        for item in self._items:
            if not item.done:  # what was delivered stays readable, marked incomplete
                item.done = True
                self._emit(
                    "response.output_item.done",
                    {"output_index": item.index, "item": self._final(item, "incomplete")},
                )
        usage = usage_of(self.meter.openai())
        error = {"code": code or kind, "message": message}
        self._emit("response.failed", {"response": self._response("failed", usage, None, error)})
        self.done = True


class CursorChatStream(_SseTranslator):
    """Chat Completions chunks to a client that sent a Responses-shaped body to
    `/v1/chat/completions`: forwarded as they are, except a custom tool's arguments
    (unwrapped to its input text as they stream) and, unless `include_usage`, the
    usage chunk the proxy asked for."""

    def __init__(self, custom: frozenset[str], include_usage: bool = True) -> None:
        super().__init__()
        self.custom = custom
        self.include_usage = include_usage
        self._custom_calls: dict[int, InputUnwrapper] = {}
        self._finished = False

    def _on_payload(self, name: str | None, payload: dict[str, Any]) -> None:
        if "error" in payload:
            error = payload["error"] if isinstance(payload["error"], dict) else {}
            message, kind = error.get("message"), error.get("type")
            self._fail(
                message if isinstance(message, str) else "Upstream error",
                kind if isinstance(kind, str) else "api_error",
                error.get("code") if isinstance(error.get("code"), str) else None,
            )
            return
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self.meter.add_openai(usage)
            if not self.include_usage:
                if payload.get("choices") == []:
                    return  # the usage-only chunk the client did not ask for
                payload["usage"] = None
        for choice in payload.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(delta)
            if choice.get("finish_reason"):
                self._finished = True
        self._out.append(b"data: " + json_bytes(payload) + b"\n\n")

    def _delta(self, delta: dict[str, Any]) -> None:
        self.meter.delivered(delta.get("content"))
        self.meter.thought(delta.get("reasoning_content"))
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                continue
            tool = _index(call.get("index", 0))
            if function.get("name") in self.custom:
                self._custom_calls[tool] = InputUnwrapper()
            piece = function.get("arguments")
            self.meter.delivered(piece)
            unwrapper = self._custom_calls.get(tool)
            if unwrapper is not None and isinstance(piece, str):
                function["arguments"] = unwrapper.feed(piece)

    def _on_done(self) -> None:
        self._out.append(b"data: [DONE]\n\n")
        self.done = True

    def _end(self) -> None:
        if self._finished:
            self._on_done()
        else:
            self._fail(INCOMPLETE, "upstream_error", code="upstream_stream_incomplete")

    def _fail(self, message: str, kind: str, code: str | None = None) -> None:
        quota = quota_in_stream(kind, message)
        if quota is not None:
            self._note_quota(quota)
            kind, code = "rate_limit_error", QUOTA_CODE
        self.error = {"message": message, "type": kind, "param": None, "code": code or kind}
        self._out.append(b"data: " + json_bytes({"error": self.error}) + b"\n\n")
        self.done = True


class Chained:
    """Two stream translators in a row (Anthropic -> Chat Completions -> the client's):
    what the first forwards is fed to the second at once. The first sees the upstream,
    so its meter, quota and error are the stream's."""

    def __init__(self, first: _SseTranslator, second: _SseTranslator) -> None:
        self.first = first
        self.second = second

    @property
    def meter(self) -> Meter:
        return self.first.meter

    @property
    def usage(self) -> Usage:
        return self.first.usage

    @property
    def quota(self) -> QuotaExhausted | None:
        return self.first.quota

    @property
    def error(self) -> dict[str, Any] | None:
        return self.first.error or self.second.error

    @property
    def on_quota(self) -> Callable[[QuotaExhausted], None] | None:
        return self.first.on_quota

    @on_quota.setter
    def on_quota(self, callback: Callable[[QuotaExhausted], None] | None) -> None:
        self.first.on_quota = callback

    def __call__(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        for piece in self.first(data):
            out += self.second(piece)
        if not data:
            out += self.second(b"")
        return [b"".join(out)] if out else []

"""Non-streamed answers: Anthropic Messages to OpenAI Chat Completions, and back.

Thinking is never part of `content`: it goes to `message.reasoning_content`, the field
several OpenAI-compatible servers (DeepSeek, vLLM) use, and which OpenAI clients that do
not know it ignore. Thinking signatures are dropped: OpenAI clients cannot send them back.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..jsonenc import json_text
from ..metering import meter_of_body

#: Anthropic stop_reason -> OpenAI finish_reason.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
#: OpenAI finish_reason -> Anthropic stop_reason.
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def finish_reason(stop_reason: Any, has_tool_calls: bool) -> str:
    """The OpenAI finish_reason; tool calls always say so (the upstream answers a
    non-streamed tool call with end_turn)."""
    if has_tool_calls:
        return "tool_calls"
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def openai_id(anthropic_id: Any) -> str:
    text = anthropic_id if isinstance(anthropic_id, str) and anthropic_id else "unknown"
    return text if text.startswith("chatcmpl-") else f"chatcmpl-{text}"


def anthropic_response_to_openai(
    body: dict[str, Any], model: str | None = None, created: int | None = None
) -> dict[str, Any]:
    """An Anthropic message as an OpenAI chat.completion. `model` defaults to the answer's."""
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    blocks = body.get("content")
    for block in blocks if isinstance(blocks, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thinking.append(block["thinking"])
        elif kind == "tool_use":
            arguments = json_text(block.get("input") or {}, spaced=True)
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if not calls and message["content"] is None:
        message["content"] = ""
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    return {
        "id": openai_id(body.get("id")),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model if model is not None else body.get("model"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason(body.get("stop_reason"), bool(calls)),
            }
        ],
        "usage": meter_of_body(body).openai(),
    }


def stop_reason_for(finish: Any, has_tool_calls: bool) -> str:
    """The Anthropic stop_reason for an OpenAI finish_reason."""
    if has_tool_calls:
        return "tool_use"
    return STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"


def anthropic_id(openai_id: Any) -> str:
    text = openai_id if isinstance(openai_id, str) and openai_id else "unknown"
    return text if text.startswith("msg_") else f"msg_{text}"


def openai_response_to_anthropic(body: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """An OpenAI chat.completion as an Anthropic message."""
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") if isinstance(choice, dict) else None
    message = message if isinstance(message, dict) else {}
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except (ValueError, RecursionError, TypeError):
            arguments = {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": arguments if isinstance(arguments, dict) else {},
            }
        )
    has_calls = any(block["type"] == "tool_use" for block in content)
    reason = choice.get("finish_reason") if isinstance(choice, dict) else None
    stop_reason = stop_reason_for(reason, has_calls)
    return {
        "id": anthropic_id(body.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model if model is not None else body.get("model"),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": meter_of_body(body).anthropic(),
    }

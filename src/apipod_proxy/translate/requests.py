"""Request bodies: OpenAI Chat Completions to Anthropic Messages, and back.

Each function takes the parsed JSON body the client sent and returns the body to send
upstream, or raises TranslationError (answered 400 in the client's error shape) for what
has no faithful equivalent. Nothing the target API does not know is ever forwarded: a
field is mapped, dropped (when ignoring it changes no shape the client relies on), or
refused. docs/translation.md lists each choice.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..jsonenc import json_text

#: `max_tokens` is required by the Messages API; OpenAI clients may send none.
DEFAULT_MAX_TOKENS = 8192
#: reasoning_effort -> Anthropic thinking budget_tokens (1024 is Anthropic's minimum).
#: "none" turns thinking off. Cheap levels stay cheap; "high" leaves room for hard problems.
REASONING_BUDGETS: dict[str, int | None] = {
    "none": None,
    "minimal": 1024,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 32768,
}
MIN_THINKING_BUDGET = 1024

#: OpenAI fields accepted and dropped: tuning knobs or bookkeeping with no Anthropic
#: equivalent, whose absence changes no shape the client parses.
DROPPED_OPENAI_FIELDS = frozenset(
    {
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "seed",
        "service_tier",
        "store",
        "metadata",
        "prompt_cache_key",
        "safety_identifier",
        "verbosity",
        "prediction",
    }
)
#: Anthropic fields dropped on the way to an OpenAI upstream.
DROPPED_ANTHROPIC_FIELDS = frozenset(
    {"top_k", "thinking", "service_tier", "container", "mcp_servers", "context_management"}
)
#: Anthropic's tool_choice types an OpenAI client may send as they are (Cursor does, for
#: Claude-like model names), besides `{"type": "tool", "name": ...}`.
ANTHROPIC_TOOL_CHOICES = frozenset({"auto", "any", "none"})
#: The `cache_control.ttl` values the Messages API takes.
CACHE_TTLS = frozenset({"5m", "1h"})
_DATA_URL = re.compile(
    r"data:(?P<type>[\w.+-]+/[\w.+-]+)(?P<params>(?:;[^;,]*)*),(?P<data>.*)", re.S
)


class TranslationError(ValueError):
    """The request cannot be translated faithfully; `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def openai_payload(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": "invalid_request_error",
                "param": self.param,
                "code": "unsupported_by_upstream",
            }
        }

    def anthropic_payload(self) -> dict[str, Any]:
        where = f" ({self.param})" if self.param else ""
        return {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": self.message + where},
        }


@dataclass(frozen=True, slots=True)
class AnthropicRequest:
    """A translated OpenAI request: the Messages body, and what the answer must carry."""

    body: dict[str, Any]
    stream: bool
    #: The client asked for OpenAI's usage chunk (stream_options.include_usage).
    include_usage: bool


@dataclass(frozen=True, slots=True)
class OpenAIRequest:
    """A translated Anthropic request: the Chat Completions body."""

    body: dict[str, Any]
    stream: bool


# --- OpenAI -> Anthropic -------------------------------------------------------------


def openai_request_to_anthropic(body: dict[str, Any]) -> AnthropicRequest:
    """An OpenAI Chat Completions body as an Anthropic Messages body."""
    if not isinstance(body, dict):
        raise TranslationError("The request body must be a JSON object")
    _refuse_openai_extras(body)
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    system, messages = _openai_messages(body.get("messages"), body.get("system"))
    if system:
        out["system"] = system
    out["messages"] = messages
    max_tokens = _max_tokens(body)
    out["max_tokens"] = max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS
    thinking = _thinking(body.get("reasoning_effort"), max_tokens)
    if thinking is not None:
        out["thinking"] = thinking
        if max_tokens is None:  # the default must leave room for the answer after the budget
            out["max_tokens"] = thinking["budget_tokens"] + DEFAULT_MAX_TOKENS
    else:  # Anthropic accepts only temperature 1 with thinking, so sampling is for plain turns
        if (temperature := _number(body, "temperature", 0, 2)) is not None:
            out["temperature"] = min(temperature, 1.0)
        if (top_p := _number(body, "top_p", 0, 1)) is not None:
            out["top_p"] = top_p
    if (stops := _stop_sequences(body.get("stop"))) is not None:
        out["stop_sequences"] = stops
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    tools = _openai_tools(body.get("tools"))
    if tools:
        out["tools"] = tools
    choice = _openai_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None and tools:
        out["tool_choice"] = choice
    stream = body.get("stream") is True
    if stream:
        out["stream"] = True
    options = body.get("stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    return AnthropicRequest(out, stream, include_usage)


def _refuse_openai_extras(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise TranslationError("Only n=1 is supported by this upstream", "n")
    for name in ("logprobs", "top_logprobs"):
        if body.get(name):
            raise TranslationError("logprobs are not available from this upstream", name)
    response_format = body.get("response_format")
    if response_format is not None and (
        not isinstance(response_format, dict) or response_format.get("type") != "text"
    ):
        raise TranslationError(
            "response_format (JSON mode) is not available from this upstream; "
            "ask for JSON in the prompt or use a tool",
            "response_format",
        )
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise TranslationError("Only text output is available from this upstream", "modalities")
    for name in ("audio", "web_search_options"):
        if body.get(name) is not None:
            raise TranslationError(f"{name} is not available from this upstream", name)
    for name in ("functions", "function_call"):
        if body.get(name) is not None:
            raise TranslationError(
                f"The deprecated {name} parameter is not supported; use tools and tool_choice",
                name,
            )


def _max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TranslationError(f"{name} must be a positive integer", name)
        return value
    return None


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise TranslationError(f"{name} must be a number from {low:g} to {high:g}", name)
    return value


def _thinking(effort: Any, max_tokens: int | None) -> dict[str, Any] | None:
    if effort is None:
        return None
    if not isinstance(effort, str) or effort not in REASONING_BUDGETS:
        known = ", ".join(REASONING_BUDGETS)
        raise TranslationError(f"reasoning_effort must be one of: {known}", "reasoning_effort")
    budget = REASONING_BUDGETS[effort]
    if budget is None:
        return None
    if max_tokens is not None:
        # The budget counts against max_tokens and must stay below it; the client's limit wins.
        budget = min(budget, max_tokens - 1)
        if budget < MIN_THINKING_BUDGET:
            return None
    return {"type": "enabled", "budget_tokens": budget}


def _stop_sequences(stop: Any) -> list[str] | None:
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise TranslationError("stop must be a string or a list of strings", "stop")
    # Anthropic refuses whitespace-only stop sequences; they are dropped.
    kept = [s for s in stops if s.strip()]
    return kept or None


def _openai_tools(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise TranslationError("tools must be a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(function, dict)
        ):
            raise TranslationError("Only function tools are supported", f"tools[{i}]")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError("A function tool needs a name", f"tools[{i}].function.name")
        schema = function.get("parameters")
        if schema is None:
            schema = {"type": "object", "properties": {}}
        if not isinstance(schema, dict):
            raise TranslationError(
                "parameters must be a JSON schema object", f"tools[{i}].function.parameters"
            )
        entry: dict[str, Any] = {"name": name, "input_schema": schema}
        if isinstance(function.get("description"), str):
            entry["description"] = function["description"]
        out.append(entry)
    return out


def _openai_tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    """OpenAI's tool_choice (a string or a named function), or Anthropic's own objects,
    which Cursor sends in Chat Completions for Claude-like model names."""
    mapped: dict[str, Any] | None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if choice is None:
        mapped = None
    elif choice == "auto":
        mapped = {"type": "auto"}
    elif choice == "none":
        mapped = {"type": "none"}
    elif choice == "required":
        mapped = {"type": "any"}
    elif (
        kind == "function"
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        mapped = {"type": "tool", "name": choice["function"]["name"]}
    elif isinstance(kind, str) and kind in ANTHROPIC_TOOL_CHOICES:
        mapped = {"type": kind}
    elif kind == "tool" and isinstance(choice.get("name"), str) and choice["name"]:
        mapped = {"type": "tool", "name": choice["name"]}
    else:
        raise TranslationError(
            'tool_choice must be "auto", "none", "required", a named function, or one of '
            'Anthropic\'s {"type": "auto" | "any" | "none"} and {"type": "tool", "name": ...}',
            "tool_choice",
        )
    disable = parallel is False or (
        isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is True
    )
    if disable and (mapped is None or mapped["type"] != "none"):
        mapped = {**(mapped or {"type": "auto"}), "disable_parallel_tool_use": True}
    return mapped


def _openai_messages(
    messages: Any, top_system: Any = None
) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    """The Messages `system` and turns. A top-level `system` (Anthropic's, a string or
    text blocks) comes first, then every system and developer message in order."""
    if not isinstance(messages, list) or not messages:
        raise TranslationError("messages must be a non-empty list", "messages")
    system: list[list[dict[str, Any]]] = []
    if top_system is not None:
        system.append(_text_blocks(top_system, "system"))
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise TranslationError("Each message must be an object", where)
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text_blocks(message.get("content"), f"{where}.content"))
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), where)
            turn_role = "user"
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
            turn_role = "assistant"
        elif role == "tool":
            blocks = [_tool_result(message, where)]
            turn_role = "user"
        else:
            raise TranslationError(f"Unsupported message role {role!r}", f"{where}.role")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == turn_role:  # Anthropic wants alternating turns
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})
    if not turns:
        raise TranslationError("messages must hold at least one user message", "messages")
    for turn in turns:  # tool results lead their user turn, as Anthropic requires
        turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return _system(system), turns


def _system(messages: list[list[dict[str, Any]]]) -> str | list[dict[str, Any]]:
    """The system prompt from each system message's text blocks: one string, the texts
    joined by a blank line, unless a block carries `cache_control`. Then the non-empty
    blocks themselves, so that the cache breakpoint stays where the client put it."""
    if any("cache_control" in block for blocks in messages for block in blocks):
        return [block for blocks in messages for block in blocks if block["text"]]
    texts = ("\n\n".join(block["text"] for block in blocks) for blocks in messages)
    return "\n\n".join(text for text in texts if text)


def _text_blocks(content: Any, where: str, item: str = "[{}]") -> list[dict[str, Any]]:
    """String or text-part content as Messages text blocks, each part's `cache_control` kept.

    `item` spells a part's place after `where`: `[0]` in OpenAI's params, `.0` in Anthropic's.
    """
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise TranslationError("content must be a string or a list of text parts", where)
    blocks = []
    for j, part in enumerate(content):
        at = where + item.format(j)
        if not isinstance(part, dict) or part.get("type") != "text":
            raise TranslationError("Only text is allowed here", at)
        blocks.append(_cached({"type": "text", "text": _text_of(part, at)}, part))
    return blocks


def _joined_text(content: Any, where: str, item: str = "[{}]") -> str:
    """Text of string or text-part content: tool messages and results, Anthropic's system."""
    return "\n\n".join(block["text"] for block in _text_blocks(content, where, item))


def _cached(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """`block` with the `cache_control` of the client's `part`, when it is one the Messages
    API takes (`{"type": "ephemeral"}`, optionally with a `ttl` of 5m or 1h); any other
    value is dropped, as every unknown key of a part is."""
    control = part.get("cache_control")
    if isinstance(control, dict) and control.get("type") == "ephemeral":
        kept = {"type": "ephemeral"}
        if control.get("ttl") in CACHE_TTLS:
            kept["ttl"] = control["ttl"]
        block["cache_control"] = kept
    return block


def _text_of(part: dict[str, Any], where: str) -> str:
    text = part.get("text")
    if not isinstance(text, str):
        raise TranslationError("A text part needs a text string", f"{where}.text")
    return text


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise TranslationError("content must be a string or a list of parts", f"{where}.content")
    blocks = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if text := _text_of(part, at):
                blocks.append(_cached({"type": "text", "text": text}, part))
        elif kind == "image_url":
            blocks.append(_cached(_image_block(part.get("image_url"), at), part))
        else:
            raise TranslationError(f"Unsupported content part type {kind!r}", f"{at}.type")
    return blocks


def _image_block(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise TranslationError("image_url needs a url", f"{where}.image_url.url")
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    found = _DATA_URL.fullmatch(url)
    if found and ";base64" in found["params"].lower():
        source = {"type": "base64", "media_type": found["type"].lower(), "data": found["data"]}
        return {"type": "image", "source": source}
    raise TranslationError(
        "image_url must be an http(s) URL or a base64 data URL", f"{where}.image_url.url"
    )


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    content = message.get("content")
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif isinstance(content, list):
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text = _text_of(part, f"{where}.content[{j}]")
            elif kind == "refusal" and isinstance(part.get("refusal"), str):
                text = part["refusal"]
            else:
                raise TranslationError(
                    f"Unsupported assistant content part {kind!r}", f"{where}.content[{j}]"
                )
            if text:
                blocks.append(_cached({"type": "text", "text": text}, part))
    elif content is not None:
        raise TranslationError("content must be a string or a list of parts", f"{where}.content")
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise TranslationError("tool_calls must be a list", f"{where}.tool_calls")
    for k, call in enumerate(calls):
        at = f"{where}.tool_calls[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(call.get("id"), str):
            raise TranslationError("A tool call needs an id and a function", at)
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError("A tool call needs a function name", f"{at}.function.name")
        blocks.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": name,
                "input": _arguments(function.get("arguments"), f"{at}.function.arguments"),
            }
        )
    return blocks


def _arguments(arguments: Any, where: str) -> dict[str, Any]:
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else None
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise TranslationError("Tool call arguments must be a JSON object as a string", where)
    return value


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError("A tool message needs a tool_call_id", f"{where}.tool_call_id")
    parts = _text_blocks(message.get("content"), f"{where}.content")
    text = "\n\n".join(part["text"] for part in parts)
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    if text:
        block["content"] = text
    for part in parts:  # the content is one text, so a breakpoint on a part is on the result
        if "cache_control" in part:
            block["cache_control"] = part["cache_control"]
    return block


# --- Anthropic -> OpenAI -------------------------------------------------------------

_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def anthropic_request_to_openai(body: dict[str, Any]) -> OpenAIRequest:
    """An Anthropic Messages body as an OpenAI Chat Completions body."""
    if not isinstance(body, dict):
        raise TranslationError("The request body must be a JSON object")
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    messages: list[dict[str, Any]] = []
    if system := _joined_text(body.get("system"), "system", ".{}"):
        messages.append({"role": "system", "content": system})
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise TranslationError("messages must be a non-empty list", "messages")
    for i, message in enumerate(raw):
        messages.extend(_anthropic_message(message, f"messages.{i}"))
    out["messages"] = messages
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0:
        out["max_tokens"] = max_tokens
    for name in ("temperature", "top_p"):
        if isinstance(body.get(name), int | float) and not isinstance(body[name], bool):
            out[name] = body[name]
    stops = body.get("stop_sequences")
    if isinstance(stops, list) and stops:
        out["stop"] = stops
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        out["tools"] = [_anthropic_tool(tool, f"tools.{i}") for i, tool in enumerate(tools)]
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            kind = choice.get("type")
            if kind == "tool" and isinstance(choice.get("name"), str):
                out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
            elif isinstance(kind, str) and kind in _TOOL_CHOICES:
                out["tool_choice"] = _TOOL_CHOICES[kind]
            if choice.get("disable_parallel_tool_use") is True:
                out["parallel_tool_calls"] = False
    stream = body.get("stream") is True
    if stream:
        out["stream"] = True
        # Always asked: the usage chunk is how the translated stream learns its token counts.
        out["stream_options"] = {"include_usage": True}
    return OpenAIRequest(out, stream)


def _anthropic_message(message: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise TranslationError('Each message needs role "user" or "assistant"', where)
    role = message["role"]
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise TranslationError("content must be a string or a list of blocks", where)
    if role == "assistant":
        return [_anthropic_assistant(content, where)]
    results: list[dict[str, Any]] = []  # tool messages must directly follow the tool calls
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": _text_of(block, at)})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block, at)}})
        elif kind == "tool_result":
            results.append(_anthropic_tool_result(block, at))
        else:
            raise TranslationError(f"Unsupported content block type {kind!r}", at)
    out = list(results)
    if parts:
        if all(part["type"] == "text" for part in parts):
            out.append({"role": "user", "content": "\n\n".join(p["text"] for p in parts)})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _image_url(block: dict[str, Any], where: str) -> str:
    source = block.get("source")
    if (
        isinstance(source, dict)
        and source.get("type") == "url"
        and isinstance(source.get("url"), str)
    ):
        return source["url"]
    if isinstance(source, dict) and source.get("type") == "base64":
        media, data = source.get("media_type"), source.get("data")
        if isinstance(media, str) and isinstance(data, str):
            return f"data:{media};base64,{data}"
    raise TranslationError("An image needs a base64 or url source", f"{where}.source")


def _anthropic_tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str):
        raise TranslationError("A tool_result needs a tool_use_id", where)
    text = _joined_text(block.get("content"), f"{where}.content", ".{}")
    if block.get("is_error") is True:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _anthropic_assistant(content: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text_of(block, at))
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise TranslationError("A tool_use needs an id and a name", at)
            arguments = json_text(block.get("input") or {}, ascii_only=True)
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # OpenAI servers take no reasoning back
        else:
            raise TranslationError(f"Unsupported content block type {kind!r}", at)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _anthropic_tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise TranslationError(f"Server tools ({kind}) are not available from this upstream", where)
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise TranslationError("A tool needs a name", f"{where}.name")
    function: dict[str, Any] = {
        "name": name,
        "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
    }
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}

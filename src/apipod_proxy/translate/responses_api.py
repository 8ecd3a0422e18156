"""The OpenAI Responses API (`POST /v1/responses`) as Chat Completions, and back.

A Responses request becomes a Chat Completions one (`responses_request_to_chat`); over
an Anthropic-only upstream the Chat Completions translation (requests.py) then applies
on top, so every Messages rule is written once. A whole Chat Completions answer becomes
a Responses object (`chat_response_to_responses`); streams are in responses_stream.py.
Cursor's Agent mode posts Responses bodies to `/v1/chat/completions` and reads Chat
Completions back: the same request translation, and `chat_answer_for_cursor` for the
answer. docs/translation.md lists what is mapped, dropped and refused.

Nothing is stored: `store` is accepted either way (nothing is kept, so `store: false` is
honoured), and `previous_response_id` / `conversation` are refused with 400
`unsupported_parameter`: the client must send the whole input each turn.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from ..metering import meter_of_body
from .custom_tools import input_parameters, unwrap, wrapped
from .requests import TranslationError

RESPONSES_PATH = "/v1/responses"

#: Responses fields accepted and dropped: bookkeeping and hints with no Chat
#: Completions equivalent, whose absence changes no shape the client parses.
DROPPED_FIELDS = frozenset(
    {
        "include",  # reasoning.encrypted_content: no encrypted reasoning is returned
        "truncation",
        "prompt_cache_key",
        "prompt_cache_retention",
        "service_tier",
        "metadata",
        "safety_identifier",
        "store",
        "stream_options",  # Responses' stream_options (include_obfuscation)
        "max_tool_calls",
        "top_logprobs",
        "user",
    }
)
#: Tools dropped rather than refused, because a client sends them on every request and
#: the model answers in the same shape without them: hosted web search (Codex sends
#: `web_search` whenever it is enabled), and Codex CLI's `namespace` (a group of its
#: sub-agent functions, multi_agent_v1) and `tool_search` (client-side tool discovery).
#: Every other hosted tool is refused with a 400 naming it.
DROPPED_TOOLS = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_preview_2025_03_11",
        "namespace",
        "tool_search",
    }
)
#: Request fields that need a stored response or a feature the proxy does not have.
_NEEDS_STORAGE = ("previous_response_id", "conversation")


class UnsupportedParameter(TranslationError):
    """400 `unsupported_parameter`: a Responses feature that needs stored state."""

    def openai_payload(self) -> dict[str, Any]:
        error = {
            "message": self.message,
            "type": "invalid_request_error",
            "param": self.param,
            "code": "unsupported_parameter",
        }
        return {"error": error}


@dataclass(frozen=True, slots=True)
class ResponsesContext:
    """What the answer to a translated Responses request needs from the request."""

    #: The names of the custom tools (their calls are `custom_tool_call` items).
    custom: frozenset[str] = frozenset()
    #: Request fields a Responses object echoes (instructions, tools, tool_choice...).
    echo: dict[str, Any] = field(default_factory=dict)
    #: The answer's id, `resp_…`, fixed at request time.
    id: str = field(default_factory=lambda: "resp_" + secrets.token_hex(12))


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A translated Responses request: the Chat Completions body and the answer's needs."""

    body: dict[str, Any]
    stream: bool
    #: A Cursor body asked for the usage chunk (`stream_options.include_usage`).
    include_usage: bool
    context: ResponsesContext


def is_responses_body(body: Any) -> bool:
    """A Responses-shaped body on the Chat Completions path (Cursor's Agent mode):
    `input` and no `messages`."""
    return isinstance(body, dict) and "input" in body and "messages" not in body


# --- request -------------------------------------------------------------------------


def responses_request_to_chat(body: dict[str, Any], for_cursor: bool = False) -> ChatRequest:
    """A Responses body as a Chat Completions body. `for_cursor`: the answer goes back as
    Chat Completions, so the client's own `stream_options` decide the usage chunk."""
    if not isinstance(body, dict):
        raise TranslationError("The request body must be a JSON object")
    for name in _NEEDS_STORAGE:
        if body.get(name) is not None:
            raise UnsupportedParameter(
                f"{name} is not supported: this proxy stores no responses; send the whole "
                "conversation in `input` on every turn (and leave out previous_response_id)",
                name,
            )
    for name in ("background", "prompt"):
        if body.get(name) not in (None, False):
            raise TranslationError(f"{name} is not available from this upstream", name)
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    tools, custom = _tools(body.get("tools"))
    messages = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise TranslationError("instructions must be a string", "instructions")
        if instructions:
            messages.append({"role": "system", "content": instructions})
    messages.extend(_input_messages(body.get("input"), custom))
    out["messages"] = messages
    max_tokens = body.get("max_output_tokens")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise TranslationError(
                "max_output_tokens must be a positive integer", "max_output_tokens"
            )
        out["max_tokens"] = max_tokens
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise TranslationError("reasoning must be an object", "reasoning")
        if reasoning.get("effort") is not None:
            out["reasoning_effort"] = reasoning["effort"]
    if (response_format := _text_format(body.get("text"))) is not None:
        out["response_format"] = response_format
    if tools:
        out["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"))
        if choice is not None:
            out["tool_choice"] = choice
        if isinstance(body.get("parallel_tool_calls"), bool):
            out["parallel_tool_calls"] = body["parallel_tool_calls"]
    if isinstance(body.get("user"), str) and body["user"]:
        out["user"] = body["user"]
    stream = body.get("stream") is True
    include_usage = False
    if stream:
        out["stream"] = True
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        # Always asked upstream: the usage chunk is how the stream's counts are learned.
        out["stream_options"] = {"include_usage": True}
    if not for_cursor:
        include_usage = stream
    echo = {
        name: body.get(name)
        for name in (
            "instructions",
            "max_output_tokens",
            "parallel_tool_calls",
            "temperature",
            "tool_choice",
            "tools",
            "top_p",
            "reasoning",
            "text",
            "metadata",
            "store",
            "truncation",
        )
    }
    return ChatRequest(out, stream, include_usage, ResponsesContext(custom, echo))


def _tools(tools: Any) -> tuple[list[dict[str, Any]], frozenset[str]]:
    if tools is None:
        return [], frozenset()
    if not isinstance(tools, list):
        raise TranslationError("tools must be a list", "tools")
    out: list[dict[str, Any]] = []
    custom: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind in DROPPED_TOOLS:
            continue
        if kind not in ("function", "custom"):
            raise TranslationError(
                f"The hosted tool {kind!r} is not available from this upstream; "
                "only function and custom tools are",
                where,
            )
        assert isinstance(tool, dict)
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError("A tool needs a name", f"{where}.name")
        function: dict[str, Any] = {"name": name}
        description = tool.get("description")
        if kind == "function":
            schema = tool.get("parameters")
            if schema is None:
                schema = {"type": "object", "properties": {}}
            if not isinstance(schema, dict):
                raise TranslationError(
                    "parameters must be a JSON schema object", f"{where}.parameters"
                )
            if isinstance(description, str):
                function["description"] = description
            function["parameters"] = schema
        else:
            custom.add(name)
            function["description"] = (
                description if isinstance(description, str) and description else name
            )
            function["parameters"] = input_parameters(_custom_format(tool.get("format")))
        out.append({"type": "function", "function": function})
    return out, frozenset(custom)


def _custom_format(form: Any) -> str:
    """The description of a custom tool's one string parameter: its grammar, if any."""
    text = "The tool's whole input, as free text (not JSON)."
    if isinstance(form, dict) and form.get("type") == "grammar":
        syntax = form.get("syntax")
        definition = form.get("definition")
        if isinstance(definition, str) and definition:
            return f"{text} It follows this {syntax or 'grammar'} grammar:\n{definition}"
    return text


def _tool_choice(choice: Any) -> Any:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind in ("function", "custom") and isinstance(choice.get("name"), str):
            return {"type": "function", "function": {"name": choice["name"]}}
        if kind == "allowed_tools" and choice.get("mode") in ("auto", "required"):
            raise TranslationError(
                "tool_choice allowed_tools is not available from this upstream; "
                "send only the allowed tools",
                "tool_choice",
            )
    raise TranslationError(
        'tool_choice must be "auto", "none", "required" or a named function or custom tool',
        "tool_choice",
    )


def _text_format(text: Any) -> dict[str, Any] | None:
    """`text.format` as Chat Completions' `response_format` (text: none needed);
    `text.verbosity` is dropped. Over an Anthropic upstream the JSON formats are then
    refused by the Chat Completions translation."""
    if text is None:
        return None
    if not isinstance(text, dict):
        raise TranslationError("text must be an object", "text")
    form = text.get("format")
    if form is None or (isinstance(form, dict) and form.get("type") == "text"):
        return None
    if isinstance(form, dict) and form.get("type") == "json_object":
        return {"type": "json_object"}
    if isinstance(form, dict) and form.get("type") == "json_schema":
        schema = {
            name: form[name] for name in ("name", "schema", "strict", "description") if name in form
        }
        return {"type": "json_schema", "json_schema": schema}
    raise TranslationError("text.format must be text, json_object or json_schema", "text.format")


def _input_messages(items: Any, custom: frozenset[str]) -> list[dict[str, Any]]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise TranslationError("input must be a string or a non-empty list of items", "input")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise TranslationError("Each input item must be an object", where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            if (message := _message(item, where)) is not None:
                messages.append(message)
        elif kind in ("function_call", "custom_tool_call"):
            _add_call(messages, item, kind, custom, where)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise TranslationError("A tool output needs a call_id", f"{where}.call_id")
            content = _output_text(item.get("output"), f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": content})
        elif kind == "reasoning":
            continue  # the upstream takes no reasoning back (no signature survives)
        elif kind == "item_reference":
            raise UnsupportedParameter(
                "item_reference needs stored items, which this proxy does not keep; "
                "send the items themselves",
                where,
            )
        else:
            raise TranslationError(f"Unsupported input item type {kind!r}", f"{where}.type")
    if not messages:
        raise TranslationError("input must hold at least one message", "input")
    return messages


def _message(item: dict[str, Any], where: str) -> dict[str, Any] | None:
    role = item.get("role")
    content = item.get("content")
    if role in ("system", "developer"):
        text = _text(content, f"{where}.content", ("input_text", "output_text", "text"))
        return {"role": "system", "content": text} if text else None
    if role == "assistant":
        text = _text(content, f"{where}.content", ("output_text", "input_text", "text", "refusal"))
        return {"role": "assistant", "content": text} if text else None
    if role != "user":
        raise TranslationError(f"Unsupported message role {role!r}", f"{where}.role")
    if isinstance(content, str):
        return {"role": "user", "content": content} if content else None
    if not isinstance(content, list):
        raise TranslationError("content must be a string or a list of parts", f"{where}.content")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "text", "output_text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise TranslationError("A text part needs a text string", f"{at}.text")
            if text:
                parts.append({"type": "text", "text": text})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise TranslationError(
                    "input_image needs an image_url (file_id needs stored files)", at
                )
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise TranslationError(f"Unsupported content part type {kind!r}", f"{at}.type")
    if not parts:
        return None
    if all(part["type"] == "text" for part in parts):
        return {"role": "user", "content": "\n\n".join(part["text"] for part in parts)}
    return {"role": "user", "content": parts}


def _text(content: Any, where: str, kinds: tuple[str, ...]) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise TranslationError("content must be a string or a list of parts", where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in kinds:
            raise TranslationError(f"Unsupported content part type {kind!r}", f"{where}[{j}]")
        text = part.get("refusal" if kind == "refusal" else "text")
        if not isinstance(text, str):
            raise TranslationError("A text part needs a text string", f"{where}[{j}]")
        texts.append(text)
    return "".join(texts)


def _output_text(output: Any, where: str) -> str:
    if output is None:
        return ""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return _text(output, where, ("input_text", "output_text", "text"))
    raise TranslationError("A tool output must be a string or a list of text parts", where)


def _add_call(
    messages: list[dict[str, Any]],
    item: dict[str, Any],
    kind: str,
    custom: frozenset[str],
    where: str,
) -> None:
    call_id, name = item.get("call_id"), item.get("name")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError("A tool call needs a call_id", f"{where}.call_id")
    if not isinstance(name, str) or not name:
        raise TranslationError("A tool call needs a name", f"{where}.name")
    if kind == "custom_tool_call":
        text = item.get("input")
        arguments = wrapped(text if isinstance(text, str) else "")
    else:
        arguments = item.get("arguments")
        if not isinstance(arguments, str):
            arguments = "{}" if arguments is None else None
        if arguments is None:
            raise TranslationError("arguments must be a string", f"{where}.arguments")
        if name in custom:  # a custom tool's call, as a client keeping chat history sends it
            arguments = wrapped(unwrap(arguments))
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


# --- whole answers -------------------------------------------------------------------


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def usage_of(meter_usage: dict[str, Any]) -> dict[str, Any]:
    """A Chat Completions usage object (as Meter.openai() writes it) in Responses' names."""
    prompt = meter_usage.get("prompt_tokens", 0)
    completion = meter_usage.get("completion_tokens", 0)
    cached = (meter_usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    reasoning = (meter_usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)
    return {
        "input_tokens": prompt,
        # The upstream's cache writes are not reported (antigravity-claude-proxy's are 0).
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def status_of(finish_reason: Any) -> tuple[str, dict[str, Any] | None]:
    """(status, incomplete_details) for a Chat Completions finish_reason."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def response_object(
    context: ResponsesContext,
    model: Any,
    created: int,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    incomplete: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Responses `response` object, the request's echoed fields included."""
    echo = context.echo
    return {
        "id": context.id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": echo.get("instructions"),
        "max_output_tokens": echo.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": echo.get("parallel_tool_calls") is not False,
        "previous_response_id": None,
        "reasoning": echo.get("reasoning") or {"effort": None, "summary": None},
        "store": False,
        "temperature": echo.get("temperature"),
        "text": echo.get("text") or {"format": {"type": "text"}},
        "tool_choice": echo.get("tool_choice") or "auto",
        "tools": echo.get("tools") or [],
        "top_p": echo.get("top_p"),
        "truncation": echo.get("truncation") or "disabled",
        "usage": usage,
        "metadata": echo.get("metadata") or {},
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}],
    }


def call_item(
    item_id: str, call_id: str, name: str, arguments: str, custom: bool, status: str = "completed"
) -> dict[str, Any]:
    if custom:
        return {
            "id": item_id,
            "type": "custom_tool_call",
            "status": status,
            "call_id": call_id,
            "name": name,
            "input": arguments,
        }
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def chat_response_to_responses(
    body: dict[str, Any],
    context: ResponsesContext,
    model: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """A whole chat.completion as a Responses object."""
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    choice = choice if isinstance(choice, dict) else {}
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    output: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        output.append(reasoning_item(_item_id("rs"), reasoning))
    text = message.get("content")
    if isinstance(text, str) and text:
        output.append(message_item(_item_id("msg"), text))
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        name = function.get("name") if isinstance(function.get("name"), str) else ""
        arguments = function.get("arguments")
        arguments = arguments if isinstance(arguments, str) else "{}"
        is_custom = name in context.custom
        shown = unwrap(arguments) if is_custom else arguments
        call_id = call.get("id") if isinstance(call.get("id"), str) else _item_id("call")
        prefix = "ctc" if is_custom else "fc"
        output.append(call_item(_item_id(prefix), call_id, name, shown, is_custom))
    if not output:
        output.append(message_item(_item_id("msg"), ""))
    status, incomplete = status_of(choice.get("finish_reason"))
    usage = usage_of(meter_of_body(body).openai())
    shown_model = model if model is not None else body.get("model")
    stamp = int(time.time()) if created is None else created
    return response_object(context, shown_model, stamp, status, output, usage, incomplete)


def chat_answer_for_cursor(body: dict[str, Any], custom: frozenset[str]) -> dict[str, Any]:
    """A whole chat.completion for a Responses-shaped Chat Completions request: a custom
    tool's call carries its input text as `arguments`, not the JSON it travelled in."""
    if not custom:
        return body
    for choice in body.get("choices") or []:
        message = choice.get("message") if isinstance(choice, dict) else None
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for call in calls if isinstance(calls, list) else []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and function.get("name") in custom:
                function["arguments"] = unwrap(function.get("arguments"))
    return body

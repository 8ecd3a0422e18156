"""A stand-in upstream that speaks only OpenAI Chat Completions (as some gateways do).

- `POST /v1/chat/completions`, JSON or SSE; `GET /v1/models`; every other path,
  `/v1/messages` included, answers 404 in OpenAI's shape (`unknown_url`).
- With a `key`, `/v1/*` needs `Authorization: Bearer <key>` (401 `invalid_api_key`).
- Requests are checked as strictly as OpenAI does: unknown top-level fields (anything
  Anthropic-only, such as `system`, `stop_sequences` or `thinking`) are 400
  "Unrecognized request argument", and a `tool` message must answer a tool call of the
  assistant message before it.
- Given tools (and a tool_choice other than none) and no tool results, the answer is a
  tool call whose arguments stream in several pieces; given tool results, the answer
  quotes them. Models `*-thinking` add `reasoning_content` first.
- Usage: `prompt_tokens` (default 30, of which `cached_tokens`, default 0, are cached)
  and `completion_tokens` one per word written; the usage chunk (`choices: []`) is sent
  only with `stream_options.include_usage`. Each answer's counts go to `reported`.
- Streamed events are split across TCP writes (`split_writes`).
- `x-standin-status: CODE` answers an error; `x-standin-stream-error: MESSAGE` sends a
  little text and then the error chunk `data: {"error": {...}}` inside a 200 stream;
  `x-standin-mode: text` answers text even when given tools (for agents such as Claude
  Code, which send dozens of tools with every turn).
- `x-standin-quota: DURATION` answers 429 `rate_limit_error` "You have exhausted your
  capacity on <model>. Quota will reset after DURATION.", as an OpenAI-shaped
  Antigravity gateway reports a used-up quota.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from tests.support.standin_base import Reported, SplitWriter, ThreadedServer

MODELS = ["gpt-4o-mini", "claude-sonnet-4-5", "gemini-3-flash", "o-mini-thinking"]
PROMPT_TOKENS = 30
TOP_LEVEL = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "reasoning_effort",
    "response_format",
    "logprobs",
    "top_logprobs",
    "metadata",
    "store",
}


class Invalid(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def error(
    status: int, message: str, kind: str, code: str | None, param: str | None = None
) -> web.Response:
    payload = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(payload, status=status)


class OpenAIStandIn(ThreadedServer):
    def __init__(self, key: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.key = key
        self.cached_tokens = 0
        self.arguments_piece = 6

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.dispatch)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        entry = await self.record(request)
        path = request.path
        authorized = self.key is None or (
            request.headers.get("authorization") == f"Bearer {self.key}"
        )
        if path.startswith("/v1/") and not authorized:
            return error(
                401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key"
            )
        if request.method == "GET" and path == "/v1/models":
            data = [
                {"id": m, "object": "model", "created": 1700000000, "owned_by": "standin"}
                for m in MODELS
            ]
            return web.json_response({"object": "list", "data": data})
        if request.method == "POST" and path == "/v1/chat/completions":
            return await self.chat(request, entry.body)
        return error(
            404,
            f"Invalid URL ({request.method} {path})",
            "invalid_request_error",
            "unknown_url",
        )

    async def chat(self, request: web.Request, raw: bytes) -> web.StreamResponse:
        if status := request.headers.get("x-standin-status"):
            return error(int(status), f"stand-in error {status}", "server_error", None)
        try:
            body = json.loads(raw)
            validate(body)
        except ValueError:
            return error(400, "We could not parse the JSON body", "invalid_request_error", None)
        except Invalid as exc:
            return error(400, str(exc), "invalid_request_error", None, exc.param)
        model = body["model"]
        if reset := request.headers.get("x-standin-quota"):
            quota = f"You have exhausted your capacity on {model}. Quota will reset after {reset}."
            return error(429, quota, "rate_limit_error", None)
        message = self._answer(body, request.headers.get("x-standin-mode") == "text")
        words = [message.get("reasoning_content") or "", message.get("content") or ""]
        for call in message.get("tool_calls") or []:
            words.append(call["function"]["arguments"])
        completion = sum(len(w.split()) for w in words)
        stream = body.get("stream") is True
        self.reported.append(
            Reported(
                model, stream, PROMPT_TOKENS - self.cached_tokens, self.cached_tokens, completion
            )
        )
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": completion,
            "total_tokens": PROMPT_TOKENS + completion,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        number = len(self.reported)
        if not stream:
            return web.json_response(
                {
                    "id": f"chatcmpl-standin-{number}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
                    ],
                    "usage": usage,
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        writer = SplitWriter(response, self.split_writes)

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            payload: dict[str, Any] = {
                "id": f"chatcmpl-standin-{number}",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
                **extra,
            }
            if include_usage and "usage" not in extra:
                payload["usage"] = None
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        await writer.send(chunk({"role": "assistant", "content": ""}))
        if failure := request.headers.get("x-standin-stream-error"):
            await writer.send(chunk({"content": "Partial "}))
            failed = {"error": {"message": failure, "type": "server_error", "code": None}}
            await writer.send(b"data: " + json.dumps(failed).encode() + b"\n\n")
            await writer.close()
            return response
        if message.get("reasoning_content"):
            await writer.send(chunk({"reasoning_content": message["reasoning_content"]}))
        if message.get("content"):
            words = message["content"].split(" ")
            for piece in [w + " " for w in words[:-1]] + words[-1:]:
                await writer.send(chunk({"content": piece}))
        for index, call in enumerate(message.get("tool_calls") or []):
            head = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            await writer.send(chunk({"tool_calls": [head]}))
            arguments = call["function"]["arguments"]
            for i in range(0, len(arguments), self.arguments_piece):
                piece = arguments[i : i + self.arguments_piece]
                await writer.send(
                    chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                )
        await writer.send(chunk({}, finish))
        if include_usage:
            final = {
                "id": f"chatcmpl-standin-{number}",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": usage,
            }
            await writer.send(b"data: " + json.dumps(final).encode() + b"\n\n")
        await writer.send(b"data: [DONE]\n\n")
        await writer.close()
        return response

    def _answer(self, body: dict[str, Any], text_only: bool = False) -> dict[str, Any]:
        model = body["model"]
        messages = body["messages"]
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if model.endswith("-thinking"):
            message["reasoning_content"] = f"Thinking as {model}."
        results = []
        for m in reversed(messages):
            if m["role"] != "tool":
                break
            results.insert(
                0, m["content"] if isinstance(m["content"], str) else json.dumps(m["content"])
            )
        tools = body.get("tools") or []
        choice = body.get("tool_choice", "auto")
        if results:
            message["content"] = "The tool said: " + "; ".join(results)
        elif tools and choice != "none" and not text_only:
            named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
            tool = next((t for t in tools if t["function"]["name"] == named), tools[0])
            properties = (tool["function"].get("parameters") or {}).get("properties") or {}
            arguments = json.dumps({name: f"value of {name}" for name in properties})
            message["tool_calls"] = [
                {
                    "id": f"call_standin_{len(self.reported)}",
                    "type": "function",
                    "function": {"name": tool["function"]["name"], "arguments": arguments},
                }
            ]
        else:
            message["content"] = f"Hello from {model}."
        return message


def validate(body: Any) -> None:
    if not isinstance(body, dict):
        raise Invalid("The body must be a JSON object")
    for key in body:
        if key not in TOP_LEVEL:
            raise Invalid(f"Unrecognized request argument supplied: {key}", key)
    if not isinstance(body.get("model"), str):
        raise Invalid("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages must be a non-empty array", "messages")
    open_calls: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        where = f"messages.[{i}]"
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise Invalid(f"Invalid value for 'role': {role!r}", f"{where}.role")
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
                    raise Invalid("Invalid content part", f"{where}.content")
        elif content is not None and not isinstance(content, str):
            raise Invalid("Invalid content", f"{where}.content")
        if role == "tool":
            if message.get("tool_call_id") not in open_calls:
                raise Invalid(
                    "Messages with role 'tool' must be a response to a preceeding message "
                    "with 'tool_calls'.",
                    f"{where}.role",
                )
            open_calls.discard(message["tool_call_id"])
            continue
        if open_calls:
            raise Invalid(
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'.",
                f"{where}.role",
            )
        if role == "assistant":
            open_calls = {call["id"] for call in message.get("tool_calls") or []}

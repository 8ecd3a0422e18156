"""A stand-in for antigravity-claude-proxy: an upstream that speaks only Anthropic Messages.

It behaves as the shared notes on wire formats measured (version 2.0.4):
- `POST /v1/messages`, streamed or not; `GET /v1/models` answers an OpenAI-shaped list;
  `POST /v1/messages/count_tokens` answers 501; like the real one it serves its config
  (with its key), accounts, quotas and console at `/api/config`, `/api/accounts`,
  `/account-limits` and `/` (upstream_console.py); every other path, `/v1/chat/completions`
  included, answers 404 `not_found_error` "Endpoint <METHOD> <path> not found".
- With a `key`, `/v1/*` needs it: `Authorization: Bearer` is read first, then
  `x-api-key`; a mismatch is 401 `authentication_error`.
- It checks requests as strictly as the Messages API: unknown top-level fields, roles
  that do not alternate, a `system` role inside messages, a tool_result without its
  tool_use, a missing `max_tokens`, a `system` block that is not non-empty text, and a
  `cache_control` that is not `{"type": "ephemeral"}` (with an optional `ttl` of 5m or
  1h) or on more than 4 blocks are all 400 `invalid_request_error`. A translation
  that forwards anything OpenAI-only therefore fails loudly.
- Models `*-thinking` and `gemini-3*` answer with a `thinking` block (with a signature)
  first. Given tools (and a tool_choice other than none), the answer is a short text and
  a `tool_use` whose `input_json_delta` comes in several pieces; given tool results, the
  answer quotes them. Non-streamed tool calls carry `stop_reason: "end_turn"`, streamed
  ones `tool_use`, as upstream does.
- Usage: `input_tokens` (the prompt minus cached tokens, `input_tokens`, default 25),
  `cache_read_input_tokens` (`cache_read_tokens`, default 0, or the
  `x-standin-cache-read` header) and `cache_creation_input_tokens` (always 0). Streamed,
  `message_delta.usage` carries `output_tokens` and both cache figures but **no
  `input_tokens`**, as upstream does. `output_tokens` counts the text and tool input,
  never the thinking (upstream's is Google's candidatesTokenCount). Every answer's counts
  are appended to `reported`. tests/e2e/test_e2e_standin_differential.py checks all this
  against the real package.
- Streamed events are split across TCP writes (`split_writes`).
- `exhaust(model, reset, in_stream)` makes a model answer the quota error: HTTP 400 to
  a plain request, `event: error` inside a 200 stream to a streamed one (2.0.4 sends its
  headers before it asks Google); `in_stream=False` answers a streamed request 400 too.
  `answer_empty(model)` gives the "[No response after retries]" stream (a plain request:
  one empty text block), with zero usage.

Per-request steering headers: `x-standin-status: CODE` (an error answer),
`x-standin-mode: text|tool` (ignore or force tools), `x-standin-tool: NAME` and
`x-standin-tool-input: JSON` (call that tool with that input, as an agent's test needs a
real command; otherwise the first tool, each property "value of <name>"),
`x-standin-cache-read: N`,
`x-standin-echo-error: 1` (a 400 `invalid_request_error` whose message quotes the last
user text, `Invalid value "<text>"`, as upstreams quote a client's field; inside a 200
stream when the request streams).
`x-standin-input-tokens: N` (the uncached prompt), and `x-standin-pause: S` with
`x-standin-pause-before: EVENT` (wait S seconds before sending that event, `message_delta`
by default: a client can hang up before the usage arrives). `message_delta.usage` is
always the real upstream's shape (`x-standin-usage-shape: real` is accepted and changes
nothing).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.support.standin_base import Reported, SplitWriter, ThreadedServer
from tests.support.upstream_console import add_console_routes

MODELS = [
    "claude-sonnet-4-5",
    "claude-sonnet-4-5-thinking",
    "claude-opus-4-5-thinking",
    "gemini-3-flash",
    "gemini-3-pro-high",
    "gemini-2.5-flash",
]
EMPTY_ANSWER = "[No response after retries - please try again]"
COUNT_TOKENS_MESSAGE = (
    "Token counting is not implemented. Use /v1/messages with max_tokens or configure "
    "your client to skip token counting."
)
INPUT_TOKENS = 25
TOP_LEVEL = {
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    # Messages API fields (beta) Claude Code sends with Opus names; antigravity-claude-
    # proxy ignores them, as it ignores every field it does not read (server.js).
    "context_management",
    "output_config",
}
BLOCK_TYPES = {"text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking"}
#: The Messages API takes at most this many blocks (system, messages and tools) with
#: `cache_control`, each `{"type": "ephemeral"}` with an optional `ttl` of 5m or 1h.
MAX_CACHE_BREAKPOINTS = 4
IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    529: "overloaded_error",
}


class Invalid(Exception):
    pass


@dataclass
class Exhaustion:
    reset: str
    in_stream: bool | None  # None: in the stream when the request streams
    prefixed: bool
    until: float | None


def reply(payload: Any, status: int = 200) -> web.Response:
    """JSON as the Node upstream writes it: compact."""
    return web.json_response(payload, status=status, dumps=compact)


def compact(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"))


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user message (its text blocks joined)."""
    content = [m for m in body["messages"] if m.get("role") == "user"][-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if b.get("type") == "text")


def quota_message(model: str, reset: str, prefixed: bool) -> str:
    cut = model.split(".")[0]  # the real upstream cuts the model name at its first dot
    text = f"You have exhausted your capacity on {cut}. Quota will reset after {reset}."
    return f"RESOURCE_EXHAUSTED: {text}" if prefixed else text


def output_tokens(*texts: str) -> int:
    """A deterministic count: one token per word of what the model 'wrote'."""
    return sum(len(text.split()) for text in texts)


class AnthropicStandIn(ThreadedServer):
    def __init__(self, key: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.key = key
        #: The prompt minus its cached part (`input_tokens`), and the cached part.
        self.input_tokens = INPUT_TOKENS
        self.cache_read_tokens = 0
        self.exhausted: dict[str, Exhaustion] = {}
        self.empty_models: set[str] = set()
        #: Piece size of a tool call's input_json_delta.
        self.json_piece = 7
        #: False: GET /v1/models answers 503, as upstream does when no account is usable.
        self.accounts_available = True

    # --- steering ----------------------------------------------------------------

    def exhaust(
        self,
        model: str,
        reset: str = "1m0s",
        in_stream: bool | None = None,
        prefixed: bool = False,
        seconds: float | None = None,
    ) -> None:
        """`model` answers the quota error (for `seconds`, or until `restore`)."""
        until = time.monotonic() + seconds if seconds is not None else None
        self.exhausted[model] = Exhaustion(reset, in_stream, prefixed, until)

    def restore(self, model: str) -> None:
        self.exhausted.pop(model, None)

    def answer_empty(self, model: str, on: bool = True) -> None:
        (self.empty_models.add if on else self.empty_models.discard)(model)

    def control(self, action: str, body: dict[str, Any]) -> web.Response:
        """Steering over HTTP, for demos and other processes (`/_standin/<action>`)."""
        if action == "exhaust":
            self.exhaust(
                body["model"],
                body.get("reset", "1m0s"),
                body.get("in_stream"),
                body.get("prefixed", False),
                body.get("seconds"),
            )
        elif action == "restore":
            self.restore(body["model"])
        elif action == "empty":
            self.answer_empty(body["model"], body.get("on", True))
        else:
            return reply(error_body("not_found_error", f"no control {action}"), status=404)
        return reply({"ok": True})

    def _exhaustion(self, model: str) -> Exhaustion | None:
        found = self.exhausted.get(model)
        if found is not None and found.until is not None and time.monotonic() >= found.until:
            self.exhausted.pop(model, None)
            return None
        return found

    # --- routes ------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        add_console_routes(app, self.record, self.key)  # the upstream's own, for leak tests
        app.router.add_route("*", "/{tail:.*}", self.dispatch)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        entry = await self.record(request)
        path = request.path
        if path.startswith("/v1/") and not self._authorized(request):
            return reply(
                error_body("authentication_error", "Invalid or missing API key"), status=401
            )
        if request.method == "GET" and path == "/v1/models":
            if not self.accounts_available:
                return reply(error_body("api_error", "No accounts available"), status=503)
            return reply(self._models())
        if request.method == "POST" and path.startswith("/_standin/"):
            return self.control(path.removeprefix("/_standin/"), entry.json())
        if request.method == "POST" and path == "/v1/messages/count_tokens":
            return reply(error_body("not_implemented", COUNT_TOKENS_MESSAGE), status=501)
        if request.method == "POST" and path == "/v1/messages":
            return await self.messages(request, entry.body)
        if request.method == "GET" and path == "/health":
            return reply({"status": "ok"})
        return reply(
            error_body("not_found_error", f"Endpoint {request.method} {path} not found"),
            status=404,
        )

    def _authorized(self, request: web.Request) -> bool:
        if self.key is None:
            return True
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            return authorization[7:].strip() == self.key
        return request.headers.get("x-api-key") == self.key

    @staticmethod
    def _models() -> dict[str, Any]:
        data = [
            {
                "id": model,
                "object": "model",
                "created": 1700000000,
                "owned_by": "anthropic",
                "description": model,
            }
            for model in MODELS
        ]
        return {"object": "list", "data": data}

    async def messages(self, request: web.Request, raw: bytes) -> web.StreamResponse:
        if status := request.headers.get("x-standin-status"):
            code = int(status)
            kind = _STATUS_TYPES.get(code, "api_error")
            message = "Max retries exceeded" if code >= 500 else f"stand-in error {code}"
            return reply(error_body(kind, message), status=code)
        try:
            body = json.loads(raw)
            validate(body)
        except (ValueError, Invalid) as exc:
            return reply(error_body("invalid_request_error", str(exc)), status=400)
        model = body["model"]
        stream = body.get("stream") is True
        if request.headers.get("x-standin-echo-error"):
            echoed = f'Invalid value "{last_user_text(body)}"'
            if not stream:
                return reply(error_body("invalid_request_error", echoed), status=400)
            return await self._stream_error(request, echoed)
        if (exhaustion := self._exhaustion(model)) is not None:
            message = quota_message(model, exhaustion.reset, exhaustion.prefixed)
            if not stream or exhaustion.in_stream is False:
                return reply(error_body("invalid_request_error", message), status=400)
            return await self._stream_error(request, message)
        answer = self._answer(body, request)
        self.note(answer, stream)
        if stream:
            return await self._stream(request, answer)
        return reply(answer.message(stream=False))

    def _answer(self, body: dict[str, Any], request: web.Request) -> Answer:
        model = body["model"]
        cache_read = int(request.headers.get("x-standin-cache-read", self.cache_read_tokens))
        if model in self.empty_models:
            # Upstream makes up this text for a stream; a plain answer is one empty text.
            text = EMPTY_ANSWER if body.get("stream") is True else ""
            answer = Answer(model, 0, 0, text=text)
            answer.zero_usage = True
            return answer
        input_tokens = int(request.headers.get("x-standin-input-tokens", self.input_tokens))
        answer = Answer(model, input_tokens, cache_read, number=len(self.reported))
        if model.endswith("-thinking") or model.startswith("gemini-3"):
            answer.thinking = f"The user wants an answer from {model}."
            answer.signature = "sig_" + model.replace("-", "_") + "_0123456789"
        messages = body["messages"]
        last = messages[-1]
        results = [
            block
            for block in (last["content"] if isinstance(last["content"], list) else [])
            if block.get("type") == "tool_result"
        ]
        tools = body.get("tools") or []
        choice = (body.get("tool_choice") or {}).get("type", "auto")
        mode = request.headers.get("x-standin-mode", "")
        if results:
            quoted = "; ".join(tool_result_text(block) for block in results)
            answer.text = f"The tool said: {quoted}"
        elif tools and (mode == "tool" or (mode != "text" and choice != "none")):
            named = request.headers.get("x-standin-tool") or (
                (body.get("tool_choice") or {}).get("name")
            )
            tool = next((t for t in tools if t["name"] == named), tools[0])
            answer.text = f"Let me call {tool['name']}."
            properties = (tool.get("input_schema") or {}).get("properties") or {}
            given = request.headers.get("x-standin-tool-input")
            answer.tool = {
                "id": f"toolu_standin_{len(self.reported)}",
                "name": tool["name"],
                "input": json.loads(given)
                if given
                else {name: f"value of {name}" for name in properties},
            }
        else:
            images = sum(
                1
                for message in messages
                if isinstance(message["content"], list)
                for block in message["content"]
                if block.get("type") == "image"
            )
            seen = f" I see {images} image(s)." if images else ""
            answer.text = f"Hello from {model}.{seen}"
        return answer

    async def _stream_error(self, request: web.Request, message: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        writer = SplitWriter(response, self.split_writes)
        await writer.send(sse("error", error_body("invalid_request_error", message)))
        await writer.close()
        return response

    async def _stream(self, request: web.Request, answer: Answer) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        writer = SplitWriter(response, self.split_writes)
        pause = float(request.headers.get("x-standin-pause", "0"))
        before = (
            b"event: " + request.headers.get("x-standin-pause-before", "message_delta").encode()
        )
        for event in stream_events(answer, self.json_piece):
            if pause and event.startswith(before + b"\n"):
                await writer.flush()
                await asyncio.sleep(pause)
            await writer.send(event)
        await writer.close()
        return response

    def note(self, answer: Answer, stream: bool) -> None:
        self.reported.append(
            Reported(
                answer.model,
                stream,
                answer.input_tokens,
                answer.cache_read,
                answer.output_tokens,
            )
        )


@dataclass
class Answer:
    model: str
    input_tokens: int
    cache_read: int
    text: str = ""
    thinking: str = ""
    signature: str = ""
    tool: dict[str, Any] | None = None
    zero_usage: bool = False
    number: int = 0

    @property
    def output_tokens(self) -> int:
        if self.zero_usage:
            return 0
        tool = json.dumps(self.tool["input"]) if self.tool else ""
        # Google's candidatesTokenCount, which upstream reports, leaves the thinking out.
        return output_tokens(self.text, tool)

    def usage(self, output_tokens: int, start: bool = False) -> dict[str, int]:
        """A non-streamed answer's usage, or message_start's, in upstream's order."""
        if self.zero_usage and start:  # upstream's made-up "[No response]" stream
            return {"input_tokens": 0, "output_tokens": 0}
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": output_tokens,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation_input_tokens": 0,
        }

    def final_usage(self) -> dict[str, int]:
        """message_delta's usage: cumulative output and cache figures, no input_tokens."""
        if self.zero_usage:
            return {"output_tokens": 0}
        return {
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation_input_tokens": 0,
        }

    def message(self, stream: bool) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if self.thinking:
            content.append(
                {"type": "thinking", "thinking": self.thinking, "signature": self.signature}
            )
        if self.text or self.zero_usage:  # the empty answer is one empty text block
            content.append({"type": "text", "text": self.text})
        if self.tool:
            content.append({"type": "tool_use", **self.tool})
        # Upstream answers a non-streamed tool call with end_turn, a streamed one with tool_use.
        stop = "tool_use" if self.tool and stream else "end_turn"
        return {
            "id": f"msg_standin_{self.number}",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": self.usage(self.output_tokens),
        }


def stream_events(answer: Answer, json_piece: int = 7) -> list[bytes]:
    """The SSE events of a streamed answer, in the upstream's order."""
    message = answer.message(stream=True)
    start = {**message, "content": [], "stop_reason": None}
    start["usage"] = answer.usage(0, start=True)
    events = [sse("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        empty = {"text": {"text": ""}, "thinking": {"thinking": ""}}.get(
            kind, {"id": block.get("id"), "name": block.get("name"), "input": {}}
        )
        events.append(
            sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": kind, **empty},
                },
            )
        )
        events.extend(
            sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas(block, json_piece)
        )
        events.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": answer.final_usage(),
            },
        )
    )
    events.append(sse("message_stop", {"type": "message_stop"}))
    return events


def sse(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


def deltas(block: dict[str, Any], json_piece: int) -> list[dict[str, Any]]:
    """A block's content as the upstream streams it: text in words, JSON in small pieces."""
    kind = block["type"]
    if kind == "text":
        words = block["text"].split(" ")
        pieces = [w + " " for w in words[:-1]] + [words[-1]]
        return [{"type": "text_delta", "text": p} for p in pieces if p]
    if kind == "thinking":
        return [
            {"type": "thinking_delta", "thinking": block["thinking"]},
            {"type": "signature_delta", "signature": block["signature"]},
        ]
    text = json.dumps(block["input"])
    return [
        {"type": "input_json_delta", "partial_json": text[i : i + json_piece]}
        for i in range(0, len(text), json_piece)
    ]


def tool_result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def validate(body: Any) -> None:
    """The Messages API's own checks, as far as a translation can get them wrong."""
    if not isinstance(body, dict):
        raise Invalid("body: Input should be an object")
    for key in body:
        if key not in TOP_LEVEL:
            raise Invalid(f"{key}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Invalid("model: Field required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise Invalid("max_tokens: Field required")
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        raise Invalid("temperature: Input should be less than or equal to 1")
    thinking = body.get("thinking")
    # `adaptive` (Claude Code's, for Opus names) has no budget; the real package then
    # thinks without one (request-converter.js), and `disabled` is no thinking.
    if isinstance(thinking, dict) and thinking.get("type") in ("adaptive", "disabled"):
        thinking = None
    if thinking is not None:
        budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
        if thinking.get("type") != "enabled" or not isinstance(budget, int) or budget < 1024:
            raise Invalid("thinking.budget_tokens: Input should be greater than or equal to 1024")
        if budget >= max_tokens:
            raise Invalid("`max_tokens` must be greater than `thinking.budget_tokens`")
        if temperature is not None and temperature != 1:
            raise Invalid("`temperature` may only be set to 1 when thinking is enabled")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise Invalid("system: Input should be a valid string or list")
    for j, block in enumerate(system if isinstance(system, list) else []):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise Invalid(f"system.{j}.type: Input tag must be 'text'")
        if not isinstance(block.get("text"), str) or not block["text"]:
            raise Invalid(f"system.{j}: text content blocks must be non-empty")
    _check_cache_controls(body)
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool.get("name"), str) or not isinstance(tool.get("input_schema"), dict):
            raise Invalid(f"tools.{i}: name and input_schema are required")
        extra = set(tool) - {"name", "description", "input_schema", "cache_control", "type"}
        if extra:
            raise Invalid(f"tools.{i}.{sorted(extra)[0]}: Extra inputs are not permitted")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages: at least one message is required")
    pending: set[str] = set()  # tool_use ids the next user turn must answer
    previous: str | None = None  # the role of the last user or assistant message
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "system" and i > 0 and isinstance(message.get("content"), str | list):
            # Claude Code 2.1 (with its default Opus name) sends one after the first user
            # message; the real package takes it as a user turn (content-converter.js).
            # First in the list it is what a translation that leaked an OpenAI system
            # message would send, and is refused below.
            continue
        if role not in ("user", "assistant"):
            raise Invalid(
                f"messages.{i}.role: Input should be 'user' or 'assistant'"
                + (" (use the top-level system parameter)" if role == "system" else "")
            )
        if i == 0 and role != "user":
            raise Invalid("messages: first message must use the user role")
        if previous == role:
            raise Invalid("messages: roles must alternate between user and assistant")
        previous = role
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list) or not blocks:
            raise Invalid(f"messages.{i}.content: must be a string or a non-empty list")
        answered: set[str] = set()
        for j, block in enumerate(blocks):
            kind = block.get("type") if isinstance(block, dict) else None
            where = f"messages.{i}.content.{j}"
            if kind not in BLOCK_TYPES:
                raise Invalid(f"{where}.type: Input tag {kind!r} does not match")
            if kind == "text" and (not isinstance(block.get("text"), str) or not block["text"]):
                raise Invalid(f"{where}: text content blocks must be non-empty")
            if kind == "image":
                _check_image(block.get("source"), where)
            bad_use = role != "assistant" or not isinstance(block.get("input"), dict)
            if kind == "tool_use" and bad_use:
                raise Invalid(f"{where}: tool_use needs an assistant turn and an input object")
            if kind == "tool_result":
                if role != "user" or block.get("tool_use_id") not in pending:
                    raise Invalid(
                        f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{block.get('tool_use_id')}"
                    )
                answered.add(block["tool_use_id"])
        if role == "user" and pending - answered:
            raise Invalid(
                f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(sorted(pending - answered))}"
            )
        pending = (
            {b["id"] for b in blocks if b.get("type") == "tool_use"}
            if role == "assistant"
            else set()
        )


def _check_cache_controls(body: dict[str, Any]) -> None:
    """Every `cache_control` well formed, and no more than the API's breakpoints."""
    blocks: list[tuple[str, Any]] = []
    system = body.get("system")
    blocks += [(f"system.{j}", b) for j, b in enumerate(system if isinstance(system, list) else [])]
    blocks += [(f"tools.{j}", tool) for j, tool in enumerate(body.get("tools") or [])]
    for i, message in enumerate(body.get("messages") or []):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            blocks += [(f"messages.{i}.content.{j}", b) for j, b in enumerate(content)]
    marked = [
        (where, b["cache_control"])
        for where, b in blocks
        if isinstance(b, dict) and "cache_control" in b
    ]
    for where, control in marked:
        if (
            not isinstance(control, dict)
            or control.get("type") != "ephemeral"
            or set(control) - {"type", "ttl"}
            or control.get("ttl", "5m") not in ("5m", "1h")
        ):
            raise Invalid(f"{where}.cache_control: Input should be {{'type': 'ephemeral'}}")
    if len(marked) > MAX_CACHE_BREAKPOINTS:
        raise Invalid(
            f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(marked)}."
        )


def _check_image(source: Any, where: str) -> None:
    if not isinstance(source, dict):
        raise Invalid(f"{where}.source: Field required")
    if source.get("type") == "base64":
        if source.get("media_type") not in IMAGE_TYPES or not isinstance(source.get("data"), str):
            raise Invalid(f"{where}.source: base64 images need media_type and data")
    elif source.get("type") == "url":
        if not str(source.get("url", "")).startswith(("http://", "https://")):
            raise Invalid(f"{where}.source.url: must be an http(s) URL")
    else:
        raise Invalid(f"{where}.source.type: must be base64 or url")


def main() -> None:
    """Run it by hand: `python -m tests.support.anthropic_standin --port 8080 --key KEY`."""
    import argparse
    import threading

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--key", default=None)
    args = parser.parse_args()
    server = AnthropicStandIn(key=args.key, host=args.host, port=args.port).start()
    print(f"Anthropic-only stand-in on {server.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()

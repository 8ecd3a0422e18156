"""A stand-in Antigravity upstream that the tests own.

It speaks the OpenAI wire format (see shared notes on wire formats): chat
completions with and without SSE streaming, the `include_usage` chunk, `/v1/models`
and OpenAI-shaped errors. Every request it receives is recorded, so tests can
assert what reached the upstream, and what never did: in `received`, or in
`own_requests` for those the proxy makes itself (its endpoint probe and model list,
whose user-agent starts with `apipod-proxy`).

Behaviour is steered per request with `x-standin-*` headers, which the proxy passes
through like any other header:
    x-standin-chunks: N         stream N content chunks (default 3)
    x-standin-interval: S       seconds between chunks (default 0)
    x-standin-status: CODE      answer with this error status and an OpenAI error body
    x-standin-delay: S          wait before sending response headers
    x-standin-usage-on-finish: 1  a stream asked for usage gets it on the finish chunk,
                                with no separate `choices: []` chunk (as some
                                OpenAI-compatible servers send it)
    x-standin-finish-echo: 1    the finish chunk's delta carries the last message's text
                                (a chunk the proxy writes again when it takes usage out)
    x-standin-prompt-tokens: N  report N prompt tokens (default 11)
    x-standin-cached-tokens: N  report N of them as cached (prompt_tokens_details)
    x-standin-completion-tokens: N  report N completion tokens (default: the chunks sent)
    x-standin-error-usage: 1    with x-standin-status, put a usage object in the error body
    x-standin-usage-pause: S    wait S seconds after the finish chunk, before the usage
                                chunk (a client can hang up in between)

`open_streams` counts streaming responses still being written, so tests can see that
the proxy closes the upstream side when a client goes away.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

from aiohttp import web

from tests.support.standin_base import ThreadedServer

#: As antigravity-claude-proxy lists them (the built-in patterns' targets among them).
MODELS = ["claude-sonnet-4-5", "claude-opus-4-5-thinking", "gemini-3-flash", "gemini-3-pro-high"]


def completion(model: str, created: int) -> dict[str, Any]:
    """A non-streaming chat completion from `model`, with its usage (11 in, 5 out).

    The benchmark's upstream (bench/upstream.py) answers with the same body.
    """
    return {
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"hello from {model}"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
    }


class SilentUpstream:
    """An upstream that accepts every connection and never sends a byte.

    `accepted` holds the connections it took, so a test can count upstream attempts.
    Use it as a context manager; `url` is its base URL.
    """

    def __init__(self) -> None:
        self._listening = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._listening.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listening.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                self.accepted.append(self._listening.accept()[0])
            except TimeoutError:
                continue

    def __enter__(self) -> SilentUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.accepted:
            conn.close()
        self._listening.close()


class StandIn(ThreadedServer):
    """Runs the upstream on a private event loop in a thread; `url` is its base URL."""

    #: aiohttp's default: this stand-in has always read bodies of up to 1 MiB.
    client_max_size = 1 << 20

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.open_streams = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_route("*", "/{tail:.*}", self.echo)

    async def models(self, request: web.Request) -> web.Response:
        await self.record(request)
        data = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "antigravity"}
            for m in MODELS
        ]
        return web.json_response({"object": "list", "data": data})

    async def echo(self, request: web.Request) -> web.Response:
        entry = await self.record(request)
        return web.json_response({"echo": entry.path, "method": entry.method})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        entry = await self.record(request)
        delay = float(request.headers.get("x-standin-delay", "0"))
        if delay:
            await asyncio.sleep(delay)
        if status := request.headers.get("x-standin-status"):
            error: dict[str, Any] = {
                "error": {
                    "message": f"stand-in error {status}",
                    "type": "upstream_test",
                    "param": None,
                    "code": f"standin_{status}",
                }
            }
            if request.headers.get("x-standin-error-usage"):
                error["usage"] = usage_of(request, 5)
            return web.json_response(error, status=int(status), headers={"retry-after": "7"})
        body = entry.json()
        model = body.get("model", "unknown")
        if body.get("stream"):
            return await self._stream(request, body, model)
        answer = completion(model, int(time.time()))
        answer["usage"] = usage_of(request, 5)
        return web.json_response(answer)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """Anthropic Messages: usage in the body, or in message_start/message_delta."""
        entry = await self.record(request)
        if status := request.headers.get("x-standin-status"):
            return web.json_response(
                {"type": "error", "error": {"type": "rate_limit_error", "message": status}},
                status=int(status),
            )
        body = entry.json()
        model = body.get("model", "unknown")
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "msg_standin",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": f"hello from {model}"}],
                    "stop_reason": "end_turn",
                    "usage": {"input_tokens": 21, "output_tokens": 4},
                }
            )
        chunks = int(request.headers.get("x-standin-chunks", "3"))
        interval = float(request.headers.get("x-standin-interval", "0"))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)

        async def send(name: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        message = {
            "id": "msg_standin",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "usage": {"input_tokens": 21, "output_tokens": 1},
        }
        await send("message_start", {"type": "message_start", "message": message})
        await send(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        await send("ping", {"type": "ping"})
        for i in range(chunks):
            if i and interval:
                await asyncio.sleep(interval)
            delta = {"type": "text_delta", "text": f"{i}@{time.time():.6f} "}
            await send(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        await send("content_block_stop", {"type": "content_block_stop", "index": 0})
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": chunks},
            },
        )
        await send("message_stop", {"type": "message_stop"})
        await response.write_eof()
        return response

    async def _stream(
        self, request: web.Request, body: dict[str, Any], model: str
    ) -> web.StreamResponse:
        chunks = int(request.headers.get("x-standin-chunks", "3"))
        interval = float(request.headers.get("x-standin-interval", "0"))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        usage_on_finish = request.headers.get("x-standin-usage-on-finish") == "1"
        finish: dict[str, Any] = {}
        if request.headers.get("x-standin-finish-echo") == "1":
            finish = {"content": body["messages"][-1]["content"]}
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        self.open_streams += 1
        try:
            # The request id names every chunk, so a client can tell streams apart.
            stream_id = request.headers.get("x-request-id", "chatcmpl-standin")
            return await self._write_chunks(
                response,
                stream_id,
                model,
                chunks,
                interval,
                include_usage,
                usage_on_finish,
                usage_of(request, chunks),
                float(request.headers.get("x-standin-usage-pause", "0")),
                finish,
            )
        finally:
            self.open_streams -= 1

    async def _write_chunks(
        self,
        response: web.StreamResponse,
        stream_id: str,
        model: str,
        chunks: int,
        interval: float,
        include_usage: bool,
        usage_on_finish: bool = False,
        usage: dict[str, Any] | None = None,
        usage_pause: float = 0.0,
        finish_delta: dict[str, Any] | None = None,
    ) -> web.StreamResponse:
        if usage is None:
            usage = {"prompt_tokens": 11, "completion_tokens": chunks, "total_tokens": 11 + chunks}

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            chunk: dict[str, Any] = {
                "id": stream_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if include_usage:
                chunk["usage"] = usage if finish and usage_on_finish else None
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        for i in range(chunks):
            if i and interval:
                await asyncio.sleep(interval)
            # The content carries the send time, so tests can measure each chunk's lag.
            await response.write(event({"content": f"{i}@{time.time():.6f} "}))
        await response.write(event(finish_delta or {}, "stop"))
        if usage_pause:
            await asyncio.sleep(usage_pause)
        if include_usage and not usage_on_finish:
            final = {
                "id": stream_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": usage,
            }
            await response.write(b"data: " + json.dumps(final).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def usage_of(request: web.Request, completion: int) -> dict[str, Any]:
    """OpenAI usage: 11 prompt tokens unless the request's headers say otherwise."""
    prompt = int(request.headers.get("x-standin-prompt-tokens", "11"))
    completion = int(request.headers.get("x-standin-completion-tokens", completion))
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached := request.headers.get("x-standin-cached-tokens"):
        usage["prompt_tokens_details"] = {"cached_tokens": int(cached)}
    return usage

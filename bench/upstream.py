"""A fast stand-in upstream for the benchmark, run in its own process.

    python -m bench.upstream [--host 127.0.0.1] [--port 0]

It prints one line, `listening http://HOST:PORT`, once it accepts connections, and
exits cleanly on SIGTERM or SIGINT.

Why not `tests/support/standin.py`? That one runs in a thread of the test process and records
every request it receives, so it grows without bound and its CPU time would mix with
the load generator's. A benchmark upstream must cost as little as possible, so that
the proxy, not the upstream, is what a run measures: this one records nothing, caches
its JSON answers and logs nothing.

It speaks just enough of the OpenAI wire format, with the same steering headers as the
test stand-in:

    POST /v1/chat/completions   a chat completion, or SSE chunks when `"stream": true`
    POST /v1/messages           the same in Anthropic's Messages API (text deltas), for
                                the translated-stream row (apipod with UPSTREAM_API=anthropic)
                                and the /v1/responses row (the same apipod, which turns a
                                Responses request into Messages and the events back)
    x-standin-chunks: N         stream N content chunks (default 3)
    x-standin-interval: S       seconds between chunks (default 0)

A stream that asks for `stream_options.include_usage` (apipod asks for it, to count
tokens) gets `"usage": null` on each chunk and a final usage chunk, as OpenAI sends.

Each streamed chunk's content (or text delta) is `"<index>@<send time> "`, the sender's
`time.time()` taken just before the write, so a client can measure each chunk's lag
(arrival time minus send time); a text delta stays one delta through apipod's
translations, so the stamp reaches a Responses client as one `response.output_text.delta`.
Any other path answers 200 with a small JSON body.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from typing import Any

from aiohttp import web

from tests.support.standin import completion

JSON_TYPE = "application/json"


def completion_body(model: str) -> bytes:
    """The non-streaming answer for `model` (cached by the caller: it never changes)."""
    return json.dumps(completion(model, 1700000000)).encode()


def chunk_event(
    model: str, delta: dict[str, Any], finish: str | None = None, usage: bool = False
) -> bytes:
    """One `data:` event of a chat completion stream."""
    chunk: dict[str, Any] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        chunk["usage"] = None
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def usage_event(model: str, chunks: int) -> bytes:
    """The last event of a stream that asked for `stream_options.include_usage`."""
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [],
        "usage": {"prompt_tokens": 11, "completion_tokens": chunks, "total_tokens": 11 + chunks},
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def anthropic_message(model: str, content: list[Any], output_tokens: int) -> dict[str, Any]:
    return {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "end_turn" if content else None,
        "stop_sequence": None,
        "usage": {"input_tokens": 11, "output_tokens": output_tokens},
    }


def anthropic_event(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


class Upstream:
    """The request handlers; the only state is a cache of encoded answers."""

    def __init__(self) -> None:
        self._answers: dict[str, bytes] = {}

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.Response(status=400, body=b'{"error": "bad json"}', content_type=JSON_TYPE)
        model = str(body.get("model", "unknown")) if isinstance(body, dict) else "unknown"
        if isinstance(body, dict) and body.get("stream"):
            options = body.get("stream_options")
            usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return await self._stream(request, model, usage)
        answer = self._answers.get(model)
        if answer is None:
            answer = self._answers[model] = completion_body(model)
        return web.Response(body=answer, content_type=JSON_TYPE)

    async def _stream(
        self, request: web.Request, model: str, include_usage: bool
    ) -> web.StreamResponse:
        chunks = int(request.headers.get("x-standin-chunks", "3"))
        interval = float(request.headers.get("x-standin-interval", "0"))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i in range(chunks):
            if i and interval:
                await asyncio.sleep(interval)
            delta = {"content": f"{i}@{time.time():.6f} "}
            await response.write(chunk_event(model, delta, usage=include_usage))
        await response.write(chunk_event(model, {}, "stop", usage=include_usage))
        if include_usage:
            # Like OpenAI: `usage: null` on every chunk, then one chunk with the totals.
            await response.write(usage_event(model, chunks))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """Anthropic Messages: a whole message, or its events when `"stream": true`."""
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.Response(status=400, body=b'{"type": "error"}', content_type=JSON_TYPE)
        model = str(body.get("model", "unknown")) if isinstance(body, dict) else "unknown"
        if not (isinstance(body, dict) and body.get("stream")):
            message = anthropic_message(model, [{"type": "text", "text": "hello"}], 1)
            return web.Response(body=json.dumps(message).encode(), content_type=JSON_TYPE)
        chunks = int(request.headers.get("x-standin-chunks", "3"))
        interval = float(request.headers.get("x-standin-interval", "0"))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        start = {"type": "message_start", "message": anthropic_message(model, [], 0)}
        await response.write(anthropic_event("message_start", start))
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
        await response.write(anthropic_event("content_block_start", block))
        for i in range(chunks):
            if i and interval:
                await asyncio.sleep(interval)
            delta = {"type": "text_delta", "text": f"{i}@{time.time():.6f} "}
            payload = {"type": "content_block_delta", "index": 0, "delta": delta}
            await response.write(anthropic_event("content_block_delta", payload))
        stop = {"type": "content_block_stop", "index": 0}
        await response.write(anthropic_event("content_block_stop", stop))
        end = {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": chunks},
        }
        await response.write(anthropic_event("message_delta", end))
        await response.write(anthropic_event("message_stop", {"type": "message_stop"}))
        await response.write_eof()
        return response

    async def other(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b'{"ok": true}', content_type=JSON_TYPE)


async def serve(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    upstream = Upstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream.chat)
    app.router.add_post("/v1/messages", upstream.messages)
    app.router.add_route("*", "/{tail:.*}", upstream.other)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    print(f"listening http://{bound_host}:{bound_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="Fast stand-in upstream for bench/run.py.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()

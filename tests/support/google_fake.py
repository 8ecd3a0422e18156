"""A fake Google backend for the real antigravity-claude-proxy package (the real tier).

The package (npm `antigravity-claude-proxy` 2.0.4) talks to Google's Cloud Code API;
`tests/support/node/offline.mjs` sends all of that here. This server speaks the wire format
the package's source (src/cloudcode/*.js, src/auth/oauth.js) calls:

- `POST /token` (oauth2.googleapis.com): a refresh-token grant gets an access token.
- `POST /v1internal:loadCodeAssist`: the project and the subscription tier.
- `POST /v1internal:fetchAvailableModels`: the models with their quota fractions.
  (2.0.4 never calls `onboardUser`; any route the fake does not know is recorded in
  `unknown`, and the `antigravity` fixture fails a test that caused one.)
- `POST /v1internal:generateContent`: one `{"response": {candidates, usageMetadata}}`.
- `POST /v1internal:streamGenerateContent?alt=sse`: the same, as `data:` events;
  thinking models (`*-thinking`, `gemini-3*`) are asked this way even when the client
  did not stream.
- `usageMetadata`: `promptTokenCount` (the whole prompt, cached part included),
  `cachedContentTokenCount`, `candidatesTokenCount`, `thoughtsTokenCount`.
- Parts: text, thought parts (`"thought": true`) with a `thoughtSignature`, and
  `functionCall` parts.
- A quota error: 429 `RESOURCE_EXHAUSTED` with `quotaResetDelay` in its details (the
  package turns it into 400 `invalid_request_error`, or an `event: error` in a stream).
- A stream that breaks off after some events (`cut_after`).

Each answer follows a `Script`: the default one, or the one registered with `on(match,
script)` whose `match` is the request's model or appears in its last user text (so
concurrent tests steer their own requests). Every answered request is appended to
`answered`, the tokens "Google" reported, for reconciliation checks.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from tests.support.anthropic_standin import MODELS  # the ids the package lists, as the stand-in's
from tests.support.standin_base import ThreadedServer

ACCESS_TOKEN = "ya29.fake-access-token"
PROJECT = "fake-project-0001"
#: The package keeps a thought signature only from 50 characters on (MIN_SIGNATURE_LENGTH).
SIGNATURE = "fake_thought_signature_" + "0123456789" * 5


@dataclass
class Script:
    """What the fake answers to one request."""

    text: str = "Hello from the fake Google backend."
    #: The thinking text; None: a thinking model thinks, another does not.
    thinking: str | None = None
    #: A function call to make: {"name": ..., "args": {...}} (after `text`, if any).
    tool: dict[str, Any] | None = None
    prompt_tokens: int = 25
    cached_tokens: int = 0
    completion_tokens: int = 3
    thoughts_tokens: int = 0
    #: A quota error instead of an answer: the reset delay, e.g. "60s".
    quota_reset: str | None = None
    #: Text pieces per stream event (words of `text` per `data:` event).
    words_per_event: int = 2
    #: Streamed: drop the connection after this many events, before the usage is final.
    cut_after: int | None = None
    #: An answer without any part (the package retries, then makes up its own answer).
    empty: bool = False


@dataclass
class Answered:
    """What one answer reported (Google's own figures)."""

    model: str
    stream: bool
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    thoughts_tokens: int
    host: str


def thinks(model: str) -> bool:
    """The package's isThinkingModel (src/constants.js)."""
    lower = model.lower()
    if "claude" in lower and "thinking" in lower:
        return True
    if "gemini" in lower:
        if "thinking" in lower:
            return True
        version = lower.removeprefix("gemini-").split(".")[0].split("-")[0]
        return version.isdigit() and int(version) >= 3
    return False


class GoogleFake(ThreadedServer):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.default = Script()
        self.scripts: dict[str, Script] = {}
        self.answered: list[Answered] = []
        self.refreshed = 0
        #: Requests for routes the fake does not know: the package changed, or a test did.
        self.unknown: list[str] = []

    # --- steering ----------------------------------------------------------------

    def on(self, match: str, script: Script) -> None:
        """Answer `script` to requests for model `match` or whose last user text has it."""
        self.scripts[match] = script

    def reset(self) -> None:
        super().reset()
        self.scripts.clear()
        self.answered.clear()
        self.unknown.clear()
        self.default = Script()

    def script_for(self, payload: dict[str, Any]) -> Script:
        model = payload.get("model", "")
        if model in self.scripts:
            return self.scripts[model]
        text = last_user_text(payload.get("request", {}))
        for match, script in self.scripts.items():
            if match in text:
                return script
        return self.default

    # --- routes ------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.dispatch)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        entry = await self.record(request)
        path = request.path
        if path == "/token":
            return self.token(entry.body)
        if request.headers.get("authorization") != f"Bearer {ACCESS_TOKEN}":
            return google_error(401, "UNAUTHENTICATED", "Request had invalid credentials.")
        if path == "/v1internal:loadCodeAssist":
            return web.json_response(
                {
                    "cloudaicompanionProject": PROJECT,
                    "currentTier": {"id": "free-tier"},
                    "paidTier": {"id": "g1-pro-tier"},
                }
            )
        if path == "/v1internal:fetchAvailableModels":
            return web.json_response(
                {
                    "models": {
                        model: {
                            "displayName": model,
                            "quotaInfo": {"remainingFraction": 1, "resetTime": None},
                        }
                        for model in MODELS
                    }
                }
            )
        if path in ("/v1internal:generateContent", "/v1internal:streamGenerateContent"):
            return await self.generate(
                request, entry.json(), path.endswith(":streamGenerateContent")
            )
        self.unknown.append(f"{request.method} {request.path_qs}")
        return google_error(404, "NOT_FOUND", f"fake Google backend: no route {path}")

    def token(self, body: bytes) -> web.Response:
        form = dict(pair.split("=", 1) for pair in body.decode().split("&") if "=" in pair)
        if form.get("grant_type") != "refresh_token" or not form.get("refresh_token"):
            return web.json_response({"error": "invalid_grant"}, status=400)
        self.refreshed += 1
        return web.json_response(
            {"access_token": ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer"}
        )

    async def generate(
        self, request: web.Request, payload: dict[str, Any], stream: bool
    ) -> web.StreamResponse:
        model = payload.get("model", "")
        script = self.script_for(payload)
        if script.quota_reset is not None:
            return quota_error(model, script.quota_reset)
        thinking = script.thinking
        if thinking is None:
            thinking = f"The user wants an answer from {model}." if thinks(model) else ""
        self.answered.append(
            Answered(
                model,
                stream,
                script.prompt_tokens,
                script.cached_tokens,
                script.completion_tokens,
                script.thoughts_tokens,
                request.headers.get("x-fake-google-host", ""),
            )
        )
        chunks = answer_chunks(model, replace(script, thinking=thinking))
        if not stream:
            return web.json_response({"response": merged(chunks), "traceId": secrets.token_hex(8)})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for number, chunk in enumerate(chunks):
            if script.cut_after is not None and number >= script.cut_after:
                if request.transport is not None:
                    request.transport.abort()  # Google's stream breaks off mid-answer
                return response
            await response.write(f"data: {json.dumps({'response': chunk})}\r\n\r\n".encode())
        await response.write_eof()
        return response


def last_user_text(request: dict[str, Any]) -> str:
    for content in reversed(request.get("contents") or []):
        if content.get("role") == "user":
            return " ".join(p.get("text", "") for p in content.get("parts", []) if "text" in p)
    return ""


def usage(script: Script, final: bool) -> dict[str, int]:
    found = {"promptTokenCount": script.prompt_tokens}
    if script.cached_tokens:
        found["cachedContentTokenCount"] = script.cached_tokens
    if final:
        found["candidatesTokenCount"] = script.completion_tokens
        if script.thoughts_tokens:
            found["thoughtsTokenCount"] = script.thoughts_tokens
        found["totalTokenCount"] = (
            script.prompt_tokens + script.completion_tokens + script.thoughts_tokens
        )
    return found


def answer_chunks(model: str, script: Script) -> list[dict[str, Any]]:
    """The streamed `response` objects of one answer, as Cloud Code sends them."""
    parts: list[list[dict[str, Any]]] = []
    if script.thinking:
        parts.append([{"text": script.thinking, "thought": True, "thoughtSignature": SIGNATURE}])
    words = script.text.split(" ") if script.text else []
    step = max(1, script.words_per_event)
    for i in range(0, len(words), step):
        piece = " ".join(words[i : i + step]) + (" " if i + step < len(words) else "")
        parts.append([{"text": piece}])
    if script.tool:
        call: dict[str, Any] = {
            "functionCall": {"name": script.tool["name"], "args": script.tool.get("args", {})}
        }
        if model.startswith("gemini"):
            call["thoughtSignature"] = SIGNATURE
        parts.append([call])
    if script.empty or not parts:
        parts = [[]]
    chunks = []
    for number, chunk_parts in enumerate(parts):
        final = number == len(parts) - 1
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": chunk_parts}}
        if final:
            candidate["finishReason"] = "STOP"
        chunks.append(
            {
                "candidates": [candidate],
                "usageMetadata": usage(script, final),
                "modelVersion": model,
                "responseId": "fake-response",
            }
        )
    return chunks


def merged(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-streamed answer: every chunk's parts in one candidate, the last usage."""
    parts = [part for chunk in chunks for part in chunk["candidates"][0]["content"]["parts"]]
    text_parts: list[dict[str, Any]] = []
    for part in parts:  # Google joins adjacent text pieces of one kind
        if (
            text_parts
            and "text" in part
            and "text" in text_parts[-1]
            and part.get("thought") == text_parts[-1].get("thought")
        ):
            text_parts[-1] = {
                **text_parts[-1],
                **part,
                "text": text_parts[-1]["text"] + part["text"],
            }
        else:
            text_parts.append(part)
    last = chunks[-1]
    return {
        **last,
        "candidates": [{"content": {"role": "model", "parts": text_parts}, "finishReason": "STOP"}],
    }


def google_error(status: int, reason: str, message: str, **extra: Any) -> web.Response:
    body = {"error": {"code": status, "message": message, "status": reason, **extra}}
    return web.json_response(body, status=status)


def quota_error(model: str, reset: str) -> web.Response:
    """Cloud Code's 429 for a used-up quota, with the reset delay in its details."""
    return google_error(
        429,
        "RESOURCE_EXHAUSTED",
        f"You have exhausted your capacity on this model. Your quota will reset after {reset}.",
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "QUOTA_EXHAUSTED",
                "domain": "cloudcode-pa.googleapis.com",
                "metadata": {"model": model, "quotaResetDelay": reset},
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": reset},
        ],
    )

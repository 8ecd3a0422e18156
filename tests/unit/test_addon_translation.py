"""Unit tests for issue 10's wiring in the addon: a translated answer counted in the
client's API, a quota answer cooling the model the next request is routed around (the
answers and rewrite stages share one Cooldowns), and /health showing both.

Each stage's part is tested on the stage alone: the translation choice and the routing
around cooldowns in test_rewrite.py, streams, whole answers and quota answers in
test_answers.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from mitmproxy import http

from tests.support.gateway import Gateway, make_flow

CLAUDE, GEMINI = "claude-sonnet-4-5", "gemini-3-flash"
QUOTA = f"You have exhausted your capacity on {CLAUDE}. Quota will reset after 1m30s."


def body(model: str = GEMINI, **extra: Any) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    ).encode()


def send(gateway: Gateway, path: str = "/v1/chat/completions", **extra: Any) -> http.HTTPFlow:
    key, _ = gateway.new_key()
    return gateway.authed(key, path=path, body=body(**extra))


def answer(
    gateway: Gateway, flow: http.HTTPFlow, status: int, payload: Any, sse: bool = False
) -> http.Response:
    """The upstream answers: responseheaders, then (for a whole answer) response."""
    content_type = "text/event-stream" if sse else "application/json"
    flow.response = http.Response.make(
        status, b"" if sse else json.dumps(payload).encode(), {"content-type": content_type}
    )
    gateway.addon.responseheaders(flow)
    if not sse:
        gateway.addon.response(flow)
    return flow.response


def anthropic_error(message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}


#: An Anthropic answer "Hello" (give it a `usage`).
HELLO = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": GEMINI,
    "content": [{"type": "text", "text": "Hello"}],
    "stop_reason": "end_turn",
}


@pytest.fixture
def over_claude(make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway(upstream_api="anthropic")


def test_the_answer_is_translated_back(over_claude: Gateway) -> None:
    flow = send(over_claude)
    usage = {"input_tokens": 5, "cache_read_input_tokens": 3, "output_tokens": 2}
    response = answer(over_claude, flow, 200, {**HELLO, "usage": usage})
    payload = json.loads(response.content or b"")
    assert payload["choices"][0]["message"]["content"] == "Hello"
    assert payload["usage"]["prompt_tokens"] == 8
    over_claude.flush()
    [(prompt, completion)] = over_claude.sql("SELECT prompt_tokens, completion_tokens FROM usage")
    assert (prompt, completion) == (8, 2)


# --- quota ---------------------------------------------------------------------------------


@pytest.mark.parametrize("upstream_api", ["anthropic", "both"])
def test_a_quota_answer_is_429_and_cools_the_model_sent(
    make_gateway: Callable[..., Gateway], upstream_api: str
) -> None:
    gateway = make_gateway(upstream_api=upstream_api)
    flow = send(gateway, model="cursor-pro-sonnet")  # the draw (0.9) routes to gemini
    response = answer(gateway, flow, 400, anthropic_error(QUOTA.replace(CLAUDE, "gemini-3")))
    assert response.status_code == 429 and response.headers["retry-after"] == "90"
    error = json.loads(response.content or b"")["error"]
    assert (error["code"], error["type"]) == ("upstream_quota_exhausted", "rate_limit_error")
    assert set(gateway.addon.gateway.cooldowns.active()) == {GEMINI}
    assert "upstream quota for gemini-3-flash is used up" in " ".join(gateway.lines())
    # The alias now routes to its other target, whatever the draw.
    again = send(gateway, model="cursor-pro-sonnet")
    assert json.loads(again.request.content or b"")["model"] == CLAUDE
    # Naming the cooled model directly is still forwarded.
    direct = send(gateway, model=GEMINI)
    assert direct.response is None


def test_health_shows_the_upstream_and_the_cooldowns(over_claude: Gateway) -> None:
    over_claude.addon.gateway.cooldowns.mark_for(CLAUDE, 42, 60)
    flow = over_claude.send(make_flow("GET", "/health"))
    health = json.loads(flow.response.content or b"")  # type: ignore[union-attr]
    assert health["upstream_api"] == "anthropic"
    assert [c["model"] for c in health["cooldowns"]] == [CLAUDE]
    assert 40 <= health["cooldowns"][0]["seconds_left"] <= 42
    metrics = over_claude.addon.gateway.metrics.render().decode()
    assert f'apipod_model_cooldown{{model="{CLAUDE}"}}' in metrics


def test_the_access_line_shows_the_clients_path_then_the_upstreams(over_claude: Gateway) -> None:
    """(Forwarded in the API it came in, the line has one path: test_accounting.py.)"""
    message = {**HELLO, "usage": {"input_tokens": 5, "output_tokens": 2}}
    answer(over_claude, send(over_claude), 200, message)
    [line] = [line for line in over_claude.lines() if " key=" in line]
    assert line.startswith("POST /v1/chat/completions → /v1/messages 200 "), line
    [record] = [r for r in over_claude.log.records if hasattr(r, "access")]
    assert record.access["path"] == "/v1/chat/completions"
    assert record.access["upstream_path"] == "/v1/messages"

"""Unit tests for issue 10's wiring in the addon: translated requests and answers, quota
answers and cooldowns, and the alias routing around models out of quota."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from mitmproxy import http

from apipod_proxy import errors
from apipod_proxy.flowstate import state_of
from apipod_proxy.pipeline.usage import SseWatcher
from apipod_proxy.translate.streams import AnthropicPassthroughStream, AnthropicToOpenAIStream
from tests.support.gateway import Gateway, make_flow, run

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


@pytest.fixture
def over_claude(make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway(upstream_api="anthropic")


def test_the_answer_is_translated_back(over_claude: Gateway) -> None:
    flow = send(over_claude)
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": GEMINI,
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 5, "cache_read_input_tokens": 3, "output_tokens": 2},
    }
    response = answer(over_claude, flow, 200, message)
    payload = json.loads(response.content or b"")
    assert payload["choices"][0]["message"]["content"] == "Hello"
    assert payload["usage"]["prompt_tokens"] == 8
    over_claude.flush()
    [(prompt, completion)] = over_claude.sql("SELECT prompt_tokens, completion_tokens FROM usage")
    assert (prompt, completion) == (8, 2)


def test_our_own_errors_keep_the_openai_shape_after_translating(over_claude: Gateway) -> None:
    flow = send(over_claude)
    assert flow.request.path == "/v1/messages"  # translated for the upstream
    state = state_of(flow)
    assert state is not None
    state.timed_out = True  # the proxy answers 504 itself
    flow.response = errors.error_response(504, "late", "upstream_timeout")
    over_claude.addon.responseheaders(flow)
    assert "type" not in json.loads(flow.response.content or b"")  # not Anthropic's shape


def test_an_sse_answer_gets_the_translating_stream(over_claude: Gateway) -> None:
    flow = send(over_claude, stream=True)
    answer(over_claude, flow, 200, None, sse=True)
    assert isinstance(flow.response.stream, AnthropicToOpenAIStream)  # type: ignore[union-attr]


def test_anthropic_passthrough_streams_watch_for_quota(over_claude: Gateway) -> None:
    flow = send(over_claude, path="/v1/messages", max_tokens=10, stream=True)
    answer(over_claude, flow, 200, None, sse=True)
    stream = flow.response.stream  # type: ignore[union-attr]
    assert isinstance(stream, AnthropicPassthroughStream)
    event = json.dumps(
        {"type": "error", "error": {"type": "invalid_request_error", "message": QUOTA}}
    )
    out = b"".join(stream(f"event: error\ndata: {event}\n\n".encode()))
    assert b"upstream_quota_exhausted" in out
    assert (
        GEMINI in over_claude.addon.gateway.cooldowns.active()
    )  # the model sent, not the message's


def test_openai_passthrough_streams_keep_the_plain_watcher(gateway: Gateway) -> None:
    flow = send(gateway, stream=True)
    answer(gateway, flow, 200, None, sse=True)
    assert isinstance(flow.response.stream, SseWatcher)  # type: ignore[union-attr]


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


def test_anthropic_clients_get_rate_limit_error(gateway: Gateway) -> None:
    flow = send(gateway, path="/v1/messages", model=CLAUDE, max_tokens=5)
    response = answer(gateway, flow, 400, anthropic_error(QUOTA))
    payload = json.loads(response.content or b"")
    assert response.status_code == 429 and payload["type"] == "error"
    assert payload["error"]["type"] == "rate_limit_error"


def test_other_client_errors_pass_through_untouched(gateway: Gateway) -> None:
    flow = send(gateway)
    original = {"error": {"message": "bad", "type": "invalid_request_error", "code": "x"}}
    response = answer(gateway, flow, 400, original)
    assert response.status_code == 400 and json.loads(response.content or b"") == original


def test_endpoint_not_found_asks_the_upstream_again(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway(upstream_api="auto")
    asked: list[bool] = []
    gateway.addon.gateway.upstream.api = "both"
    gateway.addon.gateway.upstream.recheck = lambda: asked.append(True)  # type: ignore[method-assign]
    flow = send(gateway)

    async def go() -> None:
        flow.response = http.Response.make(
            404, json.dumps(anthropic_error("Endpoint POST /v1/chat/completions not found"))
        )
        gateway.addon.response(flow)

    run(go())
    assert asked == [True]
    assert flow.response is not None and flow.response.status_code == 404


def test_health_shows_the_upstream_and_the_cooldowns(over_claude: Gateway) -> None:
    over_claude.addon.gateway.cooldowns.mark_for(CLAUDE, 42, 60)
    flow = over_claude.send(make_flow("GET", "/health"))
    health = json.loads(flow.response.content or b"")  # type: ignore[union-attr]
    assert health["upstream_api"] == "anthropic"
    assert [c["model"] for c in health["cooldowns"]] == [CLAUDE]
    assert 40 <= health["cooldowns"][0]["seconds_left"] <= 42
    metrics = over_claude.addon.gateway.metrics.render().decode()
    assert f'apipod_model_cooldown{{model="{CLAUDE}"}}' in metrics

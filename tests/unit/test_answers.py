"""Unit tests for pipeline/answers.py: the Answers stage built alone from its parts.

A request as the earlier stages leave it once forwarded (`stages.admitted`: the model
asked for and the one sent, the translation it needed), Metrics, Cooldowns, a Traffic
and an upstream stand-in. What is checked is what the client gets back: the upstream
timeout, the response headers, a stream's watcher, whole answers in the client's API,
and the models cooled down by a quota answer.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http

from apipod_proxy import errors
from apipod_proxy.config import Settings
from apipod_proxy.flowstate import FlowState
from apipod_proxy.pipeline.answers import Answers
from apipod_proxy.pipeline.usage import SseWatcher
from apipod_proxy.translate import Direction
from apipod_proxy.translate.streams import AnthropicPassthroughStream, AnthropicToOpenAIStream
from tests.support import stages
from tests.support.gateway import (
    UPSTREAM_KEY,
    LogRecords,
    chat_body,
    make_flow,
    make_settings,
    mitm_context,
    run,
)

CLAUDE, GEMINI = "claude-sonnet-4-5", "gemini-3-flash"
QUOTA = f"You have exhausted your capacity on {CLAUDE}. Quota will reset after 1m30s."
TRANSLATED = Direction.OPENAI_TO_ANTHROPIC


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def stage(settings: Settings) -> Answers:
    return stages.answers(settings)


def forwarded(
    path: str = "/v1/chat/completions",
    model: str = GEMINI,
    routed: str | None = None,
    direction: Direction | None = None,
    **body: Any,
) -> tuple[http.HTTPFlow, FlowState]:
    """A request sent upstream: `model` asked for, `routed` sent, `direction` its
    translation (the rewrite stage's choice)."""
    flow = make_flow("POST", path, chat_body(model, **body))
    state = stages.admitted(
        flow,
        requested_model=model,
        routed_model=routed or model,
        direction=direction,
        forwarded_at=time.perf_counter(),
    )
    return flow, state


def answer(
    stage: Answers, flow: http.HTTPFlow, status: int, payload: Any, sse: bool = False
) -> http.Response:
    """The upstream answers: the response headers, then (for a whole answer) its body."""
    content_type = "text/event-stream" if sse else "application/json"
    flow.response = http.Response.make(
        status, b"" if sse else json.dumps(payload).encode(), {"content-type": content_type}
    )
    stage.headers(flow)
    if not sse:
        stage.whole(flow)
    return flow.response


def respond(
    stage: Answers, content_type: str | None, extra: list[tuple[str, str]] | None = None
) -> http.HTTPFlow:
    flow, _ = forwarded()
    headers = [] if content_type is None else [("content-type", content_type)]
    flow.response = http.Response.make(
        200, b"", [(k.encode(), v.encode()) for k, v in headers + (extra or [])]
    )
    stage.headers(flow)
    return flow


def anthropic_error(message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}


def is_streamed(response: http.Response | None) -> bool:
    """mitmproxy streams when `stream` is True or a chunk callable."""
    assert response is not None
    return response.stream is True or callable(response.stream)


# --- the upstream timeout ----------------------------------------------------------------


def test_request_starts_the_upstream_timer(tmp_path: Path, master: None) -> None:
    stage = stages.answers(make_settings(tmp_path, upstream_timeout=0.05))
    flow, state = forwarded()
    state.forwarded_at = None

    async def go() -> None:
        stage.forwarded(flow, state)
        assert state.timer is not None and state.forwarded_at is not None
        await asyncio.sleep(0.2)

    run(go())
    # No proxy connection exists for this flow, so only the flag records the timeout.
    assert state.timed_out is True
    assert flow.request.headers["x-request-id"] == state.request_id


def test_responseheaders_cancels_the_upstream_timer(tmp_path: Path) -> None:
    stage = stages.answers(make_settings(tmp_path, upstream_timeout=0.05))
    flow, state = forwarded()

    async def go() -> None:
        stage.forwarded(flow, state)
        flow.response = http.Response.make(200, b"{}", {"content-type": "application/json"})
        stage.headers(flow)
        await asyncio.sleep(0.2)

    run(go())
    assert state.timer is not None
    assert state.timer.cancelled()
    assert state.timed_out is False


def test_timeout_after_a_response_does_nothing(stage: Answers) -> None:
    flow, state = forwarded()
    flow.response = http.Response.make(200)
    stage.upstream_timed_out(flow)
    assert state.timed_out is False


def test_timeout_of_a_dead_flow_does_nothing(stage: Answers) -> None:
    flow, state = forwarded()
    flow.live = False
    stage.upstream_timed_out(flow)
    assert state.timed_out is False


@pytest.fixture
def master() -> Iterator[None]:
    """mitmproxy's test master (no addon of ours): the 504 is answered through its
    proxyserver, which holds no connection for a test flow."""
    with mitm_context():
        yield


def test_timeout_of_a_live_flow_is_recorded(stage: Answers, master: None) -> None:
    flow, state = forwarded()
    stage.upstream_timed_out(flow)
    assert state.timed_out is True
    assert flow.response is None  # no proxy connection to answer on in a unit test


# --- response headers --------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/event-stream", "text/event-stream; charset=utf-8"])
def test_event_streams_are_streamed_unbuffered(stage: Answers, content_type: str) -> None:
    flow = respond(stage, content_type)
    assert is_streamed(flow.response)
    assert flow.response is not None
    assert flow.response.headers["x-accel-buffering"] == "no"
    assert stage.metrics.registry.get_sample_value("apipod_active_streams") == 1


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
def test_other_responses_are_buffered(stage: Answers, content_type: str | None) -> None:
    flow = respond(stage, content_type)
    assert not is_streamed(flow.response)
    assert flow.response is not None
    assert "x-accel-buffering" not in flow.response.headers


def test_event_stream_detection_ignores_case(stage: Answers) -> None:
    flow = respond(stage, "Text/Event-Stream")
    assert is_streamed(flow.response)


def test_responses_lose_their_x_api_key(stage: Answers) -> None:
    flow = respond(
        stage,
        "application/json",
        [("x-api-key", UPSTREAM_KEY), ("X-Api-Key", "again"), ("x-trace", "t1")],
    )
    assert flow.response is not None
    assert "x-api-key" not in flow.response.headers
    assert flow.response.headers["x-trace"] == "t1"


def test_every_answer_carries_the_request_id(stage: Answers) -> None:
    flow = respond(stage, "application/json", [("x-request-id", "the-upstream's")])
    assert flow.response is not None
    assert flow.response.headers.get_all("x-request-id") == ["req_test"]


def test_while_draining_every_answer_closes_its_connection(stage: Answers) -> None:
    assert "connection" not in respond(stage, "application/json").response.headers  # type: ignore[union-attr]
    stage.traffic.draining = True
    assert respond(stage, "application/json").response.headers["connection"] == "close"  # type: ignore[union-attr]


def test_the_time_to_the_upstreams_headers_is_observed(stage: Answers) -> None:
    respond(stage, "application/json")
    assert stage.metrics.registry.get_sample_value("apipod_upstream_ttfb_seconds_count") == 1


# --- streams -----------------------------------------------------------------------------


def test_an_sse_answer_gets_the_translating_stream(stage: Answers) -> None:
    flow, _ = forwarded(direction=TRANSLATED, stream=True)
    answer(stage, flow, 200, None, sse=True)
    assert isinstance(flow.response.stream, AnthropicToOpenAIStream)  # type: ignore[union-attr]


def test_anthropic_passthrough_streams_watch_for_quota(stage: Answers) -> None:
    flow, _ = forwarded(path="/v1/messages", max_tokens=10, stream=True)
    answer(stage, flow, 200, None, sse=True)
    stream = flow.response.stream  # type: ignore[union-attr]
    assert isinstance(stream, AnthropicPassthroughStream)
    event = json.dumps(
        {"type": "error", "error": {"type": "invalid_request_error", "message": QUOTA}}
    )
    out = b"".join(stream(f"event: error\ndata: {event}\n\n".encode()))
    assert b"upstream_quota_exhausted" in out
    assert GEMINI in stage.cooldowns.active()  # the model sent, not the message's


def test_openai_passthrough_streams_keep_the_plain_watcher(stage: Answers) -> None:
    flow, state = forwarded(stream=True)
    state.strip_usage_chunk = True
    answer(stage, flow, 200, None, sse=True)
    watcher = flow.response.stream  # type: ignore[union-attr]
    assert isinstance(watcher, SseWatcher) and state.watcher is watcher


# --- whole answers -----------------------------------------------------------------------


def test_a_whole_answer_is_translated_back_with_its_usage(stage: Answers) -> None:
    flow, _ = forwarded(direction=TRANSLATED)
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": GEMINI,
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 5, "cache_read_input_tokens": 3, "output_tokens": 2},
    }
    response = answer(stage, flow, 200, message)
    payload = json.loads(response.content or b"")
    assert payload["choices"][0]["message"]["content"] == "Hello"
    assert payload["usage"]["prompt_tokens"] == 8
    assert payload["usage"]["completion_tokens"] == 2


def test_our_own_errors_keep_the_openai_shape_after_translating(stage: Answers) -> None:
    flow, state = forwarded(direction=TRANSLATED)
    state.timed_out = True  # the proxy answers 504 itself
    flow.response = errors.error_response(504, "late", "upstream_timeout")
    stage.headers(flow)
    stage.whole(flow)
    assert "type" not in json.loads(flow.response.content or b"")  # not Anthropic's shape


def test_a_translated_answer_too_large_to_translate_is_502(
    stage: Answers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("apipod_proxy.pipeline.answers.MAX_TRANSLATED_BODY", 10)
    flow, _ = forwarded(direction=TRANSLATED)
    content = gzip.compress(json.dumps({"content": "more than ten bytes"}).encode())
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    flow.response = response = http.Response.make(200, content, headers)
    stage.whole(flow)
    assert response.status_code == 502
    assert json.loads(response.content or b"")["error"]["type"] == "api_error"


@pytest.mark.parametrize("direction", [TRANSLATED, None])
def test_a_quota_answer_becomes_429_and_cools_the_routed_model(
    stage: Answers, apipod_log: LogRecords, direction: Direction | None
) -> None:
    # The alias was routed to Gemini (test_rewrite.py); the answer names "gemini-3".
    flow, _ = forwarded(model="cursor-pro-sonnet", routed=GEMINI, direction=direction)
    response = answer(stage, flow, 400, anthropic_error(QUOTA.replace(CLAUDE, "gemini-3")))
    assert response.status_code == 429 and response.headers["retry-after"] == "90"
    error = json.loads(response.content or b"")["error"]
    assert (error["code"], error["type"]) == ("upstream_quota_exhausted", "rate_limit_error")
    assert set(stage.cooldowns.active()) == {GEMINI}
    assert "upstream quota for gemini-3-flash is used up" in " ".join(apipod_log.lines())


def test_a_quota_reset_past_the_cap_cools_for_the_cap(
    tmp_path: Path, apipod_log: LogRecords
) -> None:
    stage = stages.answers(make_settings(tmp_path, quota_cooldown_max=60.0))
    flow, _ = forwarded()
    answer(stage, flow, 400, anthropic_error(QUOTA))  # a reset after 90 s
    assert 59 <= stage.cooldowns.active()[GEMINI] - time.time() <= 60
    [warning] = [line for line in apipod_log.warnings() if "QUOTA_COOLDOWN_MAX" in line]
    assert "after 90 s" in warning and "60 s instead" in warning


def test_anthropic_clients_get_rate_limit_error(stage: Answers) -> None:
    flow, _ = forwarded(path="/v1/messages", model=CLAUDE, max_tokens=5)
    response = answer(stage, flow, 400, anthropic_error(QUOTA))
    payload = json.loads(response.content or b"")
    assert response.status_code == 429 and payload["type"] == "error"
    assert payload["error"]["type"] == "rate_limit_error"


def test_other_client_errors_pass_through_untouched(stage: Answers) -> None:
    flow, _ = forwarded()
    original = {"error": {"message": "bad", "type": "invalid_request_error", "code": "x"}}
    response = answer(stage, flow, 400, original)
    assert response.status_code == 400 and json.loads(response.content or b"") == original
    assert stage.cooldowns.active() == {}


def test_endpoint_not_found_asks_the_upstream_again(stage: Answers) -> None:
    flow, _ = forwarded()
    flow.response = http.Response.make(
        404, json.dumps(anthropic_error("Endpoint POST /v1/chat/completions not found"))
    )
    stage.whole(flow)
    assert stage.upstream.rechecks == 1  # type: ignore[attr-defined]
    assert flow.response is not None and flow.response.status_code == 404


def test_an_answer_the_proxy_gave_itself_is_left_alone(stage: Answers) -> None:
    flow, state = forwarded(direction=TRANSLATED)
    state.answered_by_proxy = True
    content = json.dumps(anthropic_error(QUOTA)).encode()
    flow.response = http.Response.make(400, content, {"content-type": "application/json"})
    stage.whole(flow)
    assert flow.response.status_code == 400 and flow.response.content == content
    assert stage.cooldowns.active() == {}

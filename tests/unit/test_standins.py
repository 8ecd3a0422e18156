"""The Anthropic-only and OpenAI-only stand-in upstreams behave as specified.

Driven directly (no proxy) with httpx and the anthropic / openai SDKs, on real sockets.
The last tests chain the pure translations with the stand-ins, the way the addon will:
an OpenAI request, translated, answered by the Anthropic-only stand-in, translated back.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anthropic
import httpx
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from apipod_proxy.translate import (
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    anthropic_request_to_openai,
    anthropic_response_to_openai,
    error_for_client,
    openai_request_to_anthropic,
    openai_response_to_anthropic,
)
from tests.support.anthropic_standin import EMPTY_ANSWER, AnthropicStandIn
from tests.support.harness import UPSTREAM_KEY, WEATHER_TOOL_ANTHROPIC
from tests.support.openai_standin import OpenAIStandIn
from tests.support.upstream_console import WEBUI_PASSWORD

KEY = UPSTREAM_KEY
WEATHER_TOOL = WEATHER_TOOL_ANTHROPIC
OPENAI_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
def claude(claude_upstream: AnthropicStandIn) -> AnthropicStandIn:
    return claude_upstream


@pytest.fixture
def gpt(gpt_upstream: OpenAIStandIn) -> OpenAIStandIn:
    return gpt_upstream


def sdk(server: AnthropicStandIn) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0)


HI = [{"role": "user", "content": "hi"}]


# --- the Anthropic-only stand-in -----------------------------------------------------


def test_messages_with_the_anthropic_sdk(claude: AnthropicStandIn) -> None:
    message = sdk(claude).messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=HI)
    assert message.content[0].text == "Hello from claude-sonnet-4-5."
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 25
    assert message.usage.output_tokens == claude.reported[-1].output_tokens == 3
    headers = claude.received[-1].headers
    # SDK versions differ: some send x-api-key, newer ones Authorization: Bearer
    assert KEY in (headers.get("x-api-key"), headers.get("authorization", "")[7:])


def test_stream_with_thinking_and_cache_reads(claude: AnthropicStandIn) -> None:
    claude.cache_read_tokens = 100
    with sdk(claude).messages.stream(
        model="claude-sonnet-4-5-thinking", max_tokens=50, messages=HI
    ) as stream:
        message = stream.get_final_message()
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].signature.startswith("sig_")
    assert message.usage.cache_read_input_tokens == 100
    reported = claude.reported[-1]
    assert (reported.input_tokens, reported.cached_tokens, reported.stream) == (25, 100, True)
    assert message.usage.output_tokens == reported.output_tokens


@pytest.mark.parametrize("model", ["gemini-3-flash", "gemini-3-pro-high"])
def test_gemini_3_thinks_too(claude: AnthropicStandIn, model: str) -> None:
    message = sdk(claude).messages.create(model=model, max_tokens=50, messages=HI)
    assert message.content[0].type == "thinking"


def test_tool_calls_streamed_in_pieces_and_end_turn_when_not_streamed(
    claude: AnthropicStandIn,
) -> None:
    client = sdk(claude)
    plain = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=50, messages=HI, tools=[WEATHER_TOOL]
    )
    assert plain.content[-1].type == "tool_use"
    assert plain.stop_reason == "end_turn"  # as the real upstream answers
    pieces = 0
    with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=50, messages=HI, tools=[WEATHER_TOOL]
    ) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                pieces += 1
        message = stream.get_final_message()
    assert pieces > 2
    assert message.stop_reason == "tool_use"
    assert message.content[-1].input == {"city": "value of city"}


def test_tool_results_are_answered(claude: AnthropicStandIn) -> None:
    first = sdk(claude).messages.create(
        model="claude-sonnet-4-5", max_tokens=50, messages=HI, tools=[WEATHER_TOOL]
    )
    tool_use = first.content[-1]
    messages: list[Any] = [
        *HI,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny"}],
        },
    ]
    final = sdk(claude).messages.create(
        model="claude-sonnet-4-5", max_tokens=50, messages=messages, tools=[WEATHER_TOOL]
    )
    assert final.content[-1].text == "The tool said: sunny"


def test_events_are_split_across_reads(claude: AnthropicStandIn) -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": HI, "stream": True}
    with httpx.stream(
        "POST", claude.url + "/v1/messages", json=body, headers={"x-api-key": KEY}
    ) as response:
        reads = list(response.iter_raw())
    whole = b"".join(reads)
    assert len(reads) > whole.count(b"\n\n") // 2
    assert any(not read.endswith(b"\n\n") for read in reads)  # an event cut between reads
    assert any(read.count(b"event:") >= 1 and read.find(b"event:") > 0 for read in reads)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("GET", "/anything"),
    ],
)
def test_unknown_endpoints_answer_the_exact_404(
    claude: AnthropicStandIn, method: str, path: str
) -> None:
    response = httpx.request(method, claude.url + path, json={}, headers={"x-api-key": KEY})
    assert response.status_code == 404
    expected = {
        "type": "error",
        "error": {"type": "not_found_error", "message": f"Endpoint {method} {path} not found"},
    }
    assert response.json() == expected
    if path == "/v1/chat/completions" and method == "POST":
        assert response.content == (
            b'{"type":"error","error":{"type":"not_found_error",'
            b'"message":"Endpoint POST /v1/chat/completions not found"}}'
        )


def test_models_count_tokens_and_the_openai_sdk(claude: AnthropicStandIn) -> None:
    client = openai.OpenAI(base_url=claude.url + "/v1", api_key=KEY, max_retries=0)
    assert "claude-sonnet-4-5" in [m.id for m in client.models.list()]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="claude-sonnet-4-5", messages=HI)  # type: ignore[arg-type]
    response = httpx.post(
        claude.url + "/v1/messages/count_tokens", json={}, headers={"x-api-key": KEY}
    )
    assert response.status_code == 501


def test_auth_reads_bearer_first(claude: AnthropicStandIn) -> None:
    url = claude.url + "/v1/models"
    assert httpx.get(url, headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(url, headers={"x-api-key": KEY}).status_code == 200
    both = httpx.get(url, headers={"authorization": "Bearer client-key", "x-api-key": KEY})
    assert both.status_code == 401
    assert both.json()["error"]["type"] == "authentication_error"
    assert httpx.get(url).status_code == 401
    assert httpx.get(claude.url + "/health").status_code == 200  # only /v1/* needs the key


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"model": "m", "messages": HI}, "max_tokens"),
        ({"model": "m", "max_tokens": 5, "messages": HI, "n": 1}, "n: Extra inputs"),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "s"}, *HI]},
            "top-level system",
        ),
        ({"model": "m", "max_tokens": 5, "messages": [*HI, *HI]}, "alternate"),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x"}]}
                ],
            },
            "tool_use_id",
        ),
    ],
)
def test_requests_are_checked_strictly(
    claude: AnthropicStandIn, body: dict[str, Any], words: str
) -> None:
    response = httpx.post(claude.url + "/v1/messages", json=body, headers={"x-api-key": KEY})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert words in response.json()["error"]["message"]


def test_quota_400_and_in_stream_error(claude: AnthropicStandIn) -> None:
    client = sdk(claude)
    claude.exhaust("gemini-2.5-flash", reset="1m0s")
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="gemini-2.5-flash", max_tokens=5, messages=HI)
    assert caught.value.status_code == 400
    assert caught.value.body["error"]["message"] == (  # type: ignore[index]
        "You have exhausted your capacity on gemini-2. Quota will reset after 1m0s."
    )
    claude.exhaust("gemini-2.5-flash", reset="45s", in_stream=True, prefixed=True)
    body = {"model": "gemini-2.5-flash", "max_tokens": 5, "messages": HI, "stream": True}
    response = httpx.post(claude.url + "/v1/messages", json=body, headers={"x-api-key": KEY})
    assert response.status_code == 200
    assert response.text.startswith("event: error\n")
    assert "RESOURCE_EXHAUSTED: You have exhausted" in response.text
    claude.restore("gemini-2.5-flash")
    assert client.messages.create(model="gemini-2.5-flash", max_tokens=5, messages=HI).content


def test_quota_for_a_while(claude: AnthropicStandIn) -> None:
    claude.exhaust("claude-sonnet-4-5", seconds=0.3)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": HI}
    headers = {"x-api-key": KEY}
    assert httpx.post(claude.url + "/v1/messages", json=body, headers=headers).status_code == 400
    time.sleep(0.4)
    assert httpx.post(claude.url + "/v1/messages", json=body, headers=headers).status_code == 200


def test_steering_over_http_and_no_accounts(claude: AnthropicStandIn) -> None:
    body = {"model": "gemini-3-flash", "max_tokens": 5, "messages": HI}
    headers = {"x-api-key": KEY}
    control = httpx.post(claude.url + "/_standin/exhaust", json={"model": "gemini-3-flash"})
    assert control.json() == {"ok": True}
    assert httpx.post(claude.url + "/v1/messages", json=body, headers=headers).status_code == 400
    httpx.post(claude.url + "/_standin/restore", json={"model": "gemini-3-flash"})
    assert httpx.post(claude.url + "/v1/messages", json=body, headers=headers).status_code == 200
    claude.accounts_available = False
    try:
        assert httpx.get(claude.url + "/v1/models", headers=headers).status_code == 503
    finally:
        claude.accounts_available = True


def test_the_empty_answer(claude: AnthropicStandIn) -> None:
    claude.answer_empty("gemini-3-flash")
    with sdk(claude).messages.stream(model="gemini-3-flash", max_tokens=5, messages=HI) as stream:
        message = stream.get_final_message()
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == EMPTY_ANSWER
    assert message.usage.input_tokens == message.usage.output_tokens == 0


# --- the OpenAI-only stand-in --------------------------------------------------------


def gpt_client(server: OpenAIStandIn) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def test_openai_chat_and_usage(gpt: OpenAIStandIn) -> None:
    gpt.cached_tokens = 10
    try:
        answer = gpt_client(gpt).chat.completions.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
    finally:
        gpt.cached_tokens = 0
    assert answer.choices[0].message.content == "Hello from gpt-4o-mini."
    assert answer.usage is not None and answer.usage.prompt_tokens == 30
    assert answer.usage.prompt_tokens_details.cached_tokens == 10  # type: ignore[union-attr]
    assert answer.usage.completion_tokens == gpt.reported[-1].output_tokens


def test_openai_stream_usage_only_when_asked(gpt: OpenAIStandIn) -> None:
    client = gpt_client(gpt)
    chunks = list(client.chat.completions.create(model="m", messages=HI, stream=True))  # type: ignore[arg-type]
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=HI,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_openai_tool_calls_streamed_and_answered(gpt: OpenAIStandIn) -> None:
    client = gpt_client(gpt)
    with client.chat.completions.stream(
        model="m",
        messages=HI,  # type: ignore[arg-type]
        tools=[OPENAI_WEATHER],  # type: ignore[list-item]
    ) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert json.loads(call.function.arguments) == {"city": "value of city"}
    assert final.choices[0].finish_reason == "tool_calls"
    messages = [
        *HI,
        final.choices[0].message.model_dump(exclude_none=True, exclude={"parsed"}),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    answer = client.chat.completions.create(model="m", messages=messages, tools=[OPENAI_WEATHER])  # type: ignore[arg-type,list-item]
    assert answer.choices[0].message.content == "The tool said: sunny"


def test_openai_error_inside_a_stream(gpt: OpenAIStandIn) -> None:
    with pytest.raises(openai.APIError, match="gateway exploded"):
        list(
            gpt_client(gpt).chat.completions.create(
                model="m",
                messages=HI,  # type: ignore[arg-type]
                stream=True,
                extra_headers={"x-standin-stream-error": "gateway exploded"},
            )
        )


def test_openai_only_refuses_anthropic(gpt: OpenAIStandIn) -> None:
    response = httpx.post(
        gpt.url + "/v1/messages",
        json={"model": "m", "max_tokens": 5, "messages": HI},
        headers={"authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"
    with pytest.raises(openai.BadRequestError, match="system"):
        gpt_client(gpt).chat.completions.create(
            model="m",
            messages=HI,  # type: ignore[arg-type]
            extra_body={"system": "anthropic-style"},
        )
    assert httpx.get(gpt.url + "/v1/models").status_code == 401


# --- the translations, chained with the stand-ins ------------------------------------


def through_claude(server: AnthropicStandIn, body: dict[str, Any]) -> Any:
    """What an OpenAI client would receive for `body` over the Anthropic-only upstream."""
    request = openai_request_to_anthropic(body)
    headers = {"x-api-key": KEY}
    if not request.stream:
        response = httpx.post(server.url + "/v1/messages", json=request.body, headers=headers)
        if response.status_code != 200:
            return error_for_client(
                "openai", response.status_code, response.content, model=body["model"]
            )
        return anthropic_response_to_openai(response.json(), model=body["model"])
    translator = AnthropicToOpenAIStream(body["model"], request.include_usage)
    out = b""
    with httpx.stream(
        "POST", server.url + "/v1/messages", json=request.body, headers=headers
    ) as response:
        assert response.status_code == 200
        for piece in [*response.iter_raw(), b""]:
            out += b"".join(translator(piece))
    return out, translator


def accumulate(out: bytes) -> Any:
    state = ChatCompletionStreamState()
    for event in out.decode().split("\n\n")[:-1]:
        data = event.removeprefix("data: ")
        if data != "[DONE]":
            state.handle_chunk(ChatCompletionChunk.model_validate(json.loads(data)))
    return state.get_final_completion()


@pytest.mark.parametrize("stream", [False, True])
def test_two_turn_tool_conversation_over_the_anthropic_only_upstream(
    claude: AnthropicStandIn, stream: bool
) -> None:
    claude.cache_read_tokens = 40
    body: dict[str, Any] = {
        "model": "gemini-3-flash",
        "messages": [{"role": "system", "content": "You are Cursor."}, *HI],
        "tools": [OPENAI_WEATHER],
        "stream": stream,
        "stream_options": {"include_usage": True} if stream else None,
    }
    if not stream:
        del body["stream_options"]
    first = through_claude(claude, body)
    if stream:
        out, translator = first
        first = accumulate(out).model_dump()
        assert translator.usage.prompt_tokens == 65
        assert translator.usage.cached_tokens == 40
        assert b'"prompt_tokens":65' in out
    ChatCompletion.model_validate(first)
    message = first["choices"][0]["message"]
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    assert message.get("reasoning_content")  # gemini-3 thinks; never in content
    call = message["tool_calls"][0]
    body["messages"] += [
        {"role": "assistant", "content": message["content"], "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"},
    ]
    second = through_claude(claude, body)
    if stream:
        second = accumulate(second[0]).model_dump()
    assert second["choices"][0]["message"]["content"] == "The tool said: sunny, 21 C"
    assert second["choices"][0]["finish_reason"] == "stop"
    assert claude.received[-1].json()["system"] == "You are Cursor."


def test_quota_over_the_anthropic_only_upstream(claude: AnthropicStandIn) -> None:
    claude.exhaust("claude-sonnet-4-5", reset="1m0s")
    answer = through_claude(claude, {"model": "claude-sonnet-4-5", "messages": HI})
    assert answer.status == 429 and answer.headers == {"retry-after": "60"}
    claude.exhaust("claude-sonnet-4-5", reset="2m0s", in_stream=True)
    out, translator = through_claude(
        claude, {"model": "claude-sonnet-4-5", "messages": HI, "stream": True}
    )
    assert json.loads(out.decode().removeprefix("data: "))["error"]["code"] == (
        "upstream_quota_exhausted"
    )
    assert translator.quota.reset_seconds == 120


def test_image_message_over_the_anthropic_only_upstream(claude: AnthropicStandIn) -> None:
    content = [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    answer = through_claude(
        claude, {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": content}]}
    )
    assert answer["choices"][0]["message"]["content"] == (
        "Hello from claude-sonnet-4-5. I see 1 image(s)."
    )


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_client_over_the_openai_only_upstream(gpt: OpenAIStandIn, stream: bool) -> None:
    body = {
        "model": "o-mini-thinking",
        "max_tokens": 100,
        "system": "Be brief.",
        "messages": HI,
        "tools": [WEATHER_TOOL],
        "stream": stream,
    }
    request = anthropic_request_to_openai(body)
    headers = {"authorization": f"Bearer {KEY}"}
    url = gpt.url + "/v1/chat/completions"
    if not stream:
        response = httpx.post(url, json=request.body, headers=headers)
        message = openai_response_to_anthropic(response.json(), model=body["model"])
        assert [b["type"] for b in message["content"]] == ["thinking", "tool_use"]
        assert message["stop_reason"] == "tool_use"
        return
    translator = OpenAIToAnthropicStream(body["model"])
    out = b""
    with httpx.stream("POST", url, json=request.body, headers=headers) as response:
        for piece in [*response.iter_raw(), b""]:
            out += b"".join(translator(piece))
    assert out.count(b"event: message_start") == 1
    assert out.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert translator.usage.prompt_tokens == 30
    assert translator.usage.completion_tokens == gpt.reported[-1].output_tokens


def test_openai_stream_error_reaches_an_anthropic_client_as_an_error_event(
    gpt: OpenAIStandIn,
) -> None:
    request = anthropic_request_to_openai(
        {"model": "m", "max_tokens": 5, "messages": HI, "stream": True}
    )
    translator = OpenAIToAnthropicStream("m")
    out = b""
    headers = {"authorization": f"Bearer {KEY}", "x-standin-stream-error": "gateway exploded"}
    with httpx.stream(
        "POST", gpt.url + "/v1/chat/completions", json=request.body, headers=headers
    ) as response:
        for piece in [*response.iter_raw(), b""]:
            out += b"".join(translator(piece))
    assert out.startswith(b"event: message_start\n")
    assert out.endswith(
        b'event: error\ndata: {"type":"error","error":{"type":"server_error",'
        b'"message":"gateway exploded"}}\n\n'
    )
    assert translator.error == {"type": "server_error", "message": "gateway exploded"}


def test_openai_streamed_text_equals_the_plain_answer(gpt: OpenAIStandIn) -> None:
    client = gpt_client(gpt)
    plain = client.chat.completions.create(model="m", messages=HI)  # type: ignore[arg-type]
    chunks = client.chat.completions.create(model="m", messages=HI, stream=True)  # type: ignore[arg-type]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content


def test_the_upstream_console_is_served_to_anyone_and_recorded(claude: AnthropicStandIn) -> None:
    """Like antigravity-claude-proxy 2.0.4: its config (with its key), accounts, quotas
    and console need no key at all, which is why the proxy must never forward there."""
    claude.reset()
    config = httpx.get(claude.url + "/api/config").json()["config"]
    assert config["apiKey"] == KEY and config["webuiPassword"] == WEBUI_PASSWORD
    assert httpx.get(claude.url + "/api/accounts").json()["accounts"]
    assert httpx.get(claude.url + "/account-limits").json()["accounts"]
    assert "Antigravity Console" in httpx.get(claude.url + "/").text
    assert [(r.method, r.path) for r in claude.received] == [
        ("GET", "/api/config"),
        ("GET", "/api/accounts"),
        ("GET", "/account-limits"),
        ("GET", "/"),
    ]


def test_the_anthropic_standin_takes_what_claude_code_sends_for_its_opus_default() -> None:
    """What Claude Code 2.1 sends with no model setting, which the real package accepts:
    a system message after the first turn, adaptive thinking, context_management and
    output_config (a system message first is still refused: see above)."""
    from tests.support.anthropic_standin import validate

    validate(
        {
            "model": "claude-opus-4-5-thinking",
            "max_tokens": 32000,
            "messages": [*HI, {"role": "system", "content": "a reminder"}],
            "thinking": {"type": "adaptive"},
            "context_management": {"edits": []},
            "output_config": {"effort": "high"},
        }
    )

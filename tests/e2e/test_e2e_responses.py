"""End to end: `POST /v1/responses` and Cursor's Agent-mode bodies, through real mitmdump.

In front of the Anthropic-only stand-in (UPSTREAM_API=anthropic: Responses -> Chat
Completions -> Messages) and the OpenAI-only one (UPSTREAM_API=openai: Responses ->
Chat Completions): the openai SDK's `responses.create` and `responses.stream` with
text, a function-tool round trip and a custom-tool round trip; usage and spend
counted; a quota error before the stream (429) and inside it (`response.failed`); the
refusals; and Cursor's recorded Agent-mode body on `/v1/chat/completions`, read back by
the openai SDK as Chat Completions chunks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from tests.support.anthropic_standin import AnthropicStandIn
from tests.support.harness import ADMIN_SECRET, Proxy, start_proxy
from tests.support.openai_standin import OpenAIStandIn

CLAUDE = "claude-sonnet-4-5"
FIXTURES = Path(__file__).parent.parent / "fixtures" / "cursor"
ADMIN = {"x-admin-secret": ADMIN_SECRET}
PRICES = f"""
[prices."{CLAUDE}"]
input = 3.0
output = 15.0
"""
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
PATCH_TOOL = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files with a patch",
    "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/s"},
}


@pytest.fixture(scope="module")
def claude_proxy(
    anthropic_only: AnthropicStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    workdir = tmp_path_factory.mktemp("responses-over-claude")
    (workdir / "routes.toml").write_text(PRICES)
    running = start_proxy(
        workdir,
        anthropic_only.url,
        UPSTREAM_API="anthropic",
        ROUTES_FILE=str(workdir / "routes.toml"),
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def gpt_proxy(
    openai_only: OpenAIStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    running = start_proxy(
        tmp_path_factory.mktemp("responses-over-gpt"), openai_only.url, UPSTREAM_API="openai"
    )
    yield running
    running.stop()


def client_of(proxy: Proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)


def logged(proxy: Proxy, key_id: int) -> list[dict[str, Any]]:
    rows = proxy.usage_rows(key_id, 1)
    assert rows, "no usage counted"
    return rows


# --- over the Anthropic-only upstream ---------------------------------------------------


def test_create_text_with_usage_and_spend(
    claude_proxy: Proxy, claude_upstream: AnthropicStandIn
) -> None:
    key_id, key = claude_proxy.new_key("responses-text", budget=1.0, budget_period="month")
    response = client_of(claude_proxy, key).responses.create(
        model=CLAUDE, instructions="Be brief.", input="hi", store=False, max_output_tokens=200
    )
    assert response.output_text == f"Hello from {CLAUDE}."
    assert response.status == "completed" and response.model == CLAUDE
    sent = claude_upstream.received[-1]
    assert sent.path == "/v1/messages"
    assert sent.json()["system"] == "Be brief." and sent.json()["max_tokens"] == 200
    reported = claude_upstream.reported[-1]
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        reported.input_tokens,
        reported.output_tokens,
    )
    [row] = logged(claude_proxy, key_id)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (25, reported.output_tokens)
    assert row["cost"] == pytest.approx((25 * 3.0 + reported.output_tokens * 15.0) / 1e6)


def test_stream_text_with_reasoning_summary(
    claude_proxy: Proxy, claude_upstream: AnthropicStandIn
) -> None:
    key_id, key = claude_proxy.new_key("responses-stream")
    with client_of(claude_proxy, key).responses.stream(
        model="claude-sonnet-4-5-thinking", input="hi", reasoning={"effort": "low"}
    ) as stream:
        kinds = [event.type for event in stream]
        response = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.reasoning_summary_text.delta" in kinds
    assert response.output_text == "Hello from claude-sonnet-4-5-thinking."
    assert response.output[0].type == "reasoning"
    assert claude_upstream.received[-1].json()["thinking"]["budget_tokens"] == 1024
    [row] = logged(claude_proxy, key_id)
    assert row["prompt_tokens"] == 25 and row["completion_tokens"] > 0


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_a_function_tool_round_trip(
    claude_proxy: Proxy, claude_upstream: AnthropicStandIn, stream: bool
) -> None:
    _, key = claude_proxy.new_key(f"responses-tool-{stream}")
    client = client_of(claude_proxy, key)
    ask: dict[str, Any] = {"model": CLAUDE, "input": "Weather in Paris?", "tools": [WEATHER]}
    if stream:
        with client.responses.stream(**ask) as events:
            first = events.get_final_response()
    else:
        first = client.responses.create(**ask)
    call = first.output[-1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "value of city"}
    assert call.call_id.startswith("toolu_standin_")  # the upstream's id survives
    follow_up = [
        {"role": "user", "content": "Weather in Paris?"},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
    ]
    second = client.responses.create(model=CLAUDE, input=follow_up, tools=[WEATHER])  # type: ignore[arg-type]
    assert second.output_text == "The tool said: sunny, 21 C"
    sent = claude_upstream.received[-1].json()["messages"]
    assert sent[1]["content"][-1]["id"] == call.call_id
    assert sent[2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": call.call_id,
        "content": "sunny, 21 C",
    }


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_a_custom_tool_round_trip(
    claude_proxy: Proxy, claude_upstream: AnthropicStandIn, stream: bool
) -> None:
    _, key = claude_proxy.new_key(f"responses-custom-{stream}")
    client = client_of(claude_proxy, key)
    ask: dict[str, Any] = {"model": CLAUDE, "input": "Fix the bug", "tools": [PATCH_TOOL]}
    if stream:
        with client.responses.stream(**ask) as events:
            kinds = [event.type for event in events]
            first = events.get_final_response()
        assert "response.custom_tool_call_input.delta" in kinds
    else:
        first = client.responses.create(**ask)
    call = first.output[-1]
    assert call.type == "custom_tool_call" and call.name == "apply_patch"
    assert call.input == "value of input"  # the free text, not the JSON it travelled in
    upstream_tool = claude_upstream.received[-1].json()["tools"][0]
    assert upstream_tool["input_schema"]["required"] == ["input"]
    follow_up = [
        {"role": "user", "content": "Fix the bug"},
        {"type": "custom_tool_call", "call_id": call.call_id, "name": "apply_patch",
         "input": call.input},
        {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done!"},
    ]  # fmt: skip
    second = client.responses.create(model=CLAUDE, input=follow_up, tools=[PATCH_TOOL])  # type: ignore[arg-type]
    assert second.output_text == "The tool said: Done!"
    sent = claude_upstream.received[-1].json()["messages"]
    assert sent[1]["content"][0]["input"] == {"input": "value of input"}


def test_a_quota_error_before_the_stream_is_429(
    claude_proxy: Proxy, claude_upstream: AnthropicStandIn
) -> None:
    _, key = claude_proxy.new_key("responses-quota-before")
    claude_upstream.exhaust(CLAUDE, reset="1m0s", in_stream=False)
    client = client_of(claude_proxy, key)
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model=CLAUDE, input="hi", stream=True)
    assert caught.value.response.headers["retry-after"] == "60"
    assert caught.value.code == "upstream_quota_exhausted"
    # The model is cooling down now (it leaves alias rotation).
    assert CLAUDE in json.dumps(httpx.get(f"{claude_proxy.url}/health").json()["cooldowns"])


def test_a_quota_error_inside_the_stream_is_response_failed(
    claude_proxy: Proxy, claude_upstream: AnthropicStandIn
) -> None:
    _, key = claude_proxy.new_key("responses-quota-inside")
    claude_upstream.exhaust("gemini-3-flash", reset="1m0s", in_stream=True)
    events = list(
        client_of(claude_proxy, key).responses.create(
            model="gemini-3-flash", input="hi", stream=True
        )
    )
    assert [event.type for event in events] == [
        "response.created",
        "response.in_progress",
        "response.failed",
    ]
    failed = events[-1]
    assert failed.response.error is not None  # type: ignore[union-attr]
    assert failed.response.error.code == "upstream_quota_exhausted"  # type: ignore[union-attr]


def test_previous_response_id_and_hosted_tools_are_refused(claude_proxy: Proxy) -> None:
    _, key = claude_proxy.new_key("responses-refused")
    client = client_of(claude_proxy, key)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=CLAUDE, input="hi", previous_response_id="resp_1")
    assert caught.value.code == "unsupported_parameter"
    assert "whole conversation" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=CLAUDE, input="hi", tools=[{"type": "file_search"}])  # type: ignore[list-item]
    assert caught.value.code == "unsupported_by_upstream"
    assert "file_search" in caught.value.message


def test_the_proxys_own_errors_are_in_the_shape_the_sdk_reads(claude_proxy: Proxy) -> None:
    client = openai.OpenAI(base_url=f"{claude_proxy.url}/v1", api_key="apk_wrong", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.responses.create(model=CLAUDE, input="hi")
    assert caught.value.status_code in (401, 403)
    assert caught.value.code == "invalid_api_key" and caught.value.message.endswith(
        "Invalid API key"
    )
    answer = httpx.get(f"{claude_proxy.url}/v1/responses")
    assert answer.status_code == 405


# --- Cursor's Agent mode on /v1/chat/completions -------------------------------------------


def cursor_chunks(proxy: Proxy, key: str, body: dict[str, Any]) -> Any:
    """Cursor's body posted as it sends it, read back by the openai SDK's chat stream."""
    client = client_of(proxy, key)
    stream = client.post(
        "/chat/completions",
        body=body,
        cast_to=ChatCompletionChunk,
        stream=True,
        stream_cls=openai.Stream[ChatCompletionChunk],
    )
    state = ChatCompletionStreamState()
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        state.handle_chunk(chunk)
    return chunks, state.get_final_completion()


def test_cursor_agent_body_is_answered_as_chat_chunks(
    claude_proxy: Proxy, claude_upstream: AnthropicStandIn
) -> None:
    key_id, key = claude_proxy.new_key("cursor-agent")
    body = json.loads((FIXTURES / "agent_responses_shape.json").read_text())
    body["model"] = CLAUDE
    # Cursor's last item is a tool output: the stand-in quotes it back as text.
    chunks, completion = cursor_chunks(claude_proxy, key, body)
    assert completion.choices[0].message.content == (
        "The tool said: x = 0\nfor n in items:\n    x += n\n"
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 25
    sent = claude_upstream.received[-1]
    assert sent.path == "/v1/messages"
    upstream = sent.json()
    assert [tool["name"] for tool in upstream["tools"]] == [
        "read_file",
        "run_terminal_cmd",
        "ApplyPatch",
    ]
    assert upstream["messages"][1]["content"][0]["id"] == "call_cursor_read_1"
    # A turn that calls the custom tool: its text arrives as the call's arguments.
    body["input"] = body["input"][:1]
    body["tool_choice"] = {"type": "custom", "name": "ApplyPatch"}
    _, completion = cursor_chunks(claude_proxy, key, body)
    (call,) = completion.choices[0].message.tool_calls
    assert (call.function.name, call.function.arguments) == ("ApplyPatch", "value of input")
    assert completion.choices[0].finish_reason == "tool_calls"
    rows = claude_proxy.usage_rows(key_id, 2)
    assert sum(row["requests"] for row in rows) == 2


# --- over the OpenAI-only upstream --------------------------------------------------------


def test_over_an_openai_upstream_create_stream_and_tools(
    gpt_proxy: Proxy, gpt_upstream: OpenAIStandIn
) -> None:
    key_id, key = gpt_proxy.new_key("responses-gpt")
    client = client_of(gpt_proxy, key)
    response = client.responses.create(model="gpt-4o-mini", input="hi", instructions="Be brief.")
    sent = gpt_upstream.received[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.json()["messages"][0] == {"role": "system", "content": "Be brief."}
    assert response.output_text
    with client.responses.stream(model="gpt-4o-mini", input="hi", tools=[WEATHER]) as events:
        final = events.get_final_response()
    call = final.output[-1]
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "value of city"}
    assert gpt_upstream.received[-1].json()["stream_options"] == {"include_usage": True}
    rows = gpt_proxy.usage_rows(key_id, 2)
    assert sum(row["prompt_tokens"] for row in rows) > 0

"""End to end: real mitmdump in front of the OpenAI-only stand-in (a gateway without /v1/messages).

OpenAI clients pass through, tool calls streamed in pieces included: the proxy sends its
upstream key the way OpenAI servers read it (`Authorization: Bearer`). Anthropic clients
(Claude Code, the anthropic SDK) are translated (`UPSTREAM_API=openai`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.support.harness import UPSTREAM_KEY, Proxy, start_proxy
from tests.support.harness import WEATHER_TOOL_ANTHROPIC as WEATHER
from tests.support.openai_standin import OpenAIStandIn

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gpt_proxy(
    openai_only: OpenAIStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    running = start_proxy(
        tmp_path_factory.mktemp("over-gpt"), openai_only.url, UPSTREAM_API="openai"
    )
    yield running
    running.stop()


def test_openai_sdk_tool_stream_passes_through(
    gpt_proxy: Proxy, gpt_upstream: OpenAIStandIn
) -> None:
    client = openai.OpenAI(
        base_url=f"{gpt_proxy.url}/v1", api_key=gpt_proxy.create_key(), max_retries=0
    )
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]},
    }
    with client.chat.completions.stream(model="gpt-4o-mini", messages=HI, tools=[tool]) as stream:  # type: ignore[arg-type,list-item]
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert json.loads(call.function.arguments) == {"city": "value of city"}
    assert gpt_upstream.received[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


def anthropic_client(proxy: Proxy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key=proxy.create_key(), max_retries=0)


def test_anthropic_sdk_message(gpt_proxy: Proxy, gpt_upstream: OpenAIStandIn) -> None:
    message = anthropic_client(gpt_proxy).messages.create(
        model="gpt-4o-mini",
        max_tokens=100,
        system="Be brief.",
        messages=HI,  # type: ignore[arg-type]
    )
    assert message.content[0].text == "Hello from gpt-4o-mini."  # type: ignore[union-attr]
    sent = gpt_upstream.received[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.json()["messages"][0] == {"role": "system", "content": "Be brief."}
    assert message.usage.input_tokens == 30


def test_anthropic_sdk_two_turn_tool_stream(gpt_proxy: Proxy, gpt_upstream: OpenAIStandIn) -> None:
    client = anthropic_client(gpt_proxy)
    messages: list[dict[str, object]] = [*HI]

    def ask() -> anthropic.types.Message:
        with client.messages.stream(
            model="o-mini-thinking",
            max_tokens=100,
            messages=messages,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[arg-type,list-item]
        ) as stream:
            return stream.get_final_message()

    first = ask()
    assert [b.type for b in first.content] == ["thinking", "tool_use"]
    assert first.stop_reason == "tool_use"
    tool_use = first.content[1]
    assert tool_use.input == {"city": "value of city"}  # type: ignore[union-attr]
    messages.append({"role": "assistant", "content": [b.model_dump() for b in first.content]})
    messages.append(
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny"}],  # type: ignore[union-attr]
        }
    )
    final = ask()
    assert final.content[-1].text == "The tool said: sunny"  # type: ignore[union-attr]
    assert final.usage.output_tokens == gpt_upstream.reported[-1].output_tokens

"""End to end: real mitmdump in front of the Anthropic-only stand-in (antigravity-claude-proxy).

Anthropic clients pass through: the SDK (which sends `Authorization: Bearer`), thinking
with signatures, a tool call whose input arrives in pieces, events split across TCP
writes, and usage counted exactly, cache reads included.

OpenAI clients are translated (`UPSTREAM_API=anthropic`): plain chat, the stream helper
with usage, images, a two-turn tool conversation streamed and not, and quota answers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.support.anthropic_standin import MODELS, AnthropicStandIn
from tests.support.harness import UPSTREAM_KEY, Proxy, start_proxy, wait_for
from tests.support.harness import WEATHER_TOOL as WEATHER
from tests.support.real_upstream import claude_code_env, claude_says

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def claude_proxy(
    anthropic_only: AnthropicStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    running = start_proxy(
        tmp_path_factory.mktemp("over-claude"), anthropic_only.url, UPSTREAM_API="anthropic"
    )
    yield running
    running.stop()


def usage_of(proxy: Proxy, key_id: int, requests: int) -> tuple[int, int]:
    """(prompt, completion) tokens counted for the key, once `requests` are flushed."""
    rows = proxy.usage_rows(key_id, requests)
    return sum(row["prompt_tokens"] for row in rows), sum(row["completion_tokens"] for row in rows)


# --- Anthropic clients: passthrough ----------------------------------------------------


def test_anthropic_sdk_stream_with_thinking_tools_and_cache_reads(
    claude_proxy: Proxy, claude_upstream: AnthropicStandIn
) -> None:
    claude_upstream.cache_read_tokens = 100
    key_id, key = claude_proxy.new_key("anthropic-passthrough")
    client = anthropic.Anthropic(base_url=claude_proxy.url, api_key=key, max_retries=0)
    tool = {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}
    with client.messages.stream(
        model="claude-sonnet-4-5-thinking", max_tokens=100, messages=HI, tools=[tool]
    ) as stream:
        message = stream.get_final_message()
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[0].signature.startswith("sig_")
    assert message.content[2].input == {"city": "value of city"}
    assert message.stop_reason == "tool_use"
    received = claude_upstream.received[-1].headers
    assert received["x-api-key"] == UPSTREAM_KEY
    # The upstream reads Bearer first: the client's key left there would win over ours.
    assert received.get("authorization", f"Bearer {UPSTREAM_KEY}") == f"Bearer {UPSTREAM_KEY}"
    reported = claude_upstream.reported[-1]
    assert usage_of(claude_proxy, key_id, 1) == (125, reported.output_tokens)


# --- OpenAI clients: translated (issue 10) ---------------------------------------------


def openai_client(proxy: Proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)


def test_openai_plain_chat(claude_proxy: Proxy, claude_upstream: AnthropicStandIn) -> None:
    _, key = claude_proxy.new_key("openai-plain")
    answer = openai_client(claude_proxy, key).chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[{"role": "system", "content": "Be brief."}, *HI],  # type: ignore[list-item]
    )
    assert answer.choices[0].message.content == "Hello from claude-sonnet-4-5."
    assert claude_upstream.received[-1].path == "/v1/messages"
    assert claude_upstream.received[-1].json()["system"] == "Be brief."


def test_openai_stream_helper_with_usage_and_cache_reads(
    claude_proxy: Proxy, claude_upstream: AnthropicStandIn
) -> None:
    claude_upstream.cache_read_tokens = 40
    key_id, key = claude_proxy.new_key("openai-stream")
    with openai_client(claude_proxy, key).chat.completions.stream(
        model="gemini-3-flash",
        messages=HI,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Hello from gemini-3-flash."
    assert final.usage is not None
    reported = claude_upstream.reported[-1]
    assert final.usage.prompt_tokens == 65
    assert final.usage.prompt_tokens_details.cached_tokens == 40  # type: ignore[union-attr]
    assert final.usage.completion_tokens == reported.output_tokens
    assert usage_of(claude_proxy, key_id, 1) == (65, reported.output_tokens)


def test_openai_image_message(claude_proxy: Proxy, claude_upstream: AnthropicStandIn) -> None:
    _, key = claude_proxy.new_key("openai-image")
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    answer = openai_client(claude_proxy, key).chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[{"role": "user", "content": content}],  # type: ignore[list-item]
    )
    assert answer.choices[0].message.content == "Hello from claude-sonnet-4-5. I see 1 image(s)."


@pytest.mark.parametrize("stream", [False, True])
def test_openai_two_turn_tool_conversation(
    claude_proxy: Proxy, claude_upstream: AnthropicStandIn, stream: bool
) -> None:
    _, key = claude_proxy.new_key(f"openai-tools-{stream}")
    client = openai_client(claude_proxy, key)
    messages: list[Any] = [{"role": "system", "content": "You are Cursor."}, *HI]

    def ask() -> Any:
        if not stream:
            return client.chat.completions.create(
                model="cursor-pro-sonnet",
                messages=messages,
                tools=[WEATHER],  # type: ignore[list-item]
            )
        with client.chat.completions.stream(
            model="cursor-pro-sonnet",
            messages=messages,
            tools=[WEATHER],  # type: ignore[list-item]
        ) as events:
            return events.get_final_completion()

    first = ask()
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    assert json.loads(call.function.arguments) == {"city": "value of city"}
    messages.append(
        {
            "role": "assistant",
            "content": first.choices[0].message.content,
            "tool_calls": [call.model_dump()],
        }
    )
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"})
    final = ask()
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == "The tool said: sunny, 21 C"


@pytest.mark.parametrize("in_stream", [False, True])
def test_openai_quota_answer(
    claude_proxy: Proxy, claude_upstream: AnthropicStandIn, in_stream: bool
) -> None:
    _, key = claude_proxy.new_key(f"openai-quota-{in_stream}")
    claude_upstream.exhaust("claude-sonnet-4-5", reset="1m0s", in_stream=in_stream)
    client = openai_client(claude_proxy, key)
    if not in_stream:
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="claude-sonnet-4-5", messages=HI)  # type: ignore[arg-type]
        assert caught.value.response.headers["retry-after"] == "60"
        assert caught.value.code == "upstream_quota_exhausted"
        return
    with pytest.raises(openai.APIError) as raised:
        list(client.chat.completions.create(model="claude-sonnet-4-5", messages=HI, stream=True))  # type: ignore[arg-type]
    assert raised.value.code == "upstream_quota_exhausted"


# --- upstream errors quoting half an emoji (issue 18) ------------------------------------


def post_raw(proxy: Proxy, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    """POST `body` written by json.dumps: the SDKs cannot send a lone surrogate."""
    return httpx.post(
        f"{proxy.url}{path}",
        content=json.dumps(body).encode(),
        headers={"content-type": "application/json", **headers},
        timeout=30,
    )


def data_lines(text: str) -> list[Any]:
    lines = [line.removeprefix("data: ") for line in text.splitlines()]
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_upstream_error_quoting_a_lone_surrogate_is_answered_in_json(
    claude_proxy: Proxy, claude_upstream: AnthropicStandIn, stream: bool
) -> None:
    """Issue 18: failures.py wrote error answers with its own encoder, which raised
    UnicodeEncodeError on half an emoji ("\\ud83d") in an upstream's message. The upstream
    here quotes the client's text in its 400 (`x-standin-echo-error`), as upstreams do."""
    _, key = claude_proxy.new_key(f"surrogate-error-{stream}")
    text = "cut emoji \ud83d"
    echoed = f'Invalid value "{text}"'
    messages = [{"role": "user", "content": text}]
    echo = {"x-standin-echo-error": "1"}
    # OpenAI client, translated: the upstream's error in OpenAI's shape (had the proxy
    # failed, the upstream's Anthropic-shaped body would have gone out untranslated).
    body = {"model": "claude-sonnet-4-5", "stream": stream, "messages": messages}
    answer = post_raw(
        claude_proxy, "/v1/chat/completions", body, authorization=f"Bearer {key}", **echo
    )
    [error] = [answer.json()] if not stream else data_lines(answer.text)
    assert answer.status_code == (200 if stream else 400), answer.text
    assert error == {
        "error": {
            "message": echoed,
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_request_error",
        }
    }
    # Anthropic client, passed through: the upstream's own error.
    body = {"model": "claude-sonnet-4-5", "max_tokens": 50, "stream": stream, "messages": messages}
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01", **echo}
    answer = post_raw(claude_proxy, "/v1/messages", body, **headers)
    [error] = [answer.json()] if not stream else data_lines(answer.text)
    assert answer.status_code == (200 if stream else 400), answer.text
    assert error == {"type": "error", "error": {"type": "invalid_request_error", "message": echoed}}


# --- Claude Code as a newcomer runs it: no model flag, no model variable -----------------


def test_claude_code_with_its_own_default_model_names_completes_a_turn(
    claude_proxy: Proxy, claude_upstream: AnthropicStandIn, claude_code: Path, tmp_path: Path
) -> None:
    """`ANTHROPIC_BASE_URL=… ANTHROPIC_API_KEY=… claude`: Claude Code sends names such as
    `claude-opus-4-8` and a `claude-haiku-…` background model, which the upstream does
    not list; the built-in patterns route them to models it does."""
    home = tmp_path / "home"
    home.mkdir()
    env = claude_code_env(home, claude_proxy.url, claude_proxy.create_key("cc-default"), None)
    env["ANTHROPIC_CUSTOM_HEADERS"] = "x-standin-mode: text"  # text, although tools are sent
    said = claude_says(claude_code, env, tmp_path, claude_proxy)
    assert "Hello from claude-opus-4-5-thinking." in said
    sent = [
        r.json()["model"] for r in claude_upstream.received if r.path.startswith("/v1/messages")
    ]
    assert sent and set(sent) <= set(MODELS), sent  # nothing the upstream does not serve
    # The access lines show what Claude Code asked for and where it went.
    lines = r"model=(claude-[\w.-]+)->([\w.-]+)"  # written once each answer has ended
    asked = wait_for(lambda: re.findall(lines, claude_proxy.log()))
    assert any(a.startswith("claude-opus-") and a not in MODELS for a, _ in asked), asked
    assert all(routed in MODELS for _, routed in asked), asked

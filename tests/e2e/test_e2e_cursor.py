"""End to end: Cursor's Chat Completions for Claude-like model names (issue 19), through
real mitmdump.

The recorded shapes of tests/fixtures/cursor/ (see its README), sent by the openai SDK
as Cursor would send them, plain and streamed:

- over the Anthropic-only stand-in (`UPSTREAM_API=anthropic`): the system block array
  and the user part keep their `cache_control` in the Messages body, Anthropic's
  tool_choice objects arrive mapped, a tool-calling turn goes round, and empty
  `tool_calls` lists are left out; what the stand-in received is checked;
- over an OpenAI-only upstream (`UPSTREAM_API=openai`): the body is forwarded as the
  client sent it, `cache_control` and all (the proxy translates nothing there);
- over the real antigravity-claude-proxy (the real tier): the same bodies are answered,
  and the fake Google backend gets the system prompt and the tools;
- a body with neither `messages` nor `input` is 400 `missing_messages`, upstream or not.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.anthropic_standin import AnthropicStandIn
from tests.support.google_fake import Script
from tests.support.harness import Proxy, bearer, start_proxy
from tests.support.openai_standin import OpenAIStandIn
from tests.support.real_upstream import Antigravity

FIXTURES = Path(__file__).parent.parent / "fixtures" / "cursor"
EPHEMERAL = {"type": "ephemeral"}
CLAUDE = "claude-sonnet-4-5"


def fixture(name: str, stream: bool = True) -> dict[str, Any]:
    """A recorded body; Cursor streams, so `stream=False` takes the stream fields out."""
    body: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    if not stream:
        body.pop("stream", None)
        body.pop("stream_options", None)
    return body


@pytest.fixture(scope="module")
def claude_proxy(
    anthropic_only: AnthropicStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    running = start_proxy(
        tmp_path_factory.mktemp("cursor-over-claude"), anthropic_only.url, UPSTREAM_API="anthropic"
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def gpt_proxy(
    openai_only: OpenAIStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    running = start_proxy(
        tmp_path_factory.mktemp("cursor-over-gpt"), openai_only.url, UPSTREAM_API="openai"
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def real_proxy(
    antigravity_session: Antigravity, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    running = start_proxy(
        tmp_path_factory.mktemp("cursor-over-real"), antigravity_session.url, UPSTREAM_API="auto"
    )
    yield running
    running.stop()


def openai_client(proxy: Proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)


@dataclass
class Answer:
    """A Chat Completions answer, whole or put together from its chunks."""

    content: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    finish: list[str] = field(default_factory=list)
    usage: Any = None
    done: bool = True


def ask(proxy: Proxy, key: str, body: dict[str, Any]) -> Answer:
    """Send `body` with the openai SDK, as it is (the SDK forwards the Anthropic-shaped
    parts its types do not name), and read the answer, whole or streamed."""
    client = openai_client(proxy, key)
    if body.get("stream") is not True:
        reply = client.chat.completions.create(**copy.deepcopy(body))
        choice = reply.choices[0]
        calls = [c.model_dump() for c in choice.message.tool_calls or []]
        return Answer(choice.message.content or "", calls, [choice.finish_reason], reply.usage)
    answer = Answer()
    for chunk in client.chat.completions.create(**copy.deepcopy(body)):
        if chunk.usage is not None:
            answer.usage = chunk.usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        answer.content += delta.content or ""
        for piece in delta.tool_calls or []:
            if piece.index == len(answer.calls):
                answer.calls.append(
                    {"id": piece.id, "type": "function", "function": {"name": "", "arguments": ""}}
                )
            function = answer.calls[piece.index]["function"]
            function["name"] += (piece.function and piece.function.name) or ""
            function["arguments"] += (piece.function and piece.function.arguments) or ""
        if chunk.choices[0].finish_reason:
            answer.finish.append(chunk.choices[0].finish_reason)
    return answer


# --- over the Anthropic-only stand-in ----------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_claude_like_chat_keeps_cache_control_and_goes_round_a_tool_call(
    claude_proxy: Proxy, claude_upstream: AnthropicStandIn, stream: bool
) -> None:
    key_id, key = claude_proxy.new_key(f"cursor-claude-like-{stream}")
    body = fixture("claude_like_chat", stream)
    first = ask(claude_proxy, key, body)
    # Before issue 19: 400 on tool_choice {"type": "auto"}.
    assert first.finish == ["tool_calls"]
    [call] = first.calls
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "value of city"}
    assert first.usage is not None  # a plain answer's, and the stream asks for it
    received = claude_upstream.received[-1]
    assert received.path == "/v1/messages"
    sent = received.json()
    system = body["messages"][0]["content"][0]["text"]
    assert sent["system"] == [{"type": "text", "text": system, "cache_control": EPHEMERAL}]
    [turn] = sent["messages"]
    assert [block.get("cache_control") for block in turn["content"]] == [None, EPHEMERAL]
    assert sent["tool_choice"] == {"type": "auto"}
    assert [tool["name"] for tool in sent["tools"]] == ["get_weather", "read_file"]
    assert sent["max_tokens"] == 1024
    assert sent.get("stream", False) is stream

    # The next turn, as Cursor sends it: the tool result marked for the cache.
    body["messages"] += [
        {"role": "assistant", "content": first.content or None, "tool_calls": [call]},
        {
            "role": "tool",
            "tool_call_id": call["id"],
            "content": [{"type": "text", "text": "sunny, 21 C", "cache_control": EPHEMERAL}],
        },
    ]
    final = ask(claude_proxy, key, body)
    assert final.finish == ["stop"]
    assert final.content == "The tool said: sunny, 21 C"
    sent = claude_upstream.received[-1].json()
    result = sent["messages"][-1]["content"][0]
    assert result == {
        "type": "tool_result",
        "tool_use_id": call["id"],
        "content": "sunny, 21 C",
        "cache_control": EPHEMERAL,
    }
    assert claude_proxy.usage_rows(key_id, 2)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_empty_tool_calls_are_left_out(
    claude_proxy: Proxy, claude_upstream: AnthropicStandIn, stream: bool
) -> None:
    _, key = claude_proxy.new_key(f"cursor-empty-tool-calls-{stream}")
    answer = ask(claude_proxy, key, fixture("empty_tool_calls", stream))
    assert answer.content == f"Hello from {CLAUDE}."
    assert answer.finish == ["stop"]
    sent = claude_upstream.received[-1].json()
    assert [(m["role"], [b["text"] for b in m["content"]]) for m in sent["messages"]] == [
        ("user", ["Say hello."]),
        ("assistant", ["Hello!"]),
        ("user", ["Say it once more.", "And in French?"]),
    ]


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ({"type": "any"}, {"type": "any"}),
        ({"type": "tool", "name": "read_file"}, {"type": "tool", "name": "read_file"}),
        ({"type": "none"}, {"type": "none"}),
        ("required", {"type": "any"}),
        (
            {"type": "function", "function": {"name": "read_file"}},
            {"type": "tool", "name": "read_file"},
        ),
    ],
    ids=["any", "tool", "none", "required", "function"],
)
def test_every_tool_choice_form_reaches_the_upstream_mapped(
    claude_proxy: Proxy, claude_upstream: AnthropicStandIn, choice: Any, sent: dict[str, Any]
) -> None:
    _, key = claude_proxy.new_key("cursor-tool-choice")
    body = {**fixture("claude_like_chat", stream=False), "tool_choice": choice}
    answer = ask(claude_proxy, key, body)
    assert claude_upstream.received[-1].json()["tool_choice"] == sent
    if sent["type"] == "none":
        assert not answer.calls and answer.content == f"Hello from {CLAUDE}."
    else:
        names = [call["function"]["name"] for call in answer.calls]
        assert names == [sent.get("name", "get_weather")]


# --- over an OpenAI-only upstream: forwarded as sent -----------------------------------------


def test_cache_control_goes_to_an_openai_upstream_as_the_client_sent_it(
    gpt_proxy: Proxy, gpt_upstream: OpenAIStandIn
) -> None:
    """Nothing is translated for an upstream that speaks the client's API: the body is
    forwarded as the very bytes checked. An OpenAI-compatible gateway in front of Claude
    reads `cache_control`; one that does not know it answers for itself."""
    _, key = gpt_proxy.new_key("cursor-over-gpt")
    body = fixture("claude_like_chat")
    raw = json.dumps(body).encode()
    headers = {**bearer(key), "content-type": "application/json"}
    reply = httpx.post(f"{gpt_proxy.url}/v1/chat/completions", content=raw, headers=headers)
    assert reply.status_code == 200, reply.text
    received = gpt_upstream.received[-1]
    assert received.path == "/v1/chat/completions"
    assert received.body == raw


# --- a body in neither shape ------------------------------------------------------------------


@pytest.mark.parametrize("over", ["anthropic", "openai"])
@pytest.mark.parametrize(
    "body",
    [{"model": CLAUDE}, {"model": CLAUDE, "messages": None, "stream": True}],
    ids=["bare", "null-messages"],
)
def test_a_body_in_neither_shape_is_400_naming_both(
    request: pytest.FixtureRequest, over: str, body: dict[str, Any]
) -> None:
    proxy: Proxy = request.getfixturevalue("claude_proxy" if over == "anthropic" else "gpt_proxy")
    upstream = request.getfixturevalue("claude_upstream" if over == "anthropic" else "gpt_upstream")
    _, key = proxy.new_key("cursor-neither")
    # httpx: the openai SDK does not send a chat request without messages.
    reply = httpx.post(f"{proxy.url}/v1/chat/completions", json=body, headers=bearer(key))
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "missing_messages"
    assert "`messages`" in error["message"] and "`input`" in error["message"]
    assert upstream.received == [], "nothing of a refused body reaches the upstream"


def test_a_responses_shaped_body_is_not_refused_for_lack_of_messages(
    claude_proxy: Proxy, claude_upstream: AnthropicStandIn
) -> None:
    """The shape check leaves `input` bodies to the Responses route (issue 19, item 2)."""
    _, key = claude_proxy.new_key("cursor-input")
    body = {"model": CLAUDE, "input": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(f"{claude_proxy.url}/v1/chat/completions", json=body, headers=bearer(key))
    if reply.status_code != 200:
        assert reply.json()["error"]["code"] != "missing_messages"


# --- over the real antigravity-claude-proxy ---------------------------------------------------


def google_requests(antigravity: Antigravity) -> list[dict[str, Any]]:
    found = antigravity.fake.received
    return [r.json()["request"] for r in found if "generatecontent" in r.path.lower()]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_claude_like_chat_over_the_real_package(
    real_proxy: Proxy, antigravity: Antigravity, stream: bool
) -> None:
    antigravity.fake.on(
        "Paris", Script(text="", tool={"name": "get_weather", "args": {"city": "Paris"}})
    )
    _, key = real_proxy.new_key(f"cursor-real-{stream}")
    body = fixture("claude_like_chat", stream)
    first = ask(real_proxy, key, body)
    assert first.finish == ["tool_calls"]
    [call] = first.calls
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    [google] = google_requests(antigravity)
    system = body["messages"][0]["content"][0]["text"]
    # The package puts its own Antigravity prompt first; the client's is one part of it.
    assert system in [part["text"] for part in google["systemInstruction"]["parts"]]
    names = [f["name"] for t in google["tools"] for f in t["functionDeclarations"]]
    assert names == ["get_weather", "read_file"]
    body["messages"] += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"},
    ]
    final = ask(real_proxy, key, body)
    assert final.finish == ["stop"]
    assert final.content == "Hello from the fake Google backend."


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_empty_tool_calls_over_the_real_package(
    real_proxy: Proxy, antigravity: Antigravity, stream: bool
) -> None:
    _, key = real_proxy.new_key(f"cursor-real-empty-{stream}")
    answer = ask(real_proxy, key, fixture("empty_tool_calls", stream))
    assert answer.content == "Hello from the fake Google backend."
    [google] = google_requests(antigravity)
    assert [content["role"] for content in google["contents"]] == ["user", "model", "user"]

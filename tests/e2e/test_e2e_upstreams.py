"""End to end: which API the upstream speaks (UPSTREAM_API), quota-aware routing, model
drift, the raw chunks a Cursor-shaped client receives, and Claude Code over an
OpenAI-only upstream. Real mitmdump processes in front of the stand-ins.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.support.anthropic_standin import AnthropicStandIn
from tests.support.harness import ADMIN_SECRET, Proxy
from tests.support.harness import WEATHER_TOOL as WEATHER
from tests.support.openai_standin import OpenAIStandIn
from tests.support.real_upstream import claude_code_env, claude_says
from tests.support.standin import StandIn

ADMIN = {"x-admin-secret": ADMIN_SECRET}
HI = [{"role": "user", "content": "hi"}]
ALIAS = "cursor-pro-sonnet"
CLAUDE, GEMINI = "claude-sonnet-4-5", "gemini-3-flash"


def health(proxy: Proxy) -> dict[str, Any]:
    return dict(httpx.get(f"{proxy.url}/health", timeout=5).json())


def openai_client(proxy: Proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=proxy.create_key(), max_retries=0)


# --- UPSTREAM_API=auto ----------------------------------------------------------------


def test_auto_finds_an_anthropic_only_upstream_and_translates(
    make_proxy: Callable[..., Proxy], claude_upstream: AnthropicStandIn
) -> None:
    proxy = make_proxy(claude_upstream.url)  # UPSTREAM_API defaults to auto
    found = health(proxy)
    assert (found["upstream_api"], found["upstream_api_setting"]) == ("anthropic", "auto")
    assert "speaks anthropic" in proxy.log()
    probes = [r for r in claude_upstream.own_requests if r.method == "POST"]
    # The probe spends no tokens: two empty bodies, and nothing was answered as a message.
    assert sorted(r.path for r in probes) == ["/v1/chat/completions", "/v1/messages"]
    assert all(r.body == b"" for r in probes) and claude_upstream.reported == []
    answer = openai_client(proxy).chat.completions.create(model=GEMINI, messages=HI)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == f"Hello from {GEMINI}."
    assert claude_upstream.received[-1].path == "/v1/messages"


def test_auto_finds_an_openai_only_upstream_and_translates(
    make_proxy: Callable[..., Proxy], gpt_upstream: OpenAIStandIn
) -> None:
    proxy = make_proxy(gpt_upstream.url)
    assert health(proxy)["upstream_api"] == "openai"
    client = anthropic.Anthropic(base_url=proxy.url, api_key=proxy.create_key(), max_retries=0)
    message = client.messages.create(model="gpt-4o-mini", max_tokens=50, messages=HI)  # type: ignore[arg-type]
    assert message.content[0].text == "Hello from gpt-4o-mini."  # type: ignore[union-attr]
    assert gpt_upstream.received[-1].path == "/v1/chat/completions"


def test_auto_finds_a_both_api_upstream_and_passes_through(
    make_proxy: Callable[..., Proxy], upstream: StandIn
) -> None:
    proxy = make_proxy(upstream.url)  # tests/support/standin.py serves both endpoints
    assert health(proxy)["upstream_api"] == "both"
    upstream.reset()
    answer = openai_client(proxy).chat.completions.create(model=GEMINI, messages=HI)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == f"hello from {GEMINI}"
    assert [r.path for r in upstream.received] == ["/v1/chat/completions"]


# --- quota-aware routing ------------------------------------------------------------------


def routed_models(upstream: AnthropicStandIn, since: int) -> list[str]:
    return [r.json()["model"] for r in upstream.received[since:] if r.path == "/v1/messages"]


def ask(client: openai.OpenAI, model: str, stream: bool) -> str:
    if stream:
        chunks = client.chat.completions.create(model=model, messages=HI, stream=True)  # type: ignore[arg-type]
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    answer = client.chat.completions.create(model=model, messages=HI)  # type: ignore[arg-type]
    return answer.choices[0].message.content or ""


@pytest.mark.parametrize("in_stream", [False, True])
def test_quota_moves_the_alias_to_its_other_target_until_the_reset(
    make_proxy: Callable[..., Proxy], claude_upstream: AnthropicStandIn, in_stream: bool
) -> None:
    proxy = make_proxy(claude_upstream.url, UPSTREAM_API="anthropic")
    client = openai_client(proxy)
    claude_upstream.exhaust(CLAUDE, reset="4s", in_stream=in_stream)
    # Cursor's alias sends 20 % to claude: ask until one lands there and runs out.
    for _ in range(100):
        before = len(claude_upstream.received)
        try:
            ask(client, ALIAS, in_stream)
        except openai.APIError as exc:
            assert routed_models(claude_upstream, before) == [CLAUDE]
            assert exc.code == "upstream_quota_exhausted"
            if not in_stream:
                assert isinstance(exc, openai.RateLimitError)
                assert exc.response.headers["retry-after"] == "4"
            break
        assert routed_models(claude_upstream, before) == [GEMINI]
    else:
        pytest.fail("no request reached claude")
    cooling = health(proxy)["cooldowns"]
    assert [c["model"] for c in cooling] == [CLAUDE] and 0 < cooling[0]["seconds_left"] <= 4
    metrics = httpx.get(f"{proxy.url}/metrics", headers=ADMIN).text
    assert f'apipod_model_cooldown{{model="{CLAUDE}"}}' in metrics
    # The next 20 alias requests all reach gemini, none reaches claude.
    before = len(claude_upstream.received)
    answers = [ask(client, ALIAS, in_stream) for _ in range(20)]
    assert routed_models(claude_upstream, before) == [GEMINI] * 20
    assert set(answers) == {f"Hello from {GEMINI}."}
    # Naming the cooled model directly still reaches the upstream, which decides.
    claude_upstream.restore(CLAUDE)
    assert ask(client, CLAUDE, in_stream) == f"Hello from {CLAUDE}."
    # After the reset the alias sends claude traffic again.
    deadline = time.monotonic() + 15
    while health(proxy)["cooldowns"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert health(proxy)["cooldowns"] == []
    before = len(claude_upstream.received)
    for _ in range(100):
        ask(client, ALIAS, in_stream)
        if CLAUDE in routed_models(claude_upstream, before):
            break
    assert CLAUDE in routed_models(claude_upstream, before)
    assert "upstream quota for claude-sonnet-4-5 is used up" in proxy.log()


def test_an_alias_whose_targets_all_cool_down_is_answered_without_the_upstream(
    make_proxy: Callable[..., Proxy], claude_upstream: AnthropicStandIn
) -> None:
    proxy = make_proxy(claude_upstream.url, UPSTREAM_API="anthropic")
    client = openai_client(proxy)
    claude_upstream.exhaust(CLAUDE, reset="30s")
    claude_upstream.exhaust(GEMINI, reset="50s")
    for _ in range(100):
        if {c["model"] for c in health(proxy)["cooldowns"]} == {CLAUDE, GEMINI}:
            break
        with pytest.raises(openai.RateLimitError):
            ask(client, ALIAS, False)
    before = len(claude_upstream.received)
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client, ALIAS, False)
    assert len(claude_upstream.received) == before  # answered at once, upstream untouched
    assert caught.value.code == "upstream_quota_exhausted"
    assert 25 <= int(caught.value.response.headers["retry-after"]) <= 30  # the earliest reset
    # Anthropic clients of the same alias get Anthropic's rate_limit_error.
    anthropic_client = anthropic.Anthropic(
        base_url=proxy.url, api_key=proxy.create_key(), max_retries=0
    )
    with pytest.raises(anthropic.RateLimitError) as refused:
        anthropic_client.messages.create(model=ALIAS, max_tokens=50, messages=HI)  # type: ignore[arg-type]
    assert refused.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert len(claude_upstream.received) == before


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_clients_get_rate_limit_error_for_a_passthrough_quota_answer(
    make_proxy: Callable[..., Proxy], claude_upstream: AnthropicStandIn, stream: bool
) -> None:
    proxy = make_proxy(claude_upstream.url, UPSTREAM_API="anthropic")
    client = anthropic.Anthropic(base_url=proxy.url, api_key=proxy.create_key(), max_retries=0)
    claude_upstream.exhaust(GEMINI, reset="1m0s", in_stream=stream, prefixed=True)
    if not stream:
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(model=GEMINI, max_tokens=50, messages=HI)  # type: ignore[arg-type]
        assert caught.value.response.headers["retry-after"] == "60"
        assert caught.value.body["error"]["code"] == "upstream_quota_exhausted"  # type: ignore[index]
    else:
        stream_call = client.messages.stream(model=GEMINI, max_tokens=50, messages=HI)  # type: ignore[arg-type]
        with pytest.raises(anthropic.APIError) as raised, stream_call as events:
            events.get_final_message()
        assert "rate_limit_error" in str(raised.value.body or raised.value.message)
    assert [c["model"] for c in health(proxy)["cooldowns"]] == [GEMINI]


# --- what a Cursor-shaped client receives ---------------------------------------------------


def stream_raw(proxy: Proxy, key: str, body: dict[str, Any]) -> list[dict[str, Any] | str]:
    """The `data:` payloads of a streamed answer, as the client received them."""
    events: list[dict[str, Any] | str] = []
    with httpx.stream(
        "POST",
        f"{proxy.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json=body,
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.mark.parametrize("include_usage", [False, True])
def test_the_chunk_sequence_of_a_translated_stream(
    make_proxy: Callable[..., Proxy], claude_upstream: AnthropicStandIn, include_usage: bool
) -> None:
    claude_upstream.cache_read_tokens = 10
    proxy = make_proxy(claude_upstream.url, UPSTREAM_API="anthropic")
    key = proxy.create_key()
    body: dict[str, Any] = {"model": ALIAS, "stream": True, "messages": HI, "tools": [WEATHER]}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    events = stream_raw(proxy, key, body)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["model"] == ALIAS for c in chunks)
    calls = [
        call
        for c in chunks
        if c["choices"]
        for call in c["choices"][0]["delta"].get("tool_calls") or []
    ]
    assert calls[0]["id"].startswith("toolu_") and calls[0]["function"]["name"] == "get_weather"
    arguments = "".join(call["function"]["arguments"] for call in calls)
    assert json.loads(arguments) == {"city": "value of city"} and len(calls) > 2  # in pieces
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls" and set(finishes[:-1]) == {None}
    reported = claude_upstream.reported[-1]
    if include_usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["prompt_tokens"] == 35
        assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 10}
        assert chunks[-1]["usage"]["completion_tokens"] == reported.output_tokens
        assert all(c["usage"] is None for c in chunks[:-1])
    else:  # a client that did not ask must not get the usage chunk
        assert all(c["choices"] for c in chunks) and all("usage" not in c for c in chunks)
    # Counted exactly either way, cache reads included (the keys CLI reads the database).
    deadline = time.monotonic() + 10
    while not (rows := proxy.usage_from_cli()) and time.monotonic() < deadline:
        time.sleep(0.3)
    [row] = rows
    assert (row["prompt_tokens"], row["completion_tokens"]) == (35, reported.output_tokens)
    with contextlib.closing(sqlite3.connect(proxy.database)) as db:
        assert db.execute("SELECT SUM(cached_tokens) FROM usage").fetchone()[0] == 10


def test_a_translation_refusal_is_400_in_the_clients_shape(
    make_proxy: Callable[..., Proxy], claude_upstream: AnthropicStandIn
) -> None:
    proxy = make_proxy(claude_upstream.url, UPSTREAM_API="anthropic")
    before = len(claude_upstream.received)
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(proxy).chat.completions.create(model=GEMINI, messages=HI, n=2)  # type: ignore[arg-type]
    assert caught.value.code == "unsupported_by_upstream"
    assert len(claude_upstream.received) == before


# --- model drift -------------------------------------------------------------------------------


def test_routing_targets_the_upstream_does_not_list_are_warned_about(
    make_proxy: Callable[..., Proxy], claude_upstream: AnthropicStandIn, tmp_path: Path
) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text(
        '[aliases.team]\ntargets = { "claude-sonnet-4-6" = 1, "gemini-3-flash" = 1 }\n'
    )
    proxy = make_proxy(claude_upstream.url, ROUTES_FILE=str(routes))
    assert health(proxy)["unlisted_models"] == ["claude-sonnet-4-6"]
    assert proxy.log().count("routing target claude-sonnet-4-6 is not listed") == 1
    routes.write_text('[renames]\n"old" = "gemini-9"\n')
    deadline = time.monotonic() + 15
    while health(proxy)["unlisted_models"] != ["gemini-9"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert health(proxy)["unlisted_models"] == ["gemini-9"]
    assert "routing target gemini-9 is not listed" in proxy.log()


# --- Claude Code over an OpenAI-only upstream ------------------------------------------------


def test_claude_code_works_over_an_openai_only_upstream(
    make_proxy: Callable[..., Proxy],
    gpt_upstream: OpenAIStandIn,
    claude_code: Path,
    tmp_path: Path,
) -> None:
    proxy = make_proxy(gpt_upstream.url, UPSTREAM_API="openai")
    home = tmp_path / "home"
    home.mkdir()
    env = claude_code_env(home, proxy.url, proxy.create_key("claude-code"), "claude-sonnet-4-5")
    # The stand-in answers text although Claude Code sends its tools.
    env["ANTHROPIC_CUSTOM_HEADERS"] = "x-standin-mode: text"
    assert "Hello from claude-sonnet-4-5." in claude_says(claude_code, env, tmp_path, proxy)
    chats = [r for r in gpt_upstream.received if r.path == "/v1/chat/completions"]
    assert chats, "Claude Code's request never reached the upstream"
    sent = chats[-1].json()
    assert sent["model"] == "claude-sonnet-4-5" and sent["messages"][-1]["role"] == "user"
    assert not any(r.path.startswith("/v1/messages") for r in gpt_upstream.received)

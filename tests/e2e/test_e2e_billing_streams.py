"""End to end: streams are billed as the upstream reported them, merged per field, and a
stream cut before its usage is billed for what was delivered (issue 17, items 1 to 3).

The Anthropic stand-in is asked for the real upstream's usage shapes
(`x-standin-usage-shape: real`): `message_start` carries `input_tokens` 20 and
`cache_read_input_tokens` 5; `message_delta` carries `output_tokens` 3 and both cache
fields, and no `input_tokens`. That is a prompt of 25 (5 cached) and 3 completion
tokens, which a per-event sum got wrong as a prompt of 5.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.support.anthropic_standin import AnthropicStandIn
from tests.support.harness import ADMIN_SECRET, Proxy, bearer, chat_stream_chunks, start_proxy
from tests.support.standin import StandIn

ADMIN = {"x-admin-secret": ADMIN_SECRET}
CLAUDE = "claude-sonnet-4-5"
THINKING = "claude-sonnet-4-5-thinking"
GEMINI = "gemini-3-flash"
#: USD per million tokens: a prompt of 25 (5 cached) and 3 completion tokens cost
#: (20 * 1 + 5 * 0.5 + 3 * 2) / 1e6.
PRICES = f"""
[prices."{CLAUDE}"]
input = 1.0
output = 2.0
cached_input = 0.5

[prices."{THINKING}"]
input = 1.0
output = 2.0
cached_input = 0.5

[prices."{GEMINI}"]
input = 1.0
output = 2.0
cached_input = 0.5
"""
REAL_COST = (20 * 1 + 5 * 0.5 + 3 * 2) / 1e6
REAL_SHAPE = {
    "x-standin-usage-shape": "real",
    "x-standin-input-tokens": "20",
    "x-standin-cache-read": "5",
}
HI = [{"role": "user", "content": "hi"}]


def routes(tmp_path: Path) -> str:
    path = tmp_path / "routes.toml"
    path.write_text(PRICES)
    return str(path)


@pytest.fixture(scope="module")
def claude(
    anthropic_only: AnthropicStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """A priced proxy in front of the Anthropic-only stand-in (UPSTREAM_API=anthropic)."""
    workdir = tmp_path_factory.mktemp("billing-claude")
    running = start_proxy(
        workdir, anthropic_only.url, UPSTREAM_API="anthropic", ROUTES_FILE=routes(workdir)
    )
    yield running
    running.stop()


def logged(proxy: Proxy, key_id: int, count: int = 1) -> list[dict[str, Any]]:
    """The key's request log rows (GET /admin/requests), once `count` are written."""
    deadline = time.monotonic() + 10
    while True:
        answer = httpx.get(f"{proxy.url}/admin/requests?key_id={key_id}", headers=ADMIN)
        rows = answer.json()["data"]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def spend(proxy: Proxy, key: str) -> float:
    return float(httpx.get(f"{proxy.url}/account", headers=bearer(key)).json()["spend"])


def chat_chunks(
    proxy: Proxy, key: str, body: dict[str, Any], headers: dict[str, str]
) -> list[dict[str, Any]]:
    return chat_stream_chunks(proxy, {**bearer(key), **headers}, body)


# --- item 1: merged per field ----------------------------------------------------------


def test_a_streamed_messages_request_is_billed_prompt_25_cached_5_completion_3(
    claude: Proxy, claude_upstream: AnthropicStandIn
) -> None:
    key_id, key = claude.new_key("real-shape-messages")
    client = anthropic.Anthropic(
        base_url=claude.url, api_key=key, max_retries=0, default_headers=REAL_SHAPE
    )
    with client.messages.stream(model=CLAUDE, max_tokens=100, messages=HI) as stream:
        message = stream.get_final_message()
    assert message.usage.output_tokens == 3
    [row] = claude.usage_rows(key_id, 1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (25, 3)
    assert row["estimated_requests"] == 0
    [entry] = logged(claude, key_id)
    assert (entry["prompt_tokens"], entry["cached_tokens"], entry["completion_tokens"]) == (
        25,
        5,
        3,
    )
    assert entry["estimated"] is False
    assert entry["cost"] == pytest.approx(REAL_COST)
    assert spend(claude, key) == pytest.approx(REAL_COST)


def test_a_translated_stream_shows_and_bills_prompt_25_cached_5_completion_3(
    claude: Proxy, claude_upstream: AnthropicStandIn
) -> None:
    key_id, key = claude.new_key("real-shape-chat")
    body = {
        "model": CLAUDE,
        "messages": HI,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = chat_chunks(claude, key, body, REAL_SHAPE)
    [shown] = [c["usage"] for c in chunks if c.get("usage")]
    assert (shown["prompt_tokens"], shown["completion_tokens"]) == (25, 3)
    assert shown["prompt_tokens_details"]["cached_tokens"] == 5
    [row] = claude.usage_rows(key_id, 1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (25, 3)
    [entry] = logged(claude, key_id)
    assert (entry["prompt_tokens"], entry["cached_tokens"], entry["completion_tokens"]) == (
        25,
        5,
        3,
    )
    assert entry["estimated"] is False
    assert spend(claude, key) == pytest.approx(REAL_COST)


# --- item 2: reasoning tokens ------------------------------------------------------------


def thinking_of(model: str) -> str:
    return f"The user wants an answer from {model}."  # what the stand-in thinks


def test_thinking_that_passed_through_is_kept_as_estimated_reasoning_tokens(
    claude: Proxy, claude_upstream: AnthropicStandIn
) -> None:
    """The real upstream's output_tokens leaves the thinking out; the proxy counts it
    apart (characters / 4, rounded up), and by default does not bill it."""
    key_id, key = claude.new_key("reasoning")
    body = {"model": THINKING, "messages": HI, "stream": True}
    chunks = chat_chunks(claude, key, body, REAL_SHAPE)
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in chunks)
    assert reasoning == thinking_of(THINKING)
    expected = math.ceil(len(reasoning) / 4)
    [entry] = logged(claude, key_id)
    assert (entry["reasoning_tokens"], entry["reasoning_estimated"]) == (expected, True)
    assert entry["completion_tokens"] == 3  # the reported figure, thinking left out
    assert entry["estimated"] is False
    [row] = claude.usage_rows(key_id, 1)
    assert (row["reasoning_tokens"], row["estimated_reasoning_tokens"]) == (0, expected)
    assert spend(claude, key) == pytest.approx(REAL_COST)  # BILL_REASONING_ESTIMATE=off


def test_bill_reasoning_estimate_on_bills_it_at_the_output_price(
    anthropic_only: AnthropicStandIn, tmp_path: Path
) -> None:
    running = start_proxy(
        tmp_path / "proxy",
        anthropic_only.url,
        UPSTREAM_API="anthropic",
        ROUTES_FILE=routes(tmp_path),
        BILL_REASONING_ESTIMATE="on",
    )
    try:
        key_id, key = running.new_key("reasoning-billed")
        client = anthropic.Anthropic(
            base_url=running.url, api_key=key, max_retries=0, default_headers=REAL_SHAPE
        )
        with client.messages.stream(model=THINKING, max_tokens=100, messages=HI) as stream:
            stream.get_final_message()
        expected = math.ceil(len(thinking_of(THINKING)) / 4)
        [entry] = logged(running, key_id)
        assert (entry["reasoning_tokens"], entry["reasoning_estimated"]) == (expected, True)
        assert spend(running, key) == pytest.approx(REAL_COST + expected * 2 / 1e6)
    finally:
        running.stop()


# --- item 3: a stream cut before its usage -----------------------------------------------


def hang_up_after(
    proxy: Proxy, path: str, key: str, body: dict[str, Any], headers: dict[str, str], seen: str
) -> str:
    """Stream, read until a line holding `seen`, hang up; return what was read."""
    read = ""
    with httpx.stream(
        "POST", f"{proxy.url}{path}", headers={**bearer(key), **headers}, json=body, timeout=30
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            read += line + "\n"
            if seen in line:
                break
    return read


def estimated_entry(proxy: Proxy, key_id: int) -> dict[str, Any]:
    [entry] = logged(proxy, key_id)
    assert entry["status"] == 499, entry
    return entry


def test_messages_stream_cut_before_message_delta_bills_what_was_delivered(
    claude: Proxy, claude_upstream: AnthropicStandIn
) -> None:
    key_id, key = claude.new_key("abort-messages")
    body = {"model": CLAUDE, "max_tokens": 100, "messages": HI, "stream": True}
    pause = {**REAL_SHAPE, "x-standin-pause": "3"}
    read = hang_up_after(claude, "/v1/messages", key, body, pause, '"content_block_stop"')
    assert "message_delta" not in read
    entry = estimated_entry(claude, key_id)
    text = f"Hello from {CLAUDE}."
    # The prompt came in message_start (20 + 5 cached); the output is the text delivered.
    assert (entry["prompt_tokens"], entry["cached_tokens"]) == (25, 5)
    assert entry["completion_tokens"] == math.ceil(len(text) / 4)
    assert entry["estimated"] is True
    assert spend(claude, key) > 0
    [row] = claude.usage_rows(key_id, 1)
    assert row["estimated_requests"] == 1


def test_translated_stream_cut_after_the_finish_chunk_is_billed_in_full(
    claude: Proxy, claude_upstream: AnthropicStandIn
) -> None:
    """The finish chunk comes from message_delta, which carried the usage: the client
    hung up before its usage chunk, the proxy had the upstream's figures."""
    key_id, key = claude.new_key("abort-chat-finish")
    body = {
        "model": CLAUDE,
        "messages": HI,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    pause = {**REAL_SHAPE, "x-standin-pause": "3", "x-standin-pause-before": "message_stop"}
    read = hang_up_after(claude, "/v1/chat/completions", key, body, pause, '"finish_reason":"stop"')
    assert '"prompt_tokens"' not in read
    entry = estimated_entry(claude, key_id)
    assert (entry["prompt_tokens"], entry["cached_tokens"], entry["completion_tokens"]) == (
        25,
        5,
        3,
    )
    assert spend(claude, key) == pytest.approx(REAL_COST)


def test_translated_stream_cut_before_its_usage_bills_what_was_delivered(
    claude: Proxy, claude_upstream: AnthropicStandIn
) -> None:
    key_id, key = claude.new_key("abort-chat")
    body = {"model": THINKING, "messages": HI, "stream": True}
    pause = {**REAL_SHAPE, "x-standin-pause": "3"}
    text = f"Hello from {THINKING}."
    read = hang_up_after(
        claude, "/v1/chat/completions", key, body, pause, f'"content":"{text.split()[-1]}"'
    )
    assert 'finish_reason":"stop' not in read
    entry = estimated_entry(claude, key_id)
    assert (entry["prompt_tokens"], entry["cached_tokens"]) == (25, 5)
    delivered = len(text) + len(thinking_of(THINKING))
    assert entry["completion_tokens"] == math.ceil(delivered / 4)
    assert entry["estimated"] is True
    assert spend(claude, key) > 0


def test_openai_passthrough_stream_cut_before_its_usage_bills_what_was_delivered(
    standin: StandIn, make_proxy: Any, tmp_path: Path
) -> None:
    priced = make_proxy(standin.url, ROUTES_FILE=routes(tmp_path))
    key_id, key = priced.new_key("abort-openai")
    body = {
        "model": GEMINI,
        "messages": HI,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    pause = {"x-standin-usage-pause": "3"}
    read = hang_up_after(
        priced, "/v1/chat/completions", key, body, pause, '"finish_reason": "stop"'
    )
    assert '"prompt_tokens"' not in read
    entry = estimated_entry(priced, key_id)
    contents = [
        json.loads(line.removeprefix("data: "))["choices"][0]["delta"].get("content", "")
        for line in read.splitlines()
        if line.startswith("data: ")
    ]
    assert entry["completion_tokens"] == math.ceil(len("".join(contents)) / 4)
    # No usage at all: the prompt is estimated from the request body's size.
    sizes = {len(json.dumps(body)), len(json.dumps(body, separators=(",", ":")))}
    assert entry["prompt_tokens"] in {math.ceil(size / 4) for size in sizes}
    assert entry["estimated"] is True
    assert spend(priced, key) > 0

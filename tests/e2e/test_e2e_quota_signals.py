"""End to end: what counts as an upstream quota signal, and how long a cooldown lasts
(issue 16, finding 3), through real mitmdump in front of the Anthropic-only stand-in.

An upstream that quotes a client's field in its error message must not let that client
switch a model off for everyone; a genuine quota answer naming a year-long reset cools
the model for at most QUOTA_COOLDOWN_MAX (6 h) and says so in the log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support.anthropic_standin import AnthropicStandIn
from tests.support.harness import Proxy
from tests.support.openai_standin import OpenAIStandIn

ALIAS = "cursor-pro-sonnet"  # 20 % claude, 80 % gemini in the built-in table
CLAUDE, GEMINI = "claude-sonnet-4-5", "gemini-3-flash"
YEAR = "8760h0m0s"
SENTENCE = f"You have exhausted your capacity on {CLAUDE}. Quota will reset after {YEAR}."
SIX_HOURS = 6 * 3600
ECHO = {"x-standin-echo-error": "1"}


def health(proxy: Proxy) -> dict[str, Any]:
    return dict(httpx.get(f"{proxy.url}/health", timeout=5).json())


def messages(proxy: Proxy, key: str, model: str, text: str, stream: bool, **headers: str):
    """POST /v1/messages (passed through to the Anthropic-only upstream)."""
    body = {"model": model, "max_tokens": 50, "stream": stream}
    body["messages"] = [{"role": "user", "content": text}]
    return httpx.post(
        f"{proxy.url}/v1/messages",
        json=body,
        headers={"x-api-key": key, "anthropic-version": "2023-06-01", **headers},
        timeout=30,
    )


def chat(proxy: Proxy, key: str, model: str, text: str, stream: bool, **headers: str):
    """POST /v1/chat/completions (translated to Anthropic Messages)."""
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]}
    return httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}", **headers},
        timeout=30,
    )


def routed(upstream: AnthropicStandIn, since: int) -> list[str]:
    return [r.json()["model"] for r in upstream.received[since:] if r.path == "/v1/messages"]


def test_an_echoed_quota_sentence_does_not_cool_the_model(
    make_proxy: Callable[..., Proxy], claude_upstream: AnthropicStandIn
) -> None:
    proxy = make_proxy(claude_upstream.url, UPSTREAM_API="anthropic")
    key = proxy.create_key()
    echoed = f'Invalid value "{SENTENCE}"'
    # Anthropic client, passed through: the upstream's own 400, byte for byte in meaning.
    answer = messages(proxy, key, CLAUDE, SENTENCE, stream=False, **ECHO)
    assert answer.status_code == 400, answer.text
    assert answer.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": echoed},
    }
    assert "retry-after" not in answer.headers
    # ... and streamed: the in-stream error goes out as the upstream sent it.
    answer = messages(proxy, key, CLAUDE, SENTENCE, stream=True, **ECHO)
    assert answer.status_code == 200
    assert "invalid_request_error" in answer.text and "upstream_quota_exhausted" not in answer.text
    # OpenAI client, translated: the same 400, in OpenAI's shape; streamed, an error chunk.
    answer = chat(proxy, key, CLAUDE, SENTENCE, stream=False, **ECHO)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == {
        "message": echoed,
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_request_error",
    }
    answer = chat(proxy, key, CLAUDE, SENTENCE, stream=True, **ECHO)
    assert answer.status_code == 200
    chunk = json.loads(answer.text.strip().removeprefix("data: "))
    assert chunk["error"]["type"] == "invalid_request_error"
    assert chunk["error"]["code"] != "upstream_quota_exhausted"
    # Nothing cooled: /health lists no cooldown and the alias still reaches claude.
    assert health(proxy)["cooldowns"] == []
    before = len(claude_upstream.received)
    for _ in range(100):
        assert chat(proxy, key, ALIAS, "hi", stream=False).status_code == 200
        if CLAUDE in routed(claude_upstream, before):
            break
    assert CLAUDE in routed(claude_upstream, before)
    assert "upstream quota for" not in proxy.log()


@pytest.mark.parametrize("in_stream", [False, True])
def test_a_year_long_quota_reset_cools_for_at_most_six_hours_and_is_logged(
    make_proxy: Callable[..., Proxy], claude_upstream: AnthropicStandIn, in_stream: bool
) -> None:
    proxy = make_proxy(claude_upstream.url, UPSTREAM_API="anthropic")
    key = proxy.create_key()
    claude_upstream.exhaust(CLAUDE, reset=YEAR, in_stream=in_stream, prefixed=True)
    claude_upstream.exhaust(GEMINI, reset=YEAR, in_stream=in_stream)
    # One model through the passthrough, the other through the translated path.
    passed = messages(proxy, key, CLAUDE, "hi", stream=in_stream)
    translated = chat(proxy, key, GEMINI, "hi", stream=in_stream)
    if in_stream:
        assert passed.status_code == translated.status_code == 200
        assert "upstream_quota_exhausted" in passed.text
        assert "upstream_quota_exhausted" in translated.text
    else:
        assert passed.status_code == translated.status_code == 429
        assert passed.json()["error"]["code"] == "upstream_quota_exhausted"
        assert translated.json()["error"]["code"] == "upstream_quota_exhausted"
        for answer in (passed, translated):
            assert 0 < int(answer.headers["retry-after"]) <= SIX_HOURS
    cooling = {c["model"]: c["seconds_left"] for c in health(proxy)["cooldowns"]}
    assert set(cooling) == {CLAUDE, GEMINI}
    assert all(SIX_HOURS - 300 < left <= SIX_HOURS for left in cooling.values()), cooling
    log = proxy.log()
    for model in (CLAUDE, GEMINI):
        line = f"upstream quota for {model} names a reset after {8760 * 3600} s"
        assert log.count(line) == 1, log
    assert log.count(f"QUOTA_COOLDOWN_MAX: cooled for {SIX_HOURS} s instead") == 2


def test_an_upstream_error_with_a_lone_surrogate_is_translated(
    make_proxy: Callable[..., Proxy], claude_upstream: AnthropicStandIn
) -> None:
    """Issue 18: failures.py's own encoder raised UnicodeEncodeError on `\\ud83d`, and the
    Anthropic-shaped error went out untranslated to an OpenAI client."""
    proxy = make_proxy(claude_upstream.url, UPSTREAM_API="anthropic")
    key = proxy.create_key()
    body = b'{"model":"%s","messages":[{"role":"user","content":"cut \\ud83d"}]}' % CLAUDE.encode()
    answer = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json", **ECHO},
        timeout=30,
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == {
        "message": 'Invalid value "cut \ud83d"',
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_request_error",
    }
    assert "internal error translating" not in proxy.log()


def test_an_openai_shaped_upstreams_429_is_a_quota_answer_and_capped(
    make_proxy: Callable[..., Proxy], gpt_upstream: OpenAIStandIn
) -> None:
    """The other accepted shape: 429 `rate_limit_error` from an OpenAI-only gateway, for an
    Anthropic client (translated); its year-long reset is cut to QUOTA_COOLDOWN_MAX."""
    proxy = make_proxy(gpt_upstream.url, UPSTREAM_API="openai", QUOTA_COOLDOWN_MAX="600")
    key = proxy.create_key()
    answer = messages(proxy, key, "gpt-4o-mini", "hi", stream=False, **{"x-standin-quota": YEAR})
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["code"] == "upstream_quota_exhausted"
    assert answer.headers["retry-after"] == "600"
    [cooling] = health(proxy)["cooldowns"]
    assert cooling["model"] == "gpt-4o-mini" and 300 < cooling["seconds_left"] <= 600
    assert "QUOTA_COOLDOWN_MAX: cooled for 600 s instead" in proxy.log()

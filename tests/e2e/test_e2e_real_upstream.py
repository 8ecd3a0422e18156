"""End to end against the real upstream: the proxy (real mitmdump, UPSTREAM_API=auto)
in front of the real antigravity-claude-proxy 2.0.4 from npm, run offline in front of
the fake Google backend (tests/support/google_fake.py, tests/support/real_upstream.py).

The openai SDK (translated to Messages), the anthropic SDK (passthrough) and Claude
Code; plain, streamed and tool-calling requests; quota errors; budgets; and what the
proxy records of one streamed answer of 25 prompt tokens (5 cached) and 3 completion
tokens, issue 17's headline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.support.google_fake import SIGNATURE, Script
from tests.support.harness import (
    ADMIN_SECRET,
    WEATHER_TOOL,
    WEATHER_TOOL_ANTHROPIC,
    Proxy,
    bearer,
    start_proxy,
    wait_for,
)
from tests.support.real_upstream import ACCOUNT_EMAIL, Antigravity, claude_code_env, claude_says

ADMIN = {"x-admin-secret": ADMIN_SECRET}
CLAUDE = "claude-sonnet-4-5"
THINKING = "claude-sonnet-4-5-thinking"
#: USD per million tokens.
PRICES = f"""
[prices."{CLAUDE}"]
input = 3.0
output = 15.0
cached_input = 0.3

[prices."{THINKING}"]
input = 3.0
output = 15.0
cached_input = 0.3
"""
#: The headline answer: 25 prompt tokens of which 5 cached, 3 completion tokens.
HEADLINE = Script(prompt_tokens=25, cached_tokens=5, completion_tokens=3)
HEADLINE_COST = (20 * 3.0 + 5 * 0.3 + 3 * 15.0) / 1e6
HI = [{"role": "user", "content": "hi"}]
TEXT = "Hello from the fake Google backend."


@pytest.fixture(scope="module")
def real_proxy(
    antigravity_session: Antigravity, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """The proxy in front of the real package, the upstream API detected by itself."""
    workdir = tmp_path_factory.mktemp("real-proxy")
    routes = workdir / "routes.toml"
    routes.write_text(PRICES)
    running = start_proxy(
        workdir,
        antigravity_session.url,
        UPSTREAM_API="auto",
        ROUTES_FILE=str(routes),
    )
    yield running
    running.stop()


def openai_client(proxy: Proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)


def anthropic_client(proxy: Proxy, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key=key, max_retries=0)


def logged(proxy: Proxy, key_id: int, count: int = 1) -> list[dict[str, Any]]:
    def rows() -> list[dict[str, Any]]:
        response = httpx.get(f"{proxy.url}/admin/requests?key_id={key_id}&limit=100", headers=ADMIN)
        found = response.json()["data"]
        return found if len(found) >= count else []

    return wait_for(rows)


def recorded(proxy: Proxy, key_id: int) -> tuple[int, int, int]:
    """(prompt, cached, completion) of the key's one request, in the request log."""
    [row] = logged(proxy, key_id)
    return row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]


def test_the_proxy_detects_the_real_package_as_anthropic(real_proxy: Proxy) -> None:
    health = httpx.get(f"{real_proxy.url}/health").json()
    assert health["upstream_api"] == "anthropic", health


# --- issue 17's headline: 25 prompt (5 cached), 3 completion -------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_openai_sdk_usage_is_recorded_and_billed_as_the_upstream_reported(
    real_proxy: Proxy, antigravity: Antigravity, stream: bool
) -> None:
    antigravity.fake.default = HEADLINE
    key_id, key = real_proxy.new_key(f"headline-openai-{stream}")
    client = openai_client(real_proxy, key)
    if stream:
        chunks = list(
            client.chat.completions.create(
                model=CLAUDE,
                messages=HI,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        [usage] = [c.usage for c in chunks if c.usage]
    else:
        answer = client.chat.completions.create(model=CLAUDE, messages=HI)  # type: ignore[arg-type]
        text, usage = answer.choices[0].message.content or "", answer.usage
    assert text == TEXT
    assert usage is not None
    details = usage.prompt_tokens_details
    shown = (usage.prompt_tokens, details.cached_tokens if details else 0, usage.completion_tokens)
    assert shown == (25, 5, 3), "what the client was shown"
    assert recorded(real_proxy, key_id) == (25, 5, 3), "what the request log recorded"
    [row] = logged(real_proxy, key_id)
    assert row["cost"] == pytest.approx(HEADLINE_COST)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_anthropic_sdk_usage_is_recorded_and_billed_as_the_upstream_reported(
    real_proxy: Proxy, antigravity: Antigravity, stream: bool
) -> None:
    antigravity.fake.default = HEADLINE
    key_id, key = real_proxy.new_key(f"headline-anthropic-{stream}")
    client = anthropic_client(real_proxy, key)
    if stream:
        with client.messages.stream(model=CLAUDE, max_tokens=100, messages=HI) as events:  # type: ignore[arg-type]
            message = events.get_final_message()
    else:
        message = client.messages.create(model=CLAUDE, max_tokens=100, messages=HI)  # type: ignore[arg-type]
    assert message.content[0].type == "text" and message.content[0].text == TEXT
    # Passthrough: the client sees the upstream's own figures.
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (20, 5)
    assert message.usage.output_tokens == 3
    assert recorded(real_proxy, key_id) == (25, 5, 3), "what the request log recorded"
    [row] = logged(real_proxy, key_id)
    assert row["cost"] == pytest.approx(HEADLINE_COST)


# --- tools and thinking ----------------------------------------------------------------------

WEATHER_CALL = Script(text="", tool={"name": "get_weather", "args": {"city": "Paris"}})


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_openai_sdk_tool_call(real_proxy: Proxy, antigravity: Antigravity, stream: bool) -> None:
    antigravity.fake.default = WEATHER_CALL
    _, key = real_proxy.new_key(f"tool-openai-{stream}")
    client = openai_client(real_proxy, key)
    ask = {"model": CLAUDE, "messages": HI, "tools": [WEATHER_TOOL]}
    if stream:
        chunks = list(client.chat.completions.create(**ask, stream=True))  # type: ignore[call-overload]
        calls = [
            c for chunk in chunks if chunk.choices for c in chunk.choices[0].delta.tool_calls or []
        ]
        assert calls[0].function.name == "get_weather" and calls[0].id
        arguments = "".join(c.function.arguments or "" for c in calls)
        finish = [
            ch.choices[0].finish_reason
            for ch in chunks
            if ch.choices and ch.choices[0].finish_reason
        ]
        assert finish == ["tool_calls"]
    else:
        answer = client.chat.completions.create(**ask)  # type: ignore[call-overload]
        [call] = answer.choices[0].message.tool_calls
        assert call.function.name == "get_weather" and call.id
        arguments = call.function.arguments
    assert json.loads(arguments) == {"city": "Paris"}
    # The package turned the tool into a Google functionDeclaration.
    sent = [r.json() for r in antigravity.fake.received if "generatecontent" in r.path.lower()][-1]
    names = [f["name"] for t in sent["request"]["tools"] for f in t["functionDeclarations"]]
    assert names == ["get_weather"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_anthropic_sdk_tool_call(real_proxy: Proxy, antigravity: Antigravity, stream: bool) -> None:
    antigravity.fake.default = WEATHER_CALL
    _, key = real_proxy.new_key(f"tool-anthropic-{stream}")
    client = anthropic_client(real_proxy, key)
    ask: dict[str, Any] = {
        "model": CLAUDE,
        "max_tokens": 100,
        "messages": HI,
        "tools": [WEATHER_TOOL_ANTHROPIC],
    }
    if stream:
        with client.messages.stream(**ask) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**ask)
    [use] = [block for block in message.content if block.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    # As measured: upstream answers a non-streamed tool call with end_turn.
    assert message.stop_reason == ("tool_use" if stream else "end_turn")


def test_anthropic_sdk_streams_a_thinking_block_with_its_signature(
    real_proxy: Proxy, antigravity: Antigravity
) -> None:
    _, key = real_proxy.new_key("thinking")
    client = anthropic_client(real_proxy, key)
    with client.messages.stream(model=THINKING, max_tokens=2000, messages=HI) as events:  # type: ignore[arg-type]
        message = events.get_final_message()
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.signature == SIGNATURE
    assert text.type == "text" and text.text == TEXT


# --- quota -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "in-stream"])
def test_openai_sdk_quota_error(real_proxy: Proxy, antigravity: Antigravity, stream: bool) -> None:
    antigravity.fake.default = Script(quota_reset="60s")
    _, key = real_proxy.new_key(f"quota-openai-{stream}")
    client = openai_client(real_proxy, key)
    if not stream:
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model=CLAUDE, messages=HI)  # type: ignore[arg-type]
        assert caught.value.code == "upstream_quota_exhausted"
        assert int(caught.value.response.headers["retry-after"]) > 0
        return
    with pytest.raises(openai.APIError) as raised:
        list(client.chat.completions.create(model=CLAUDE, messages=HI, stream=True))  # type: ignore[arg-type]
    assert raised.value.code == "upstream_quota_exhausted"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "in-stream"])
def test_anthropic_quota_error(real_proxy: Proxy, antigravity: Antigravity, stream: bool) -> None:
    antigravity.fake.default = Script(quota_reset="60s")
    _, key = real_proxy.new_key(f"quota-anthropic-{stream}")
    body = {"model": CLAUDE, "max_tokens": 100, "messages": HI, "stream": stream}
    response = httpx.post(
        f"{real_proxy.url}/v1/messages",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        json=body,
        timeout=30,
    )
    if response.status_code == 429:
        assert int(response.headers["retry-after"]) > 0
        error = response.json()
    else:  # inside a 200 stream, as the real package sends it
        assert stream and response.status_code == 200, response.text
        events = [
            json.loads(line.removeprefix("data: "))
            for line in response.text.splitlines()
            if line.startswith("data: ")
        ]
        [error] = [e for e in events if e.get("type") == "error"]
    assert error["type"] == "error"
    assert error["error"]["type"] == "rate_limit_error", error
    assert "quota" in error["error"]["message"].lower(), error


# --- budgets ---------------------------------------------------------------------------------


def test_a_budget_is_charged_from_streamed_usage(
    real_proxy: Proxy, antigravity: Antigravity
) -> None:
    """Three streamed answers of 25 prompt (5 cached) and 3 completion tokens cost three
    times the headline price, on /account and in the billing endpoint."""
    antigravity.fake.default = HEADLINE
    _, key = real_proxy.new_key("budget-stream", budget=1.0)
    client = openai_client(real_proxy, key)
    for _ in range(3):
        list(client.chat.completions.create(model=CLAUDE, messages=HI, stream=True))  # type: ignore[arg-type]
    with anthropic_client(real_proxy, key).messages.stream(
        model=CLAUDE,
        max_tokens=100,
        messages=HI,  # type: ignore[arg-type]
    ) as events:
        events.get_final_message()
    expected = 4 * HEADLINE_COST

    def charged() -> dict[str, Any] | None:
        seen = httpx.get(f"{real_proxy.url}/account", headers=bearer(key)).json()
        return seen if sum(u["requests"] for u in seen["usage"]) >= 4 else None

    seen = wait_for(charged)
    assert seen["spend"] == pytest.approx(expected)
    billing = httpx.get(f"{real_proxy.url}/v1/dashboard/billing/usage", headers=bearer(key))
    assert billing.json()["total_usage"] == pytest.approx(expected * 100)


# --- Claude Code -----------------------------------------------------------------------------


def claude_turn(claude_code: Path, proxy: Proxy, key: str, model: str | None, where: Path) -> None:
    """`claude -p "Say hello"` through `proxy` (`model` None: no model variable); it
    must answer with the fake backend's text."""
    home = where / "home"
    home.mkdir()
    env = claude_code_env(home, proxy.url, key, model)
    assert TEXT in claude_says(claude_code, env, where, proxy)


def test_claude_code_through_the_proxy_and_the_real_package(
    real_proxy: Proxy, antigravity: Antigravity, claude_code: Path, tmp_path: Path
) -> None:
    key_id, key = real_proxy.new_key("claude-code")
    claude_turn(claude_code, real_proxy, key, CLAUDE, tmp_path)
    # Claude Code streams: its answers reached Google and were counted.
    assert any(a.stream for a in antigravity.fake.answered)
    rows = logged(real_proxy, key_id)
    assert all(row["prompt_tokens"] == 25 for row in rows if row["status"] == 200), rows


@pytest.fixture(scope="module")
def first_run_proxy(
    antigravity_session: Antigravity, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """The proxy as a newcomer starts it: no ROUTES_FILE, the built-in routing table."""
    running = start_proxy(
        tmp_path_factory.mktemp("first-run-proxy"), antigravity_session.url, UPSTREAM_API="auto"
    )
    yield running
    running.stop()


def test_claude_code_with_no_model_setting_completes_a_turn_over_the_real_package(
    first_run_proxy: Proxy, antigravity: Antigravity, claude_code: Path, tmp_path: Path
) -> None:
    """`ANTHROPIC_BASE_URL=… ANTHROPIC_API_KEY=… claude -p …` and nothing else: Claude
    Code sends its own default names (`claude-opus-4-8`, a `claude-haiku-…` background
    model), which the package does not list (reported refused by the real service; the
    fake backend answers any name); the built-in patterns route them to models it lists."""
    key_id, key = first_run_proxy.new_key("claude-code-defaults")
    claude_turn(claude_code, first_run_proxy, key, None, tmp_path)
    rows = logged(first_run_proxy, key_id)
    asked = {row["model"]: row["routed_model"] for row in rows}
    assert any(m.startswith("claude-opus-") for m in asked), asked  # Claude Code's default
    listing = httpx.get(f"{first_run_proxy.url}/v1/models", headers=bearer(key)).json()["data"]
    served = {model["id"] for model in listing}  # the package's list, and the aliases
    assert not any(m in served for m in asked if m.startswith("claude-opus-")), asked
    assert all(routed in served for routed in asked.values()), asked
    assert all(row["status"] == 200 for row in rows), rows


# --- issue 16: the upstream's own pages are not a customer's ---------------------------------


@pytest.mark.parametrize("path", ["/api/config", "/api/accounts", "/account-limits", "/"])
def test_a_customer_key_does_not_reach_the_packages_own_pages(
    real_proxy: Proxy, antigravity: Antigravity, path: str
) -> None:
    _, key = real_proxy.new_key("path-leak")
    before = antigravity.log().count(f"[GET] {path}\n")
    response = httpx.get(f"{real_proxy.url}{path}", headers=bearer(key), timeout=30)
    body = response.text
    assert ACCOUNT_EMAIL not in body, f"{path} shows the upstream's account: {body[:300]}"
    assert "Antigravity Console" not in body and "maxWaitBeforeErrorMs" not in body, body[:300]
    assert antigravity.log().count(f"[GET] {path}\n") == before, f"{path} reached the upstream"


# --- a Google stream that breaks off ----------------------------------------------------------


@pytest.mark.parametrize("client_api", ["anthropic", "openai"])
def test_a_stream_google_breaks_off_ends_in_an_error_and_bills_what_was_delivered(
    real_proxy: Proxy, antigravity: Antigravity, client_api: str
) -> None:
    """Google drops the stream after two events. The package then retries on its next
    endpoint inside the same response (a second message_start: the client sees the
    answer begin twice), and ends with `event: error` "terminated", without usage. The
    client gets the error; the proxy logs the prompt and bills the text delivered."""
    antigravity.fake.default = Script(text="one two three four five six seven eight", cut_after=2)
    key_id, key = real_proxy.new_key(f"cut-{client_api}")
    if client_api == "anthropic":
        body = {"model": CLAUDE, "max_tokens": 100, "messages": HI, "stream": True}
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        response = httpx.post(f"{real_proxy.url}/v1/messages", headers=headers, json=body)
        assert response.status_code == 200
        names = [line for line in response.text.splitlines() if line.startswith("event: ")]
        assert names.count("event: message_start") == 2, response.text
        assert names[-1] == "event: error"
    else:
        client = openai_client(real_proxy, key)
        with pytest.raises(openai.APIError):
            list(client.chat.completions.create(model=CLAUDE, messages=HI, stream=True))  # type: ignore[arg-type]
    [row] = logged(real_proxy, key_id)
    assert row["prompt_tokens"] == 25
    assert row["completion_tokens"] > 0, f"the delivered text was not billed: {row}"

"""The stand-in against the real thing: the same requests go to
tests/support/anthropic_standin.py and to the real antigravity-claude-proxy 2.0.4 (offline,
before the fake Google backend), and what comes back must have the same shape.

Compared: status codes, content types, the order of the streamed event types (runs of
the same delta folded into one, since the stand-in deliberately cuts text and JSON into
more pieces), the keys of each event's message, content block and usage, usage values
where the scenario fixes them, and error bodies. So the stand-in cannot drift from the
package again without a test failing.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.anthropic_standin import AnthropicStandIn
from tests.support.google_fake import GoogleFake, Script
from tests.support.harness import UPSTREAM_KEY, WEATHER_TOOL_ANTHROPIC
from tests.support.real_upstream import Antigravity

HEADERS = {"x-api-key": UPSTREAM_KEY, "anthropic-version": "2023-06-01"}
HI = [{"role": "user", "content": "hi"}]
CLAUDE = "claude-sonnet-4-5"
THINKING = "claude-sonnet-4-5-thinking"


@dataclass
class Scenario:
    method: str
    path: str
    body: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    #: Steers the stand-in, and the fake Google backend, to answer the same.
    standin: Callable[[AnthropicStandIn], None] = lambda s: None
    google: Callable[[GoogleFake], None] = lambda g: None
    #: Usage values (not only names) are the same in this scenario.
    values: bool = False


def messages(model: str = CLAUDE, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 1000, "messages": HI, "stream": stream, **extra}


def headline_standin(standin: AnthropicStandIn) -> None:
    standin.input_tokens = 20  # the stand-in's input_tokens leave the cached part out
    standin.cache_read_tokens = 5


def headline_google(google: GoogleFake) -> None:
    # "Hello from claude-sonnet-4-5." is the stand-in's answer: 3 words, 3 tokens.
    google.default = Script(
        text="Hello from claude-sonnet-4-5.", prompt_tokens=25, cached_tokens=5, completion_tokens=3
    )


def thinking_google(google: GoogleFake) -> None:
    # The stand-in's answer; output_tokens is Google's candidatesTokenCount, which
    # leaves the thinking out: 3 tokens for the 3 words of the text.
    google.default = Script(
        text="Hello from claude-sonnet-4-5-thinking.",
        thinking="The user wants an answer from claude-sonnet-4-5-thinking.",
        completion_tokens=3,
    )


def tool_google(google: GoogleFake) -> None:
    google.default = Script(
        text="Let me call get_weather.", tool={"name": "get_weather", "args": {"city": "x"}}
    )


def empty_standin(standin: AnthropicStandIn) -> None:
    standin.answer_empty(CLAUDE)


def empty_google(google: GoogleFake) -> None:
    google.default = Script(text="", empty=True, prompt_tokens=0, completion_tokens=0)


def quota_standin(standin: AnthropicStandIn) -> None:
    standin.exhaust(CLAUDE, reset="10s")


def quota_google(google: GoogleFake) -> None:
    google.default = Script(quota_reset="10s")


TOOLS = {"tools": [WEATHER_TOOL_ANTHROPIC]}
SCENARIOS = {
    "plain": Scenario(
        "POST", "/v1/messages", messages(), None, headline_standin, headline_google, True
    ),
    "streamed": Scenario(
        "POST", "/v1/messages", messages(stream=True), None, headline_standin, headline_google, True
    ),
    "thinking": Scenario(
        "POST", "/v1/messages", messages(THINKING), None, google=thinking_google, values=True
    ),
    "thinking-streamed": Scenario(
        "POST",
        "/v1/messages",
        messages(THINKING, stream=True),
        None,
        google=thinking_google,
        values=True,
    ),
    "tool": Scenario("POST", "/v1/messages", messages(**TOOLS), google=tool_google),
    "tool-streamed": Scenario(
        "POST", "/v1/messages", messages(stream=True, **TOOLS), google=tool_google
    ),
    "quota": Scenario("POST", "/v1/messages", messages(), None, quota_standin, quota_google),
    "quota-streamed": Scenario(
        "POST", "/v1/messages", messages(stream=True), None, quota_standin, quota_google
    ),
    "empty": Scenario("POST", "/v1/messages", messages(), None, empty_standin, empty_google, True),
    "empty-streamed": Scenario(
        "POST", "/v1/messages", messages(stream=True), None, empty_standin, empty_google, True
    ),
    "count-tokens": Scenario("POST", "/v1/messages/count_tokens", messages()),
    "chat-completions": Scenario("POST", "/v1/chat/completions", {"model": CLAUDE, "messages": HI}),
    "models": Scenario("GET", "/v1/models"),
    "bad-key": Scenario("POST", "/v1/messages", messages(), {"x-api-key": "wrong"}),
    "unknown-path": Scenario("GET", "/v1/nothing-here"),
}


def timeless(error: dict[str, Any]) -> dict[str, Any]:
    """An error body with its reset delay's digits masked: upstream counts down the time
    left ("10s", then "9s" a moment later)."""
    message = re.sub(r"(reset after )\d[\dhms]*", r"\1<duration>", error["error"]["message"])
    return {**error, "error": {**error["error"], "message": message}}


def keys(value: Any) -> list[str]:
    return sorted(value) if isinstance(value, dict) else []


def observe(url: str, scenario: Scenario) -> dict[str, Any]:
    """What a client can tell of the answer, free of ids, times and piece counts."""
    headers = {**HEADERS, **(scenario.headers or {})}
    response = httpx.request(
        scenario.method, f"{url}{scenario.path}", headers=headers, json=scenario.body, timeout=30
    )
    seen: dict[str, Any] = {
        "status": response.status_code,
        "content-type": response.headers.get("content-type", "").split(";")[0],
    }
    if seen["content-type"] == "text/event-stream":
        seen["events"] = stream_shape(response.text, scenario.values)
        return seen
    body = response.json()
    if body.get("type") == "error":
        seen["error"] = timeless(body)
    elif body.get("object") == "list":
        seen["list"] = {
            "keys": keys(body),
            "item keys": sorted({k for m in body["data"] for k in m}),
        }
    else:
        seen["keys"] = keys(body)
        seen["blocks"] = [(b["type"], keys(b)) for b in body["content"]]
        seen["stop_reason"] = body["stop_reason"]
        seen["usage"] = body["usage"] if scenario.values else keys(body["usage"])
        if scenario.values:
            seen["text"] = [b.get("text") for b in body["content"] if b["type"] == "text"]
    return seen


def stream_shape(text: str, values: bool) -> list[Any]:
    shape: list[Any] = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        data = json.loads(lines["data"])
        item: dict[str, Any] = {"event": lines.get("event"), "type": data.get("type")}
        if "message" in data:
            item["message keys"] = keys(data["message"])
            usage = data["message"].get("usage")
            item["usage"] = usage if values else keys(usage)
        if "content_block" in data:
            item["block"] = data["content_block"]["type"]
            item["block keys"] = keys(data["content_block"])
        if "delta" in data:
            item["delta"] = data["delta"].get("type") or keys(data["delta"])
        if "usage" in data:
            item["usage"] = data["usage"] if values else keys(data["usage"])
        if data.get("type") == "error":
            item["error"] = timeless(data)["error"]
        if not shape or shape[-1] != item:  # a run of the same delta counts once
            shape.append(item)
    return shape


@pytest.fixture
def fresh_standin() -> Iterator[AnthropicStandIn]:
    server = AnthropicStandIn(key=UPSTREAM_KEY).start()
    yield server
    server.stop()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_standin_answers_as_the_real_package_does(
    name: str, fresh_standin: AnthropicStandIn, antigravity: Antigravity
) -> None:
    scenario = SCENARIOS[name]
    scenario.standin(fresh_standin)
    scenario.google(antigravity.fake)
    real = observe(antigravity.url, scenario)
    standin = observe(fresh_standin.url, scenario)
    if standin != real:
        lines = difflib.unified_diff(
            json.dumps(real, indent=1).splitlines(),
            json.dumps(standin, indent=1).splitlines(),
            "real package",
            "stand-in",
            lineterm="",
            n=2,
        )
        pytest.fail(f"the stand-in differs from the real package ({name}):\n" + "\n".join(lines))

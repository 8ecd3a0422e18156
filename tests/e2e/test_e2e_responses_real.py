"""End to end against the real upstream: `POST /v1/responses` and Cursor's Agent-mode
body through the proxy (real mitmdump, UPSTREAM_API=auto) in front of the real
antigravity-claude-proxy from npm and its fake Google backend (tests/support/
real_upstream.py). Skips without npm, as the rest of that tier does.

The openai SDK's `responses.create` and `responses.stream`: text, a function-tool round
trip, a custom-tool round trip, usage and spend counted, the upstream's quota answer
(429 when whole, `response.failed` inside a stream); Cursor's recorded body on
`/v1/chat/completions`, read back as Chat Completions chunks.
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

from tests.support.google_fake import Script
from tests.support.harness import ADMIN_SECRET, Proxy, start_proxy, wait_for
from tests.support.real_upstream import Antigravity

CLAUDE = "claude-sonnet-4-5"
ADMIN = {"x-admin-secret": ADMIN_SECRET}
TEXT = "Hello from the fake Google backend."
FIXTURES = Path(__file__).parent.parent / "fixtures" / "cursor"
PRICES = f"""
[prices."{CLAUDE}"]
input = 3.0
output = 15.0
cached_input = 0.3
"""
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
PATCH_TOOL = {"type": "custom", "name": "apply_patch", "description": "Edit files"}
PATCH = '*** Begin Patch\n*** Update File: a.py\n-x = "old"\n+x = "new"\n*** End Patch\n'


@pytest.fixture(scope="module")
def real_proxy(
    antigravity_session: Antigravity, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    workdir = tmp_path_factory.mktemp("responses-real")
    (workdir / "routes.toml").write_text(PRICES)
    running = start_proxy(
        workdir,
        antigravity_session.url,
        UPSTREAM_API="auto",
        ROUTES_FILE=str(workdir / "routes.toml"),
    )
    yield running
    running.stop()


def logged(proxy: Proxy, key_id: int) -> list[dict[str, Any]]:
    def rows() -> list[dict[str, Any]]:
        response = httpx.get(f"{proxy.url}/admin/requests?key_id={key_id}", headers=ADMIN)
        return response.json()["data"]

    return wait_for(rows)


def client_of(proxy: Proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_text_with_usage_and_spend(
    real_proxy: Proxy, antigravity: Antigravity, stream: bool
) -> None:
    antigravity.fake.default = Script(prompt_tokens=25, cached_tokens=5, completion_tokens=3)
    key_id, key = real_proxy.new_key(f"real-responses-{stream}", budget=1.0)
    client = client_of(real_proxy, key)
    if stream:
        with client.responses.stream(model=CLAUDE, input="hi", instructions="Be brief.") as events:
            response = events.get_final_response()
    else:
        response = client.responses.create(model=CLAUDE, input="hi", instructions="Be brief.")
    assert response.output_text == TEXT and response.status == "completed"
    assert response.usage is not None
    assert response.usage.input_tokens == 25
    assert response.usage.input_tokens_details.cached_tokens == 5
    assert response.usage.output_tokens == 3
    [row] = logged(real_proxy, key_id)  # the request log
    assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) == (25, 5, 3)
    assert row["cost"] == pytest.approx((20 * 3.0 + 5 * 0.3 + 3 * 15.0) / 1e6)
    assert row["model"] == CLAUDE


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_a_function_tool_round_trip(
    real_proxy: Proxy, antigravity: Antigravity, stream: bool
) -> None:
    antigravity.fake.default = Script(
        text="", tool={"name": "get_weather", "args": {"city": "Paris"}}
    )
    _, key = real_proxy.new_key(f"real-responses-tool-{stream}")
    client = client_of(real_proxy, key)
    ask: dict[str, Any] = {"model": CLAUDE, "input": "Weather in Paris?", "tools": [WEATHER]}
    if stream:
        with client.responses.stream(**ask) as events:
            first = events.get_final_response()
    else:
        first = client.responses.create(**ask)
    call = first.output[-1]
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris"}
    antigravity.fake.default = Script(text="It is sunny in Paris.")
    follow_up = [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]  # fmt: skip
    second = client.responses.create(model=CLAUDE, input=follow_up, tools=[WEATHER])  # type: ignore[arg-type]
    assert second.output_text == "It is sunny in Paris."
    sent = [r.json() for r in antigravity.fake.received if "generatecontent" in r.path.lower()]
    parts = [part for content in sent[-1]["request"]["contents"] for part in content["parts"]]
    assert any("functionResponse" in part for part in parts)


def test_a_custom_tool_round_trip(real_proxy: Proxy, antigravity: Antigravity) -> None:
    antigravity.fake.default = Script(
        text="", tool={"name": "apply_patch", "args": {"input": PATCH}}
    )
    _, key = real_proxy.new_key("real-responses-custom")
    client = client_of(real_proxy, key)
    with client.responses.stream(model=CLAUDE, input="Fix it", tools=[PATCH_TOOL]) as events:  # type: ignore[list-item]
        kinds = [event.type for event in events]
        first = events.get_final_response()
    assert "response.custom_tool_call_input.delta" in kinds
    call = first.output[-1]
    assert call.type == "custom_tool_call" and call.input == PATCH
    antigravity.fake.default = Script(text="Patched.")
    follow_up = [
        {"role": "user", "content": "Fix it"},
        {"type": "custom_tool_call", "call_id": call.call_id, "name": "apply_patch",
         "input": call.input},
        {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done!"},
    ]  # fmt: skip
    second = client.responses.create(model=CLAUDE, input=follow_up, tools=[PATCH_TOOL])  # type: ignore[arg-type, list-item]
    assert second.output_text == "Patched."


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_the_upstreams_quota_answer(
    real_proxy: Proxy, antigravity: Antigravity, stream: bool
) -> None:
    antigravity.fake.default = Script(quota_reset="60s")
    _, key = real_proxy.new_key(f"real-responses-quota-{stream}")
    client = client_of(real_proxy, key)
    if not stream:
        with pytest.raises(openai.RateLimitError) as caught:
            client.responses.create(model=CLAUDE, input="hi")
        assert caught.value.code == "upstream_quota_exhausted"
        assert int(caught.value.response.headers["retry-after"]) > 0
        return
    try:
        events = list(client.responses.create(model=CLAUDE, input="hi", stream=True))
    except openai.RateLimitError as caught:  # refused before the stream started
        assert caught.code == "upstream_quota_exhausted"
        return
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.code == "upstream_quota_exhausted"  # type: ignore[union-attr]


def test_cursors_agent_body_on_chat_completions(
    real_proxy: Proxy, antigravity: Antigravity
) -> None:
    antigravity.fake.default = Script(
        text="", tool={"name": "ApplyPatch", "args": {"input": PATCH}}
    )
    key_id, key = real_proxy.new_key("real-cursor-agent")
    body = json.loads((FIXTURES / "agent_responses_shape.json").read_text())
    body["model"] = CLAUDE
    stream = client_of(real_proxy, key).post(
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
    completion = state.get_final_completion()
    (call,) = completion.choices[0].message.tool_calls
    assert (call.function.name, call.function.arguments) == ("ApplyPatch", PATCH)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    [row] = real_proxy.usage_rows(key_id, 1)
    assert row["prompt_tokens"] == 25

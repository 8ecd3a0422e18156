"""End to end: Codex CLI (npm `@openai/codex`), which speaks only the Responses API.

First against the recording Responses-API stand-in directly, no proxy (tests/support/codex.py):
these prove the harness (a text turn, and a tool turn in which Codex runs the offered shell
call and sends its output back), pin the request shape to the recorded fixtures in
tests/fixtures/codex/, and pin the fewest events Codex needs to finish a turn.

Then the same two turns through the proxy in front of the Anthropic-only stand-in
(`test_through_the_proxy_*`): Codex -> POST /v1/responses -> the upstream's /v1/messages.

The README's "Codex CLI" config is the one these tests write.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.anthropic_standin import AnthropicStandIn
from tests.support.codex import (
    FIXTURES,
    KEY_VARIABLE,
    MODEL,
    TOOL_COMMAND,
    TOOL_OUTPUT,
    ResponsesRecorder,
    codex_config,
    run_codex,
)
from tests.support.harness import (
    UPSTREAM_KEY,
    Proxy,
    doc_section,
    fenced_blocks,
    start_proxy,
)
from tests.support.real_upstream import CODEX_VERSION, codex_binary

KEY = "apk_codex_test_key"
SHELL_TOOL = "exec_command"  # Codex 0.171's shell tool: {"cmd": "<shell command>"}


@pytest.fixture(scope="module")
def codex() -> Path:
    """`codex`, installed once into ~/.cache/apipod-codex (skips without npm)."""
    return codex_binary()


@pytest.fixture(scope="module")
def recorder_server() -> Iterator[ResponsesRecorder]:
    server = ResponsesRecorder().start()
    yield server
    server.stop()


@pytest.fixture
def recorder(recorder_server: ResponsesRecorder) -> ResponsesRecorder:
    recorder_server.reset()
    recorder_server.offer_tool = False
    recorder_server.only = None
    return recorder_server


def fixture_body(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / name).read_text())["body"]
    return body


def tool_names(body: dict[str, Any]) -> list[str]:
    return [tool.get("name", tool["type"]) for tool in body.get("tools", [])]


def items_of(body: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [item for item in body["input"] if item.get("type") == kind]


# --- against the recorder: the harness, and what Codex sends --------------------------------


def test_codex_text_turn_against_the_recorder(
    codex: Path, recorder: ResponsesRecorder, tmp_path: Path
) -> None:
    run = run_codex(codex, tmp_path, f"{recorder.url}/v1", KEY, "Say hello")
    assert run.returncode == 0, run.describe()
    assert run.last_message.strip() == recorder.text
    assert run.stdout.strip() == recorder.text
    [seen] = recorder.received  # one request: no /v1/models, nothing else
    assert (seen.method, seen.path) == ("POST", "/v1/responses")
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.headers["accept"] == "text/event-stream"
    assert seen.headers["user-agent"].startswith(f"codex_exec/{CODEX_VERSION} ")
    body = seen.json()
    assert body["model"] == MODEL
    assert (body["stream"], body["store"], body["tool_choice"]) == (True, False, "auto")
    assert "instructions" not in body  # the system prompt is developer messages in input
    roles = [item["role"] for item in items_of(body, "message")]
    assert roles == ["developer", "developer", "user", "user"]
    assert body["input"][-1]["content"] == [{"type": "input_text", "text": "Say hello"}]
    assert SHELL_TOOL in tool_names(body) and "web_search" in tool_names(body)
    # The recorded fixture still shows what this version sends.
    recorded = fixture_body("request.json")
    assert sorted(body) == sorted(recorded)
    assert tool_names(body) == tool_names(recorded)


def test_codex_tool_turn_against_the_recorder(
    codex: Path, recorder: ResponsesRecorder, tmp_path: Path
) -> None:
    recorder.offer_tool = True
    run = run_codex(codex, tmp_path, f"{recorder.url}/v1", KEY, f"Run {TOOL_COMMAND}")
    assert run.returncode == 0, run.describe()
    assert TOOL_COMMAND in run.stderr  # the transcript shows the command it ran
    assert run.last_message.startswith("The tool said: ") and TOOL_OUTPUT in run.last_message
    first, second = recorder.received
    assert first.path == second.path == "/v1/responses"
    # The second request carries the whole conversation again: the call and its output.
    [call] = items_of(second.json(), "function_call")
    assert call["name"] == SHELL_TOOL and call["call_id"] == "call_rec_1"
    assert json.loads(call["arguments"]) == {"cmd": TOOL_COMMAND}
    [output] = items_of(second.json(), "function_call_output")
    assert output["call_id"] == call["call_id"]
    assert TOOL_OUTPUT in output["output"]
    assert second.json()["input"][: len(first.json()["input"])] == first.json()["input"]
    recorded = fixture_body("request-tool-output.json")
    assert [i["type"] for i in second.json()["input"]] == [i["type"] for i in recorded["input"]]


@pytest.mark.parametrize("tool", [False, True], ids=["text", "tool"])
def test_codex_needs_only_output_item_done_and_completed(
    codex: Path, recorder: ResponsesRecorder, tmp_path: Path, tool: bool
) -> None:
    """Codex builds its items from `response.output_item.done` alone (deltas are for the
    screen) and ends the turn at `response.completed`, which needs `response.id`."""
    recorder.only = {"response.output_item.done", "response.completed"}
    recorder.offer_tool = tool
    prompt = f"Run {TOOL_COMMAND}" if tool else "Say hello"
    run = run_codex(codex, tmp_path, f"{recorder.url}/v1", KEY, prompt)
    assert run.returncode == 0, run.describe()
    assert len(recorder.received) == (2 if tool else 1)
    assert TOOL_OUTPUT in run.last_message if tool else run.last_message == recorder.text


def test_codex_fails_a_turn_without_response_completed(
    codex: Path, recorder: ResponsesRecorder, tmp_path: Path
) -> None:
    recorder.only = {"response.created", "response.output_item.done"}
    run = run_codex(codex, tmp_path, f"{recorder.url}/v1", KEY, "Say hello")
    assert run.returncode == 1
    assert "stream closed before response.completed" in run.stderr


def test_readme_codex_config_is_what_the_tests_write() -> None:
    section = doc_section("docs/clients.md", "Clients")
    [config] = [block for block in fenced_blocks(section, "toml") if "model_providers" in block]
    assert config == codex_config("http://localhost:8081/v1")
    assert f"{KEY_VARIABLE}=apk_" in section  # the variable the provider's env_key names


# --- through the proxy, over an Anthropic-only upstream (needs POST /v1/responses) ------------


@pytest.fixture(scope="module")
def codex_proxy(
    anthropic_only: AnthropicStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    running = start_proxy(
        tmp_path_factory.mktemp("codex-proxy"), anthropic_only.url, UPSTREAM_API="anthropic"
    )
    yield running
    running.stop()


def messages_calls(upstream: AnthropicStandIn) -> list[dict[str, Any]]:
    return [r.json() for r in upstream.received if r.path == "/v1/messages"]


def test_through_the_proxy_codex_text_turn(
    codex: Path, codex_proxy: Proxy, claude_upstream: AnthropicStandIn, tmp_path: Path
) -> None:
    key_id, key = codex_proxy.new_key("codex-text")
    # Codex always offers its tools; the stand-in answers text all the same.
    headers = {"x-standin-mode": "text"}
    run = run_codex(codex, tmp_path, f"{codex_proxy.url}/v1", key, "Say hello", headers=headers)
    assert run.returncode == 0, f"{run.describe()}\n--- proxy\n{codex_proxy.log()[-3000:]}"
    assert run.last_message.strip() == f"Hello from {MODEL}."
    [sent] = messages_calls(claude_upstream)
    assert sent["model"] == MODEL and sent["stream"] is True
    assert sent["messages"][-1]["role"] == "user"
    assert "Say hello" in json.dumps(sent["messages"][-1])
    assert "You are a coding agent running in the Codex CLI" in json.dumps(sent["system"])
    assert not any(r.path == "/v1/responses" for r in claude_upstream.received)
    received = claude_upstream.received[-1].headers
    assert received["x-api-key"] == UPSTREAM_KEY and key not in str(received)
    [row] = codex_proxy.usage_rows(key_id, 1)
    assert (row["model"], row["requests"]) == (MODEL, 1)


def test_through_the_proxy_codex_tool_turn(
    codex: Path, codex_proxy: Proxy, claude_upstream: AnthropicStandIn, tmp_path: Path
) -> None:
    key_id, key = codex_proxy.new_key("codex-tool")
    headers = {
        "x-standin-mode": "tool",
        "x-standin-tool": SHELL_TOOL,
        "x-standin-tool-input": json.dumps({"cmd": TOOL_COMMAND}),
    }
    prompt = f"Run {TOOL_COMMAND}"
    run = run_codex(codex, tmp_path, f"{codex_proxy.url}/v1", key, prompt, headers=headers)
    assert run.returncode == 0, f"{run.describe()}\n--- proxy\n{codex_proxy.log()[-3000:]}"
    assert TOOL_COMMAND in run.stderr  # Codex ran the upstream's tool call
    first, second = messages_calls(claude_upstream)
    assert SHELL_TOOL in [tool["name"] for tool in first["tools"]]
    # The call went back to the upstream as its tool_use, the output as its tool_result.
    [use] = [b for b in second["messages"][-2]["content"] if b["type"] == "tool_use"]
    assert (use["name"], use["input"]) == (SHELL_TOOL, {"cmd": TOOL_COMMAND})
    [result] = [b for b in second["messages"][-1]["content"] if b["type"] == "tool_result"]
    assert result["tool_use_id"] == use["id"]
    assert TOOL_OUTPUT in json.dumps(result["content"])
    assert run.last_message.startswith("The tool said: ") and TOOL_OUTPUT in run.last_message
    rows = codex_proxy.usage_rows(key_id, 2)
    assert sum(row["requests"] for row in rows) == 2

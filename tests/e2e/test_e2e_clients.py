"""End to end: every real client works (Anthropic SDK, OpenAI SDK, a Cursor-like
model check) and the routing table is the operator's to edit."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.support.harness import ROOT, UPSTREAM_KEY, Proxy, bearer, free_port, wait_for
from tests.support.standin import MODELS, StandIn

# --- the Anthropic SDK (and Claude Code) --------------------------------------------


def test_anthropic_sdk_messages_create_with_x_api_key(
    proxy: Proxy, upstream: StandIn, api_key: str
) -> None:
    client = anthropic.Anthropic(base_url=proxy.url, api_key=api_key, max_retries=0)
    message = client.messages.create(
        model="cursor-pro-sonnet",
        max_tokens=64,
        messages=[{"role": "user", "content": "Hello"}],
    )
    [seen] = upstream.received
    assert seen.path == "/v1/messages"
    assert seen.json()["model"] in ("claude-sonnet-4-5", "gemini-3-flash")
    assert message.content[0].text == f"hello from {seen.json()['model']}"
    assert seen.headers["x-api-key"] == UPSTREAM_KEY
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"  # ours, never the client's
    assert api_key not in str(seen.headers)
    assert seen.headers["anthropic-version"]  # the client's other headers are kept


def test_anthropic_sdk_messages_stream(proxy: Proxy, api_key: str) -> None:
    client = anthropic.Anthropic(base_url=proxy.url, api_key=api_key, max_retries=0)
    with client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=[{"role": "user", "content": "Count"}],
        extra_headers={"x-standin-chunks": "4", "x-standin-interval": "0.05"},
    ) as stream:
        texts = [text.split("@")[0] for text in stream.text_stream]
        final = stream.get_final_message()
    assert texts == ["0", "1", "2", "3"]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (21, 4)


def test_anthropic_sdk_gets_anthropic_shaped_errors(proxy: Proxy) -> None:
    client = anthropic.Anthropic(base_url=proxy.url, api_key="apk_" + "E" * 43, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as raised:
        client.messages.create(
            model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    body = raised.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["message"] == "Invalid API key"
    assert body["error"]["code"] == "invalid_api_key"  # the OpenAI fields stay


def test_count_tokens_is_routed_too(proxy: Proxy, upstream: StandIn, api_key: str) -> None:
    response = httpx.post(
        f"{proxy.url}/v1/messages/count_tokens",
        headers={"x-api-key": api_key, "anthropic-version": "2023-06-01"},
        json={"model": "cursor-pro-sonnet", "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 200
    assert upstream.received[0].json()["model"] in ("claude-sonnet-4-5", "gemini-3-flash")


# --- GET /v1/models: the OpenAI SDK and Cursor's key check -----------------------------


def test_openai_sdk_lists_upstream_models_and_aliases(proxy: Proxy, api_key: str) -> None:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=api_key, max_retries=0)
    ids = [model.id for model in client.models.list()]
    assert ids == [*MODELS, "cursor-pro-sonnet"]


def test_cursor_key_check(proxy: Proxy, api_key: str) -> None:
    """Cursor calls GET /v1/models on the base URL; 200 means a good key."""
    good = httpx.get(f"{proxy.url}/v1/models", headers=bearer(api_key))
    assert good.status_code == 200
    assert good.json()["object"] == "list"
    assert {"id": "cursor-pro-sonnet", "object": "model", "created": 0, "owned_by": "apipod"} in (
        good.json()["data"]
    )
    assert httpx.get(f"{proxy.url}/v1/models").status_code == 401
    assert httpx.get(f"{proxy.url}/v1/models", headers=bearer("apk_x")).status_code == 403


def test_models_still_lists_aliases_when_the_upstream_is_down(make_proxy) -> None:
    down = make_proxy(f"http://127.0.0.1:{free_port()}")
    key = down.create_key()
    response = httpx.get(f"{down.url}/v1/models", headers=bearer(key))
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["data"]] == ["cursor-pro-sonnet"]
    assert "listing the proxy's own models only" in down.log()


# --- the routing table -------------------------------------------------------------------


def routed_model(proxy: Proxy, key: str, model: str, **headers: str) -> str:
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        headers={**bearer(key), **headers},
        json={"model": model, "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 200, response.text
    return response.json()["model"]


def test_routes_file_hot_reload_and_a_broken_edit(
    make_proxy, standin: StandIn, tmp_path: Path
) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text('[aliases.team]\ntargets = { "gemini-3-flash" = 1 }\n')
    proxy = make_proxy(standin.url, ROUTES_FILE=str(routes))
    key = proxy.create_key()
    assert routed_model(proxy, key, "team") == "gemini-3-flash"
    assert routed_model(proxy, key, "cursor-pro-sonnet") == "cursor-pro-sonnet"  # table replaced

    routes.write_text(
        '[aliases.team]\ntargets = { "claude-sonnet-4-5" = 1 }\n[renames]\n"gpt-4o" = "team-x"\n'
    )
    wait_for(lambda: routed_model(proxy, key, "team") == "claude-sonnet-4-5", timeout=8.0)
    assert routed_model(proxy, key, "gpt-4o") == "team-x"
    listed = [
        m["id"] for m in httpx.get(f"{proxy.url}/v1/models", headers=bearer(key)).json()["data"]
    ]
    assert listed[-2:] == ["team", "gpt-4o"]

    routes.write_text('[aliases.team]\ntargets = { "claude-sonnet-4-5" = -5 }\n')
    wait_for(lambda: "keeping the last good routing table" in proxy.log(), timeout=8.0)
    time.sleep(2.5)  # more polls of the same broken file
    assert routed_model(proxy, key, "team") == "claude-sonnet-4-5"
    errors = [line for line in proxy.log().splitlines() if "keeping the last good" in line]
    assert len(errors) == 1
    assert "weight of 'claude-sonnet-4-5' must be a positive number" in errors[0]

    routes.write_text('[aliases.team]\ntargets = { "gemini-3-pro-high" = 1 }\n')
    wait_for(lambda: routed_model(proxy, key, "team") == "gemini-3-pro-high", timeout=8.0)


def test_a_broken_routes_file_stops_startup(tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text("[aliases.x]\ntargets = {}\n")
    env = {"PATH": "/usr/bin:/bin", "ANTIGRAVITY_KEY": "k", "ROUTES_FILE": str(routes)}
    result = subprocess.run(
        [sys.executable, "-m", "apipod_proxy.serve"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"apipod: configuration error: ROUTES_FILE {routes}: [aliases.x] an alias needs at"
        " least one target"
    )


def test_shipped_example_routes_file_is_valid(make_proxy, standin: StandIn) -> None:
    proxy = make_proxy(standin.url, ROUTES_FILE=str(ROOT / "routes.example.toml"))
    key = proxy.create_key()
    assert routed_model(proxy, key, "gpt-4o") == "gemini-3-flash"
    assert routed_model(proxy, key, "agent-sonnet") in ("claude-sonnet-4-5", "gemini-3-pro-high")


def test_sticky_alias_keeps_each_conversation_on_one_target(
    make_proxy, standin: StandIn, tmp_path: Path
) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text(
        "[aliases.agent]\nsticky = true\n"
        'targets = { "claude-sonnet-4-5" = 20, "gemini-3-flash" = 80 }\n'
    )
    proxy = make_proxy(standin.url, ROUTES_FILE=str(routes))
    key = proxy.create_key()
    conversations, turns = 300, 3
    chosen: dict[int, set[str]] = {}
    with httpx.Client(base_url=proxy.url, headers=bearer(key)) as client:
        for c in range(conversations):
            messages = [
                {"role": "system", "content": "You are a coding agent."},
                {"role": "user", "content": f"task number {c}"},
            ]
            for turn in range(turns):
                body = {"model": "agent", "messages": messages}
                answer = client.post("/v1/chat/completions", json=body).json()
                chosen.setdefault(c, set()).add(answer["model"])
                messages = [
                    *messages,
                    {"role": "assistant", "content": f"step {turn}"},
                    {"role": "user", "content": "go on"},
                ]
    assert all(len(models) == 1 for models in chosen.values())
    split = Counter(next(iter(models)) for models in chosen.values())
    share = split["claude-sonnet-4-5"] / conversations
    sigma = math.sqrt(0.2 * 0.8 / conversations)
    print(f"sticky: claude share {share:.3f} over {conversations} conversations")
    assert abs(share - 0.2) < 6 * sigma

    # A client-sent session id wins over the opening: one session, one target.
    seen = {routed_model(proxy, key, "agent", **{"x-session-id": "session-42"}) for _ in range(10)}
    assert len(seen) == 1

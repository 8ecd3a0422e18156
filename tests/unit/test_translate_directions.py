"""Unit tests for apipod_proxy.translate.directions: the per-hook entry points.

The probe tests ask the real stand-ins (Anthropic-only, OpenAI-only, and the original
stand-in, which serves both) with the empty POST the addon will send.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from apipod_proxy.translate import (
    AnthropicToOpenAIStream,
    Direction,
    OpenAIToAnthropicStream,
    TranslationError,
    api_from_probe,
    direction_for,
    is_endpoint_missing,
)
from apipod_proxy.upstream.quota import QUOTA_CODE
from tests.support.anthropic_standin import AnthropicStandIn
from tests.support.openai_standin import OpenAIStandIn
from tests.support.standin import StandIn

TO_ANTHROPIC = Direction.OPENAI_TO_ANTHROPIC
TO_OPENAI = Direction.ANTHROPIC_TO_OPENAI


@pytest.mark.parametrize(
    ("method", "path", "api", "expected"),
    [
        ("POST", "/v1/chat/completions", "anthropic", TO_ANTHROPIC),
        ("POST", "/v1/chat/completions?x=1", "anthropic", TO_ANTHROPIC),
        ("POST", "/v1/chat/completions/", "anthropic", TO_ANTHROPIC),
        ("POST", "/v1/messages", "anthropic", None),
        ("POST", "/v1/messages", "openai", TO_OPENAI),
        ("POST", "/v1/messages/count_tokens", "openai", None),
        ("POST", "/v1/chat/completions", "openai", None),
        ("POST", "/v1/chat/completions", "both", None),
        ("POST", "/v1/messages", "both", None),
        ("GET", "/v1/chat/completions", "anthropic", None),
        ("GET", "/v1/models", "anthropic", None),
    ],
)
def test_direction_for(method: str, path: str, api: str, expected: Direction | None) -> None:
    assert direction_for(method, path, api) is expected


def test_request_gives_the_upstream_path() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    forward = TO_ANTHROPIC.request(body)
    assert (forward.path, forward.stream, forward.include_usage) == ("/v1/messages", True, True)
    assert forward.body["max_tokens"] > 0
    assert forward.headers == {"anthropic-version": "2023-06-01"}
    back = TO_OPENAI.request({"model": "m", "max_tokens": 5, "messages": body["messages"]})
    assert (back.path, back.stream) == ("/v1/chat/completions", False)
    with pytest.raises(TranslationError):
        TO_ANTHROPIC.request({"model": "m", "messages": []})


def test_stream_picks_the_translator() -> None:
    forward = TO_ANTHROPIC.stream("alias", include_usage=True)
    assert isinstance(forward, AnthropicToOpenAIStream) and forward.include_usage
    assert isinstance(TO_OPENAI.stream("m"), OpenAIToAnthropicStream)


def test_answer_translates_success_and_errors() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    ok = TO_ANTHROPIC.answer(200, json.dumps(message).encode(), model="cursor-pro-sonnet")
    payload = json.loads(ok.content)
    assert ok.status == 200 and payload["model"] == "cursor-pro-sonnet"
    assert payload["choices"][0]["message"]["content"] == "hi"
    quota = json.dumps(
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "You have exhausted your capacity on claude-sonnet-4-5. "
                "Quota will reset after 30s.",
            },
        }
    ).encode()
    limited = TO_ANTHROPIC.answer(400, quota, model="claude-sonnet-4-5")
    assert limited.status == 429 and limited.headers == {"retry-after": "30"}
    assert json.loads(limited.content)["error"]["code"] == QUOTA_CODE
    assert limited.quota is not None and limited.quota.reset_seconds == 30
    back = TO_OPENAI.answer(400, quota)
    assert back.status == 429 and json.loads(back.content)["error"]["type"] == "rate_limit_error"
    broken = TO_ANTHROPIC.answer(200, b"<html>")
    assert broken.status == 502 and "error" in json.loads(broken.content)


def test_answer_writes_an_upstream_error_with_a_lone_surrogate_escaped() -> None:
    """Issue 18: an upstream error quoting half an emoji ("\\ud83d", escaped on the wire)
    is answered in the client's shape, as \\u escapes, in both directions."""
    message = 'Invalid value "cut emoji \ud83d" é'
    anthropic = json.dumps(
        {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    )
    openai = json.dumps({"error": {"message": message, "type": "invalid_request_error"}})
    to_openai_client = TO_ANTHROPIC.answer(400, anthropic.encode())
    assert to_openai_client.status == 400
    assert to_openai_client.content == (
        b'{"error":{"message":"Invalid value \\"cut emoji \\ud83d\\" \\u00e9",'
        b'"type":"invalid_request_error","param":null,"code":"invalid_request_error"}}'
    )
    to_anthropic_client = TO_OPENAI.answer(400, openai.encode())
    assert json.loads(to_anthropic_client.content) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message},
    }


@pytest.mark.parametrize(
    ("status", "body", "missing"),
    [
        (
            404,
            b'{"type":"error","error":{"type":"not_found_error",'
            b'"message":"Endpoint POST /v1/chat/completions not found"}}',
            True,
        ),
        (
            404,
            b'{"error":{"message":"Invalid URL (POST /v1/messages)","code":"unknown_url"}}',
            True,
        ),
        (404, b"<html>Not Found</html>", True),
        (404, b"", True),
        (405, b'{"error":{"message":"Method not allowed"}}', True),
        (
            404,
            b'{"error":{"message":"The model `x` does not exist","code":"model_not_found"}}',
            False,
        ),
        (404, b'{"type":"error","error":{"type":"not_found_error","message":"model: x"}}', False),
        (400, b'{"error":{"message":"bad"}}', False),
        (401, b"", False),
    ],
)
def test_is_endpoint_missing(status: int, body: bytes, missing: bool) -> None:
    assert is_endpoint_missing(status, body) is missing


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, str]]:
    servers = {
        "anthropic": AnthropicStandIn(key="k").start(),
        "openai": OpenAIStandIn(key="k").start(),
        "both": StandIn().start(),
    }
    yield {name: server.url for name, server in servers.items()}
    for server in servers.values():
        server.stop()


def probe(url: str, path: str, key: str | None) -> tuple[int, bytes]:
    headers = {"x-api-key": key, "authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(url + path, content=b"", headers=headers)
    return response.status_code, response.content


@pytest.mark.parametrize("kind", ["anthropic", "openai", "both"])
@pytest.mark.parametrize("key", ["k", None])
def test_an_empty_post_tells_which_api_is_served(
    upstreams: dict[str, str], kind: str, key: str | None
) -> None:
    url = upstreams[kind]
    chat = probe(url, "/v1/chat/completions", key)
    messages = probe(url, "/v1/messages", key)
    if key is None and kind != "both":  # refused before routing: nothing learned
        assert api_from_probe(chat, messages) is None
    else:
        assert api_from_probe(chat, messages) == kind


def test_no_conclusion_without_both_answers() -> None:
    assert api_from_probe(None, (400, b"")) is None
    assert api_from_probe((404, b""), (404, b"")) is None

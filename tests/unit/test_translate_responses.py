"""Unit tests for apipod_proxy.translate.responses and .failures: answers and errors."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from anthropic.types import Message
from openai.types.chat import ChatCompletion

from apipod_proxy.translate import (
    anthropic_response_to_openai,
    cooling_for_client,
    error_for_client,
    openai_response_to_anthropic,
)
from apipod_proxy.upstream.quota import QUOTA_CODE
from tests.support.anthropic_standin import EMPTY_ANSWER, Answer

TOOL = {"id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}


def upstream(**fields: Any) -> dict[str, Any]:
    fields.setdefault("text", "Hello.")
    return Answer("claude-sonnet-4-5", 25, fields.pop("cache_read", 0), **fields).message(
        stream=False
    )


def test_text_answer() -> None:
    out = anthropic_response_to_openai(upstream(), model="cursor-pro-sonnet", created=5)
    ChatCompletion.model_validate(out)
    assert out["object"] == "chat.completion"
    assert out["model"] == "cursor-pro-sonnet"
    assert out["created"] == 5
    assert out["id"].startswith("chatcmpl-msg_standin")
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "Hello."}
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {
        "prompt_tokens": 25,
        "completion_tokens": 1,
        "total_tokens": 26,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_usage_counts_cache_reads_and_writes_as_prompt() -> None:
    body = upstream()
    body["usage"] = {
        "input_tokens": 10,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 5,
        "output_tokens": 7,
    }
    usage = anthropic_response_to_openai(body)["usage"]
    assert usage["prompt_tokens"] == 115
    assert usage["prompt_tokens_details"] == {"cached_tokens": 100}
    assert usage["completion_tokens"] == 7
    assert usage["total_tokens"] == 122


def test_tool_use_with_end_turn_still_says_tool_calls() -> None:
    body = upstream(text="Checking.", tool=TOOL)
    assert body["stop_reason"] == "end_turn"  # what the real upstream answers
    out = anthropic_response_to_openai(body)
    ChatCompletion.model_validate(out)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]


def test_tool_use_only_has_null_content() -> None:
    body = upstream(text="", tool=TOOL)
    assert anthropic_response_to_openai(body)["choices"][0]["message"]["content"] is None


def test_thinking_goes_to_reasoning_content() -> None:
    out = anthropic_response_to_openai(upstream(thinking="Deep thought.", signature="sig_x"))
    message = out["choices"][0]["message"]
    assert message["content"] == "Hello."
    assert message["reasoning_content"] == "Deep thought."
    assert "sig_x" not in json.dumps(out)


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        (None, "stop"),
        ("something_new", "stop"),
    ],
)
def test_stop_reasons(stop: str | None, finish: str) -> None:
    body = upstream()
    body["stop_reason"] = stop
    assert anthropic_response_to_openai(body)["choices"][0]["finish_reason"] == finish


def test_empty_answer_is_text_with_zero_usage() -> None:
    body = Answer("m", 0, 0, text=EMPTY_ANSWER, zero_usage=True).message(stream=False)
    out = anthropic_response_to_openai(body)
    assert out["choices"][0]["message"]["content"] == EMPTY_ANSWER
    assert out["usage"]["prompt_tokens"] == out["usage"]["completion_tokens"] == 0


def openai_answer(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": 30,
            "completion_tokens": 4,
            "total_tokens": 34,
            "prompt_tokens_details": {"cached_tokens": 10},
        },
    }


def test_reverse_text_answer() -> None:
    out = openai_response_to_anthropic(
        openai_answer({"role": "assistant", "content": "Hi.", "reasoning_content": "hm"}, "length")
    )
    Message.model_validate(out)
    assert out["id"] == "msg_chatcmpl-1"
    assert out["content"] == [
        {"type": "thinking", "thinking": "hm", "signature": ""},
        {"type": "text", "text": "Hi."},
    ]
    assert out["stop_reason"] == "max_tokens"
    assert out["usage"] == {"input_tokens": 20, "cache_read_input_tokens": 10, "output_tokens": 4}


def test_reverse_tool_answer() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    out = openai_response_to_anthropic(
        openai_answer({"role": "assistant", "content": None, "tool_calls": [call]}, "stop")
    )
    Message.model_validate(out)
    assert out["content"] == [{"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}]
    assert out["stop_reason"] == "tool_use"


# --- errors --------------------------------------------------------------------------

QUOTA = "You have exhausted your capacity on gemini-2. Quota will reset after 1h2m3s."


def anthropic_error(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ],
)
def test_anthropic_errors_keep_status_and_message(status: int, kind: str) -> None:
    answer = error_for_client("openai", status, anthropic_error(kind, "went wrong"))
    assert answer.status == status
    assert answer.payload == {
        "error": {"message": "went wrong", "type": kind, "param": None, "code": kind}
    }
    assert answer.quota is None and answer.headers == {}


def test_the_404_of_an_anthropic_only_upstream() -> None:
    body = (
        b'{"type":"error","error":{"type":"not_found_error",'
        b'"message":"Endpoint POST /v1/chat/completions not found"}}'
    )
    answer = error_for_client("openai", 404, body)
    assert answer.status == 404
    assert answer.payload["error"]["message"] == "Endpoint POST /v1/chat/completions not found"


@pytest.mark.parametrize("prefix", ["", "RESOURCE_EXHAUSTED: "])
def test_quota_400_becomes_429_with_retry_after(prefix: str) -> None:
    body = anthropic_error("invalid_request_error", prefix + QUOTA)
    answer = error_for_client("openai", 400, body, model="gemini-2.5-flash")
    assert answer.status == 429
    assert answer.headers == {"retry-after": "3723"}
    assert answer.payload["error"]["code"] == QUOTA_CODE
    assert answer.payload["error"]["type"] == "rate_limit_error"
    assert "gemini-2.5-flash" in answer.payload["error"]["message"]
    assert answer.quota is not None and answer.quota.reset_seconds == 3723
    for_anthropic = error_for_client("anthropic", 400, body, model="gemini-2.5-flash")
    assert for_anthropic.status == 429
    assert for_anthropic.payload["type"] == "error"
    assert for_anthropic.payload["error"]["type"] == "rate_limit_error"
    assert for_anthropic.headers == {"retry-after": "3723"}
    assert json.loads(for_anthropic.content) == for_anthropic.payload


def test_quota_without_time_uses_the_default_cooldown() -> None:
    body = anthropic_error("invalid_request_error", "You have exhausted your capacity on x.")
    answer = error_for_client("openai", 400, body, default_reset=90)
    assert answer.headers == {"retry-after": "90"}
    assert answer.quota is not None and answer.quota.reset_seconds is None


def test_a_5xx_with_quota_words_is_not_a_quota_answer() -> None:
    answer = error_for_client("openai", 503, anthropic_error("api_error", QUOTA))
    assert answer.status == 503 and answer.quota is None


def test_a_quota_answer_longer_than_the_cap_is_cut_to_it() -> None:
    body = anthropic_error("invalid_request_error", QUOTA.replace("1h2m3s", "8760h0m0s"))
    answer = error_for_client("openai", 400, body, max_reset=21600)
    assert answer.status == 429 and answer.headers == {"retry-after": "21600"}
    assert answer.quota is not None and answer.quota.reset_seconds == 8760 * 3600
    assert error_for_client("anthropic", 400, body, max_reset=60).headers == {"retry-after": "60"}


def test_a_429_of_an_openai_shaped_upstream_is_a_quota_answer() -> None:
    body = json.dumps({"error": {"message": QUOTA, "type": "rate_limit_error", "code": None}})
    answer = error_for_client("anthropic", 429, body.encode())
    assert answer.status == 429 and answer.quota is not None


@pytest.mark.parametrize(
    ("status", "body"),
    [
        # The sentence echoed from a client's field, after other text.
        (400, anthropic_error("invalid_request_error", f'Invalid value "{QUOTA}"')),
        # The right words in the wrong type, or not in a JSON error object at all.
        (400, anthropic_error("api_error", QUOTA)),
        (400, QUOTA.encode()),
        (400, json.dumps({"error": QUOTA}).encode()),
        (400, json.dumps({"detail": QUOTA}).encode()),
        (403, anthropic_error("invalid_request_error", QUOTA)),
    ],
)
def test_only_a_structured_quota_answer_counts(status: int, body: bytes) -> None:
    for shape in ("openai", "anthropic"):
        answer = error_for_client(shape, status, body, model="claude-sonnet-4-5")
        assert answer.status == status and answer.quota is None


def test_translate_stays_free_of_mitmproxy() -> None:
    """translate/ writes JSON with jsonenc (a leaf module), and reads quota and metering
    helpers that import no mitmproxy, so the translation package loads without it."""
    code = (
        "import sys, apipod_proxy.translate\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] == 'mitmproxy']\n"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_error_message_with_a_lone_surrogate_is_written_escaped() -> None:
    """Issue 18: failures.py had its own encoder without json_bytes' lone-surrogate fallback."""
    message = "cut emoji \ud83d"  # a lone surrogate: not encodable as UTF-8
    body = anthropic_error("invalid_request_error", message)
    openai_answer = error_for_client("openai", 400, body)
    assert json.loads(openai_answer.content)["error"]["message"] == message
    anthropic_answer = error_for_client("anthropic", 400, body)
    assert json.loads(anthropic_answer.content)["error"]["message"] == message


def test_openai_errors_for_anthropic_clients() -> None:
    body = json.dumps(
        {
            "error": {
                "message": "Bad key",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }
    ).encode()
    answer = error_for_client("anthropic", 401, body)
    assert answer.payload == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "Bad key"},
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
        (b"", "Upstream error (HTTP 502)"),
        (b'{"error": "plain words"}', "plain words"),
        (b"\xff\xfe", "\ufffd\ufffd"),
    ],
)
def test_unshaped_error_bodies(body: bytes, message: str) -> None:
    answer = error_for_client("openai", 502, body)
    assert answer.status == 502
    assert answer.payload["error"]["message"] == message
    assert answer.payload["error"]["type"] == "api_error"


def test_all_targets_cooling_answers() -> None:
    answer = cooling_for_client("openai", "cursor-pro-sonnet", 12.5)
    assert answer.status == 429 and answer.headers == {"retry-after": "13"}
    assert answer.payload["error"]["code"] == QUOTA_CODE
    anthropic = cooling_for_client("anthropic", "cursor-pro-sonnet", 12.5)
    assert anthropic.payload["type"] == "error"
    assert anthropic.payload["error"]["type"] == "rate_limit_error"

"""Property tests: whatever JSON a client or the upstream sends, translation never crashes.

Requests either translate or raise TranslationError (a 400 for the client); answers
always translate. Inputs are real bodies with one field anywhere replaced by an
arbitrary JSON value, which reaches far deeper than random JSON would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apipod_proxy.translate import (
    Direction,
    TranslationError,
    anthropic_request_to_openai,
    openai_request_to_anthropic,
)
from tests.support.anthropic_standin import Answer
from tests.support.strategies import mutate

pytestmark = pytest.mark.fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)

CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
OPENAI_REQUEST = {
    "model": "m",
    "messages": [
        {"role": "system", "content": "s"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
            ],
        },
        {"role": "assistant", "content": "x", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "c1", "content": "r"},
    ],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": {"type": "function", "function": {"name": "f"}},
    "max_tokens": 100,
    "temperature": 0.5,
    "stop": ["x"],
    "reasoning_effort": "low",
    "stream": True,
    "stream_options": {"include_usage": True},
    "user": "u",
}
ANTHROPIC_REQUEST = {
    "model": "m",
    "max_tokens": 100,
    "system": [{"type": "text", "text": "s"}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "A"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "r"}]},
    ],
    "tools": [{"name": "f", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "tool", "name": "f"},
    "stop_sequences": ["x"],
    "metadata": {"user_id": "u"},
    "stream": True,
}
ANTHROPIC_ANSWER = Answer(
    "m", 5, 3, text="hi", thinking="t", signature="s", tool={"id": "t", "name": "f", "input": {}}
).message(stream=False)
OPENAI_ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "hi",
                "reasoning_content": "r",
                "tool_calls": [CALL],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 1},
    },
}


@st.composite
def mutated(draw: st.DrawFn, original: dict[str, Any]) -> Any:
    value = original
    for _ in range(draw(st.integers(1, 3))):
        value = mutate(draw, value, json_values, max_depth=5)
    return value


def translates_or_is_refused(translate: Callable[[Any], Any], body: Any, caller: str) -> None:
    """`translate(body)` gives a JSON body, or refuses saying why in the caller's shape."""
    try:
        out = translate(body)
    except TranslationError as exc:
        assert isinstance(exc.message, str) and exc.message
        payload = exc.openai_payload() if caller == "openai" else exc.anthropic_payload()
        assert json.loads(json.dumps(payload))["error"]["type"] == "invalid_request_error"
        return
    json.dumps(out.body)


@settings(max_examples=200, deadline=None)
@given(mutated(OPENAI_REQUEST))
def test_openai_requests_translate_or_are_refused(body: Any) -> None:
    translates_or_is_refused(openai_request_to_anthropic, body, "openai")


@settings(max_examples=200, deadline=None)
@given(mutated(ANTHROPIC_REQUEST))
def test_anthropic_requests_translate_or_are_refused(body: Any) -> None:
    translates_or_is_refused(anthropic_request_to_openai, body, "anthropic")


@settings(max_examples=200, deadline=None)
@given(mutated(ANTHROPIC_ANSWER), st.sampled_from([200, 400, 404, 500]))
def test_anthropic_answers_always_translate(body: Any, status: int) -> None:
    answer = Direction.OPENAI_TO_ANTHROPIC.answer(status, json.dumps(body).encode(), "m")
    assert json.loads(answer.content)


@settings(max_examples=200, deadline=None)
@given(mutated(OPENAI_ANSWER), st.sampled_from([200, 400, 429, 503]))
def test_openai_answers_always_translate(body: Any, status: int) -> None:
    answer = Direction.ANTHROPIC_TO_OPENAI.answer(status, json.dumps(body).encode(), "m")
    assert json.loads(answer.content)

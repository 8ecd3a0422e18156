"""Unit tests for apipod_proxy.translate.requests: request bodies in both directions.

The stand-ins' own request checks (as strict as the real APIs) serve as the oracle:
whatever a translation produces must pass them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apipod_proxy.translate import (
    DEFAULT_MAX_TOKENS,
    REASONING_BUDGETS,
    TranslationError,
    anthropic_request_to_openai,
    openai_request_to_anthropic,
)
from tests.support import anthropic_standin, openai_standin
from tests.support.harness import WEATHER_TOOL as WEATHER


def to_anthropic(**body: Any) -> dict[str, Any]:
    body.setdefault("model", "claude-sonnet-4-5")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    out = openai_request_to_anthropic(body).body
    anthropic_standin.validate(out)
    return out


def refused(**body: Any) -> TranslationError:
    body.setdefault("model", "m")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    with pytest.raises(TranslationError) as caught:
        openai_request_to_anthropic(body)
    return caught.value


def test_plain_chat() -> None:
    out = to_anthropic()
    assert out == {
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": DEFAULT_MAX_TOKENS,
    }


def test_system_and_developer_become_top_level_system() -> None:
    out = to_anthropic(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
            {"role": "user", "content": "hi"},
        ]
    )
    assert out["system"] == "Be brief.\n\nUse French."
    assert [m["role"] for m in out["messages"]] == ["user"]


def test_consecutive_same_role_messages_are_merged() -> None:
    out = to_anthropic(
        messages=[
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "three"},
            {"role": "assistant", "content": "four"},
            {"role": "user", "content": "five"},
        ]
    )
    assert [(m["role"], [b["text"] for b in m["content"]]) for m in out["messages"]] == [
        ("user", ["one", "two"]),
        ("assistant", ["three", "four"]),
        ("user", ["five"]),
    ]


def test_images_from_data_urls_and_http_urls() -> None:
    out = to_anthropic(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/PNG;base64,iVBORw0K"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/cat.jpg"}},
                ],
            }
        ]
    )
    blocks = out["messages"][0]["content"]
    assert blocks[1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
    }
    assert blocks[2] == {
        "type": "image",
        "source": {"type": "url", "url": "https://x.test/cat.jpg"},
    }


@pytest.mark.parametrize(
    "url", ["data:image/png,notbase64", "ftp://x.test/a.png", "file:///etc/passwd", "cat.png"]
)
def test_other_image_urls_are_refused(url: str) -> None:
    error = refused(
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    )
    assert error.param == "messages[0].content[0].image_url.url"


def test_tools_and_tool_choices() -> None:
    out = to_anthropic(tools=[WEATHER], tool_choice="auto")
    assert out["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": WEATHER["function"]["parameters"],
        }
    ]
    assert out["tool_choice"] == {"type": "auto"}
    assert to_anthropic(tools=[WEATHER], tool_choice="none")["tool_choice"] == {"type": "none"}
    assert to_anthropic(tools=[WEATHER], tool_choice="required")["tool_choice"] == {"type": "any"}
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert to_anthropic(tools=[WEATHER], tool_choice=named)["tool_choice"] == {
        "type": "tool",
        "name": "get_weather",
    }
    assert to_anthropic(tools=[WEATHER], parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    assert "tool_choice" not in to_anthropic(tool_choice="auto")  # no tools: nothing to choose


def test_a_tool_without_parameters_gets_an_empty_object_schema() -> None:
    out = to_anthropic(tools=[{"type": "function", "function": {"name": "now"}}])
    assert out["tools"] == [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]


def tool_conversation() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are an agent."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
        {"role": "user", "content": "Thanks, and tomorrow?"},
    ]


def test_tool_calls_and_results() -> None:
    out = to_anthropic(messages=tool_conversation(), tools=[WEATHER])
    assert out["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}},
        ],
    }
    assert out["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "rain"},
            {"type": "text", "text": "Thanks, and tomorrow?"},
        ],
    }


def test_assistant_text_with_tool_calls_and_empty_arguments() -> None:
    messages = [
        {"role": "user", "content": "time?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "reasoning_content": "dropped",
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "now", "arguments": ""}}
            ],
        },
        {"role": "tool", "tool_call_id": "c", "content": "noon"},
    ]
    out = to_anthropic(messages=messages)
    assert out["messages"][1]["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "c", "name": "now", "input": {}},
    ]


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"text"'])
def test_bad_tool_arguments_are_refused(arguments: str) -> None:
    messages = [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
            ],
        },
    ]
    assert refused(messages=messages).param == "messages[1].tool_calls[0].function.arguments"


def test_max_tokens_and_sampling() -> None:
    out = to_anthropic(max_tokens=100, temperature=0.3, top_p=0.9, stop="END", user="u-1")
    assert out["max_tokens"] == 100
    assert out["temperature"] == 0.3
    assert out["top_p"] == 0.9
    assert out["stop_sequences"] == ["END"]
    assert out["metadata"] == {"user_id": "u-1"}
    assert to_anthropic(max_completion_tokens=77, max_tokens=5)["max_tokens"] == 77
    assert to_anthropic(temperature=1.7)["temperature"] == 1.0  # OpenAI's 0-2 onto 0-1
    assert to_anthropic(stop=["a", " ", "\n"])["stop_sequences"] == ["a"]
    assert "stop_sequences" not in to_anthropic(stop=["  "])


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_tokens", 0), ("max_tokens", "10"), ("max_tokens", True), ("temperature", 3)],
)
def test_bad_numbers_are_refused(field: str, value: Any) -> None:
    assert refused(**{field: value}).param == field


@pytest.mark.parametrize("effort", ["minimal", "low", "medium", "high", "xhigh"])
def test_reasoning_effort_becomes_a_thinking_budget(effort: str) -> None:
    out = to_anthropic(reasoning_effort=effort, temperature=0.2)
    budget = REASONING_BUDGETS[effort]
    assert out["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert out["max_tokens"] == budget + DEFAULT_MAX_TOKENS
    assert "temperature" not in out  # thinking takes temperature 1 only


def test_reasoning_budget_stays_below_the_clients_max_tokens() -> None:
    out = to_anthropic(reasoning_effort="high", max_tokens=4000)
    assert out["max_tokens"] == 4000
    assert out["thinking"]["budget_tokens"] == 3999
    assert "thinking" not in to_anthropic(reasoning_effort="low", max_tokens=1000)
    assert "thinking" not in to_anthropic(reasoning_effort="none")
    assert refused(reasoning_effort="max").param == "reasoning_effort"


def test_stream_and_include_usage() -> None:
    plain = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    asked = openai_request_to_anthropic(
        {**plain, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert asked.stream and asked.include_usage
    assert asked.body["stream"] is True and "stream_options" not in asked.body
    quiet = openai_request_to_anthropic({**plain, "stream": True})
    assert quiet.stream and not quiet.include_usage
    single = openai_request_to_anthropic({**plain, "stream_options": {"include_usage": True}})
    assert not single.stream and not single.include_usage and "stream" not in single.body


def test_tuning_fields_are_dropped_never_forwarded() -> None:
    out = to_anthropic(
        n=1,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        logit_bias={"1": 2},
        seed=3,
        logprobs=False,
        response_format={"type": "text"},
        store=False,
        metadata={"a": "b"},
        service_tier="auto",
        some_future_field=True,
    )
    assert set(out) == {"model", "messages", "max_tokens"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 2),
        ("logprobs", True),
        ("top_logprobs", 3),
        ("response_format", {"type": "json_object"}),
        ("response_format", {"type": "json_schema", "json_schema": {}}),
        ("modalities", ["text", "audio"]),
        ("audio", {"voice": "x"}),
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("tool_choice", "sometimes"),
    ],
)
def test_fields_without_an_equivalent_are_refused(field: str, value: Any) -> None:
    error = refused(**{field: value})
    assert error.param == field
    payload = error.openai_payload()["error"]
    assert payload["type"] == "invalid_request_error"
    assert payload["param"] == field
    assert payload["message"]


@pytest.mark.parametrize(
    "messages",
    [
        [],
        "hi",
        [{"role": "system", "content": "only a system prompt"}],
        [{"role": "function", "content": "x", "name": "f"}],
        [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
        [{"role": "tool", "content": "x"}],
    ],
)
def test_unusable_messages_are_refused(messages: Any) -> None:
    assert refused(messages=messages).param is not None


def test_non_function_tools_are_refused() -> None:
    assert refused(tools=[{"type": "web_search"}]).param == "tools[0]"


# --- hypothesis: any conversation an OpenAI client can send passes the upstream's checks ---

text = st.text(min_size=1, max_size=12).filter(str.strip)
text_part = st.builds(lambda t: {"type": "text", "text": t}, text)
user_content = st.one_of(text, st.lists(text_part, min_size=1, max_size=3))


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": draw(st.sampled_from(["system", "developer"])), "content": "s"})
    messages.append({"role": "user", "content": draw(user_content)})
    for turn in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["user", "assistant", "tools"]))
        if kind == "user":
            messages.append({"role": "user", "content": draw(user_content)})
        elif kind == "assistant":
            messages.append({"role": "assistant", "content": draw(text)})
        else:
            ids = [f"call_{turn}_{i}" for i in range(draw(st.integers(1, 3)))]
            messages.append(
                {
                    "role": "assistant",
                    "content": draw(st.none() | text),
                    "tool_calls": [
                        {
                            "id": i,
                            "type": "function",
                            "function": {"name": "f", "arguments": json.dumps({"k": i})},
                        }
                        for i in ids
                    ],
                }
            )
            messages.extend({"role": "tool", "tool_call_id": i, "content": draw(text)} for i in ids)
    return messages


@settings(max_examples=150, deadline=None)
@given(conversations())
def test_any_openai_conversation_passes_the_messages_api_checks(messages: Any) -> None:
    out = openai_request_to_anthropic({"model": "m", "messages": messages}).body
    anthropic_standin.validate(out)


# --- Anthropic -> OpenAI -------------------------------------------------------------


def to_openai(**body: Any) -> dict[str, Any]:
    body.setdefault("model", "gpt-4o-mini")
    body.setdefault("max_tokens", 256)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    out = anthropic_request_to_openai(body).body
    openai_standin.validate(out)
    return out


def test_reverse_plain_chat_with_system() -> None:
    out = to_openai(
        system=[{"type": "text", "text": "Be brief."}],
        stop_sequences=["END"],
        temperature=0.5,
        top_p=0.8,
        top_k=40,
        metadata={"user_id": "u"},
        thinking={"type": "enabled", "budget_tokens": 2048},
    )
    assert out == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
        ],
        "max_tokens": 256,
        "temperature": 0.5,
        "top_p": 0.8,
        "stop": ["END"],
        "user": "u",
    }


def test_reverse_tools_conversation() -> None:
    out = to_openai(
        tools=[{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"c": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
    )
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object"},
                "description": "d",
            },
        }
    ]
    assert out["tool_choice"] == "required"
    assert out["parallel_tool_calls"] is False
    assert out["messages"][1] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "t1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"c":1}'},
            }
        ],
    }
    assert out["messages"][2] == {"role": "tool", "tool_call_id": "t1", "content": "sunny"}
    assert out["messages"][3] == {"role": "user", "content": "And tomorrow?"}


def test_reverse_images_and_errors_in_tool_results() -> None:
    out = to_openai(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "see"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "AAA"},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                ],
            }
        ]
    )
    assert out["messages"][0]["content"][1:] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
    ]
    result = anthropic_request_to_openai(
        {
            "messages": [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t",
                            "is_error": True,
                            "content": [{"type": "text", "text": "boom"}],
                        }
                    ],
                },
            ]
        }
    ).body
    assert result["messages"][2] == {"role": "tool", "tool_call_id": "t", "content": "Error: boom"}


def test_reverse_stream_always_asks_for_usage() -> None:
    translated = anthropic_request_to_openai(
        {
            "model": "m",
            "max_tokens": 5,
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        }
    )
    assert translated.stream
    assert translated.body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    "body",
    [
        {"messages": []},
        {"messages": [{"role": "system", "content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
        {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "bash_20250124"}]},
    ],
)
def test_reverse_refusals(body: dict[str, Any]) -> None:
    with pytest.raises(TranslationError) as caught:
        anthropic_request_to_openai(body)
    assert caught.value.anthropic_payload()["type"] == "error"

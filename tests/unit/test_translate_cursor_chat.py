"""Cursor's Chat Completions for Claude-like model names, translated to Anthropic Messages.

Anthropic-shaped parts in an OpenAI body (issue 19): `system` as a block array,
`cache_control` on content parts (kept, on the block it marks), Anthropic's tool_choice
objects besides OpenAI's, a top-level `system`, and assistant messages with an empty
`tool_calls` list. The fixtures are tests/fixtures/cursor/ (see its README). The
stand-in's checks, as strict as the Messages API, are the oracle for every output.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apipod_proxy.translate import TranslationError, openai_request_to_anthropic
from tests.support import anthropic_standin
from tests.support.harness import WEATHER_TOOL as WEATHER

FIXTURES = Path(__file__).parent.parent / "fixtures" / "cursor"
EPHEMERAL = {"type": "ephemeral"}


def fixture(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return body


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


def text(value: str, cache: Any = None) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "text", "text": value}
    if cache is not None:
        part["cache_control"] = cache
    return part


# --- the fixtures ------------------------------------------------------------------------


def test_claude_like_chat_keeps_every_field_where_the_messages_api_reads_it() -> None:
    body = fixture("claude_like_chat")
    translated = openai_request_to_anthropic(copy.deepcopy(body))
    out = translated.body
    anthropic_standin.validate(out)
    [system] = body["messages"][0]["content"]
    assert out["system"] == [text(system["text"], EPHEMERAL)]
    first, second = body["messages"][1]["content"]
    assert out["messages"] == [
        {"role": "user", "content": [text(first["text"]), text(second["text"], EPHEMERAL)]}
    ]
    assert out["tool_choice"] == {"type": "auto"}
    assert [tool["name"] for tool in out["tools"]] == ["get_weather", "read_file"]
    assert out["tools"][1]["input_schema"] == body["tools"][1]["function"]["parameters"]
    assert out["max_tokens"] == body["max_tokens"] == 1024  # the client's limit, even low
    assert out["stream"] is True
    assert translated.include_usage is True


def test_empty_tool_calls_are_dropped() -> None:
    out = to_anthropic(**fixture("empty_tool_calls"))
    assert out["system"] == "You are a powerful agentic AI coding assistant. You operate in Cursor."
    assert out["messages"] == [
        {"role": "user", "content": [text("Say hello.")]},
        {"role": "assistant", "content": [text("Hello!")]},
        # The empty assistant turn is left out, so the two user turns around it are one.
        {"role": "user", "content": [text("Say it once more."), text("And in French?")]},
    ]


@pytest.mark.parametrize(
    "content", [None, "", [], [text("")]], ids=["none", "empty", "no-parts", "empty-part"]
)
def test_an_assistant_message_of_nothing_but_empty_tool_calls_is_left_out(content: Any) -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": content, "tool_calls": []},
        {"role": "user", "content": "b"},
    ]
    out = to_anthropic(messages=messages)
    assert out["messages"] == [{"role": "user", "content": [text("a"), text("b")]}]


def test_empty_tool_calls_next_to_real_ones_change_nothing() -> None:
    messages = [
        {"role": "user", "content": "time?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "now"}}],
        },
        {"role": "tool", "tool_call_id": "c", "content": "noon"},
        {"role": "assistant", "content": "It is noon.", "tool_calls": []},
        {"role": "user", "content": "thanks"},
    ]
    out = to_anthropic(messages=messages, tools=[WEATHER])
    assert [m["role"] for m in out["messages"]] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert out["messages"][3]["content"] == [text("It is noon.")]


# --- tool_choice: OpenAI's forms and Anthropic's ------------------------------------------


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
        ({"type": "auto"}, {"type": "auto"}),
        ({"type": "any"}, {"type": "any"}),
        ({"type": "none"}, {"type": "none"}),
        ({"type": "tool", "name": "get_weather"}, {"type": "tool", "name": "get_weather"}),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"type": "auto", "disable_parallel_tool_use": True},
        ),
        (
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
        ({"type": "any", "disable_parallel_tool_use": False}, {"type": "any"}),
        ({"type": "none", "disable_parallel_tool_use": True}, {"type": "none"}),
        ({"type": "auto", "unknown": 1}, {"type": "auto"}),  # other keys are not forwarded
    ],
    ids=repr,
)
def test_every_tool_choice_form(choice: Any, expected: dict[str, Any]) -> None:
    assert to_anthropic(tools=[WEATHER], tool_choice=choice)["tool_choice"] == expected


@pytest.mark.parametrize(
    "choice", ["auto", {"type": "auto"}, {"type": "any"}, {"type": "tool", "name": "get_weather"}]
)
def test_parallel_tool_calls_false_disables_parallel_use_for_either_form(choice: Any) -> None:
    out = to_anthropic(tools=[WEATHER], tool_choice=choice, parallel_tool_calls=False)
    assert out["tool_choice"]["disable_parallel_tool_use"] is True


@pytest.mark.parametrize("choice", [{"type": "auto"}, {"type": "tool", "name": "x"}])
def test_an_anthropic_tool_choice_without_tools_is_dropped(choice: Any) -> None:
    assert "tool_choice" not in to_anthropic(tool_choice=choice)


@pytest.mark.parametrize(
    "choice",
    [
        {"type": "tool"},
        {"type": "tool", "name": ""},
        {"type": "tool", "name": 5},
        {"type": "function"},
        {"type": "function", "function": "get_weather"},
        {"type": "sometimes"},
        {},
        {"name": "get_weather"},
        5,
        ["auto"],
    ],
    ids=repr,
)
def test_other_tool_choices_are_refused_naming_both_forms(choice: Any) -> None:
    error = refused(tools=[WEATHER], tool_choice=choice)
    assert error.param == "tool_choice"
    assert '"required"' in error.message and '"tool"' in error.message


# --- system: a role, a block array, or Anthropic's top-level field ---------------------------


def test_a_block_array_system_without_cache_control_is_one_string_as_before() -> None:
    out = to_anthropic(
        messages=[
            {"role": "system", "content": [text("One."), text("Two.")]},
            {"role": "user", "content": "hi"},
        ]
    )
    assert out["system"] == "One.\n\nTwo."


def test_a_system_with_cache_control_keeps_its_blocks_and_the_breakpoint() -> None:
    out = to_anthropic(
        messages=[
            {"role": "system", "content": [text("Stable rules."), text("", EPHEMERAL)]},
            {"role": "developer", "content": "Project notes."},
            {"role": "system", "content": [text("Long context.", EPHEMERAL), text("Today.")]},
            {"role": "user", "content": "hi"},
        ]
    )
    # Every system text in order, each its own block; empty ones left out (the API
    # refuses empty text blocks), the breakpoints exactly where the client put them.
    assert out["system"] == [
        text("Stable rules."),
        text("Project notes."),
        text("Long context.", EPHEMERAL),
        text("Today."),
    ]


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        ("Top rules.", "Top rules.\n\nRole rules."),
        ([text("Top rules.")], "Top rules.\n\nRole rules."),
        ([text("Top rules.", EPHEMERAL)], [text("Top rules.", EPHEMERAL), text("Role rules.")]),
    ],
    ids=["string", "blocks", "cached-blocks"],
)
def test_a_top_level_system_comes_before_the_system_messages(system: Any, expected: Any) -> None:
    messages = [{"role": "system", "content": "Role rules."}, {"role": "user", "content": "hi"}]
    assert to_anthropic(system=system, messages=messages)["system"] == expected


@pytest.mark.parametrize("system", [5, {"text": "x"}, [{"type": "image"}]], ids=repr)
def test_a_top_level_system_that_is_not_text_is_refused(system: Any) -> None:
    assert refused(system=system).param.startswith("system")  # type: ignore[union-attr]


# --- cache_control on content parts -----------------------------------------------------------


def test_cache_control_is_kept_on_the_part_it_marks_in_every_role() -> None:
    image = {
        "type": "image_url",
        "image_url": {"url": "https://example.com/a.png"},
        "cache_control": EPHEMERAL,
    }
    messages = [
        {"role": "user", "content": [text("look"), image]},
        {
            "role": "assistant",
            "content": [text("Reading it.", {"type": "ephemeral", "ttl": "1h"})],
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "get_weather"}}],
        },
        {"role": "tool", "tool_call_id": "c", "content": [text("sunny"), text("warm", EPHEMERAL)]},
        {"role": "user", "content": [text("so?", {"type": "ephemeral", "ttl": "5m"})]},
    ]
    out = to_anthropic(messages=messages, tools=[WEATHER])
    assert out["messages"][0]["content"] == [
        text("look"),
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
        | {"cache_control": EPHEMERAL},
    ]
    assert out["messages"][1]["content"][0] == text(
        "Reading it.", {"type": "ephemeral", "ttl": "1h"}
    )
    # A tool message's parts become one result text: the breakpoint is on the result.
    assert out["messages"][2]["content"] == [
        {
            "type": "tool_result",
            "tool_use_id": "c",
            "content": "sunny\n\nwarm",
            "cache_control": EPHEMERAL,
        },
        text("so?", {"type": "ephemeral", "ttl": "5m"}),
    ]


@pytest.mark.parametrize(
    ("cache", "kept"),
    [
        ({"type": "ephemeral", "ttl": "2h"}, EPHEMERAL),  # a ttl the API does not take
        ({"type": "ephemeral", "scope": "global"}, EPHEMERAL),  # nor other keys
        ({"type": "persistent"}, None),
        ("ephemeral", None),
        (True, None),
        ({}, None),
    ],
    ids=repr,
)
def test_only_the_cache_control_the_messages_api_takes_is_forwarded(cache: Any, kept: Any) -> None:
    out = to_anthropic(messages=[{"role": "user", "content": [text("hi", cache)]}])
    assert out["messages"][0]["content"] == [text("hi", kept)]


def test_cache_control_on_an_empty_part_goes_with_the_part() -> None:
    out = to_anthropic(messages=[{"role": "user", "content": [text("hi"), text("", EPHEMERAL)]}])
    assert out["messages"][0]["content"] == [text("hi")]


# --- hypothesis: any marking of a conversation's parts lands on the marked blocks --------------

words = st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=8)
marks = st.sampled_from([None, None, EPHEMERAL, {"type": "ephemeral", "ttl": "1h"}])


@st.composite
def marked_conversations(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[tuple[str, Any]]]:
    """A conversation whose text parts may carry cache_control (at most the API's four),
    and the marked texts in order, with their marks."""
    counter = iter(range(1000))

    def parts() -> list[dict[str, Any]]:
        return [
            text(f"{draw(words)}-{next(counter)}", draw(marks))
            for _ in range(draw(st.integers(1, 3)))
        ]

    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append(
            {"role": draw(st.sampled_from(["system", "developer"])), "content": parts()}
        )
    messages.append({"role": "user", "content": parts()})
    for _ in range(draw(st.integers(0, 3))):
        messages.append(
            {
                "role": "assistant",
                "content": parts(),
                "tool_calls": draw(st.sampled_from([[], None])),
            }
        )
        messages.append({"role": "user", "content": parts()})
    marked = [
        (part["text"], part["cache_control"])
        for message in messages
        for part in message["content"]
        if "cache_control" in part
    ]
    return messages, marked


@settings(max_examples=150, deadline=None)
@given(marked_conversations())
def test_every_breakpoint_stays_on_the_block_it_marked(
    case: tuple[list[dict[str, Any]], list[tuple[str, Any]]],
) -> None:
    messages, marked = case
    body = {"model": "m", "messages": copy.deepcopy(messages)}
    out = openai_request_to_anthropic(body).body
    # More than the API's four breakpoints are forwarded all the same: the upstream
    # decides (antigravity-claude-proxy ignores cache_control).
    if len(marked) <= anthropic_standin.MAX_CACHE_BREAKPOINTS:
        anthropic_standin.validate(out)
    system = out.get("system", "")
    blocks = system if isinstance(system, list) else []
    blocks = [*blocks, *(block for turn in out["messages"] for block in turn["content"])]
    assert [(b["text"], b["cache_control"]) for b in blocks if "cache_control" in b] == marked
    roles = ("system", "developer")
    if isinstance(system, str):  # no mark in the system prompt: one string, as before
        texts = [p["text"] for m in messages if m["role"] in roles for p in m["content"]]
        assert system == "\n\n".join(texts)
        messages = [m for m in messages if m["role"] not in roles]
    unmarked = [p["text"] for m in messages for p in m["content"] if "cache_control" not in p]
    assert [b["text"] for b in blocks if "cache_control" not in b] == unmarked

"""Unit tests for apipod_proxy.translate.streams: SSE streams in both directions.

The Anthropic input streams are the Anthropic stand-in's own events; the translated
OpenAI chunks go through the openai SDK's stream accumulator, and the translated
Anthropic events through the anthropic SDK's, so the chunk sequence is checked by the
code clients run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk
from pydantic import TypeAdapter

from apipod_proxy.translate import (
    AnthropicPassthroughStream,
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
)
from apipod_proxy.translate.streams import MAX_EVENT_BYTES
from apipod_proxy.upstream.quota import QUOTA_CODE
from tests.support.anthropic_standin import EMPTY_ANSWER, Answer, sse, stream_events
from tests.support.strategies import mutate

TOOL = {"id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "days": [1, 2]}}
QUOTA = "You have exhausted your capacity on claude-sonnet-4-5. Quota will reset after 1m0s."


def answer(**fields: Any) -> Answer:
    fields.setdefault("text", "Hello there, world.")
    return Answer("claude-sonnet-4-5", 25, fields.pop("cache_read", 0), **fields)


def upstream(**fields: Any) -> bytes:
    return b"".join(stream_events(answer(**fields), json_piece=5))


def feed(translator: Callable[[bytes], list[bytes]], pieces: Iterable[bytes]) -> bytes:
    """Everything the translator forwards, checking the stream-callable contract."""
    out = b""
    for piece in [*pieces, b""]:
        result = translator(piece)
        assert isinstance(result, list) and len(result) <= 1
        assert all(isinstance(item, bytes) and item for item in result)  # b"" ends a body
        out += b"".join(result)
    return out


def data_lines(out: bytes) -> list[Any]:
    """The payloads of an OpenAI stream, with "[DONE]" as a string."""
    assert out.endswith(b"\n\n")
    payloads = []
    for event in out.decode().split("\n\n")[:-1]:
        assert event.startswith("data: "), event
        text = event[6:]
        payloads.append(text if text == "[DONE]" else json.loads(text))
    return payloads


def accumulate(payloads: list[Any]) -> Any:
    state = ChatCompletionStreamState()
    for payload in payloads:
        if payload != "[DONE]":
            state.handle_chunk(ChatCompletionChunk.model_validate(payload))
    return state.get_final_completion()


def translate(data: bytes, include_usage: bool = False, pieces: int = 1) -> bytes:
    translator = AnthropicToOpenAIStream("cursor-pro-sonnet", include_usage, created=1)
    size = max(1, -(-len(data) // pieces))
    return feed(translator, [data[i : i + size] for i in range(0, len(data), size)])


def test_text_stream() -> None:
    payloads = data_lines(translate(upstream()))
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == "cursor-pro-sonnet" and c["created"] == 1 for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert all("usage" not in c for c in chunks)  # not asked: no usage anywhere
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Hello there, world."
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    completion = accumulate(payloads)
    assert completion.choices[0].message.content == "Hello there, world."
    assert completion.choices[0].finish_reason == "stop"


def test_include_usage_adds_the_usage_chunk_with_cache_tokens() -> None:
    payloads = data_lines(translate(upstream(cache_read=100), include_usage=True))
    *chunks, usage_chunk, done = payloads
    assert done == "[DONE]"
    assert all(c["usage"] is None for c in chunks)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": 125,
        "completion_tokens": 3,
        "total_tokens": 128,
        "prompt_tokens_details": {"cached_tokens": 100},
    }


def test_usage_is_exposed_for_accounting() -> None:
    translator = AnthropicToOpenAIStream("m", include_usage=False)
    feed(translator, [upstream(cache_read=100)])
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (125, 3)
    assert translator.usage.cached_tokens == 100


def test_thinking_goes_to_reasoning_content_never_content() -> None:
    payloads = data_lines(translate(upstream(thinking="Let me think.", signature="sig_abc")))
    deltas = [c["choices"][0]["delta"] for c in payloads[:-1]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Let me think."
    assert "".join(d.get("content", "") for d in deltas) == "Hello there, world."
    assert b"sig_abc" not in translate(upstream(thinking="x", signature="sig_abc"))


def test_tool_call_stream() -> None:
    payloads = data_lines(translate(upstream(text="Checking.", tool=TOOL)))
    deltas = [c["choices"][0]["delta"] for c in payloads[:-1]]
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    pieces = [call["function"]["arguments"] for call in calls[1:]]
    assert len(pieces) > 3  # arguments arrive in pieces, as they come
    assert all(
        call == {"index": 0, "function": {"arguments": p}}
        for call, p in zip(calls[1:], pieces, strict=True)
    )
    assert json.loads("".join(pieces)) == TOOL["input"]
    assert payloads[-2]["choices"][0]["finish_reason"] == "tool_calls"
    completion = accumulate(payloads)
    message = completion.choices[0].message
    assert message.content == "Checking."
    assert message.tool_calls[0].id == "toolu_1"
    assert json.loads(message.tool_calls[0].function.arguments) == TOOL["input"]


def test_two_tool_calls_get_their_own_indexes() -> None:
    events = stream_events(answer(text="x", tool=TOOL))
    # a second tool_use block: rebuild the events with two tools by hand
    second = [
        sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
            },
        ),
        sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": "{}"},
            },
        ),
        sse("content_block_stop", {"type": "content_block_stop", "index": 2}),
    ]
    data = b"".join(events[:-2] + second + events[-2:])
    message = accumulate(data_lines(translate(data))).choices[0].message
    assert [(c.id, c.function.name) for c in message.tool_calls] == [
        ("toolu_1", "get_weather"),
        ("toolu_2", "now"),
    ]


def test_ping_is_dropped_and_crlf_is_understood() -> None:
    events = stream_events(answer())
    data = events[0] + b'event: ping\ndata: {"type": "ping"}\n\n' + b"".join(events[1:])
    assert translate(data) == translate(b"".join(events))
    crlf = data.replace(b"\n", b"\r\n")
    assert translate(crlf) == translate(b"".join(events))


def test_byte_by_byte_equals_all_at_once() -> None:
    data = upstream(thinking="Hmm.", signature="s", tool=TOOL, cache_read=7)
    whole = translate(data, include_usage=True)
    translator = AnthropicToOpenAIStream("cursor-pro-sonnet", True, created=1)
    assert feed(translator, [data[i : i + 1] for i in range(len(data))]) == whole


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_split_gives_the_same_output(data: st.DataObject) -> None:
    stream = upstream(thinking="Hmm.", signature="s", tool=TOOL, cache_read=7)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=40)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    translator = AnthropicToOpenAIStream("cursor-pro-sonnet", True, created=1)
    assert feed(translator, pieces) == translate(stream, include_usage=True)


def test_each_event_is_forwarded_as_soon_as_it_is_complete() -> None:
    events = stream_events(answer())
    translator = AnthropicToOpenAIStream("m")
    assert translator(events[0][:10]) == []
    [first] = translator(events[0][10:])
    assert b'"role":"assistant"' in first
    assert translator(events[1]) == []  # content_block_start of text carries nothing
    half = len(events[2]) // 2
    assert translator(events[2][:half]) == []
    [text] = translator(events[2][half:] + events[3][:5])
    assert b'"content":"Hello "' in text


def test_error_event_becomes_an_error_chunk_and_ends_the_stream() -> None:
    events = stream_events(answer())
    error = sse(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    )
    translator = AnthropicToOpenAIStream("m")
    out = feed(translator, [events[0] + events[2] + error + events[3]])
    payloads = data_lines(out)
    assert payloads[-1] == {
        "error": {
            "message": "busy",
            "type": "overloaded_error",
            "param": None,
            "code": "overloaded_error",
        }
    }
    assert "[DONE]" not in payloads
    assert translator.done and translator.quota is None
    assert translator(b"more bytes\n\n") == []


def test_quota_error_in_a_stream_carries_the_quota_code() -> None:
    error = sse(
        "error", {"type": "error", "error": {"type": "invalid_request_error", "message": QUOTA}}
    )
    translator = AnthropicToOpenAIStream("m", include_usage=True)
    [payload] = data_lines(feed(translator, [error]))
    assert payload["error"]["code"] == QUOTA_CODE
    assert payload["error"]["type"] == "rate_limit_error"
    assert payload["error"]["message"] == QUOTA
    assert translator.quota is not None and translator.quota.reset_seconds == 60.0


def test_a_cut_stream_ends_with_an_error_chunk() -> None:
    events = stream_events(answer())
    translator = AnthropicToOpenAIStream("m")
    payloads = data_lines(feed(translator, events[:4]))
    assert payloads[-1]["error"]["code"] == "upstream_stream_incomplete"


def test_a_stream_cut_after_message_delta_still_completes() -> None:
    events = stream_events(answer())
    payloads = data_lines(translate(b"".join(events[:-1]), include_usage=True))
    assert payloads[-1] == "[DONE]"
    assert payloads[-2]["usage"]["completion_tokens"] == 3


def test_an_unterminated_last_event_is_still_read() -> None:
    data = b"".join(stream_events(answer()))
    assert translate(data.rstrip(b"\n")) == translate(data)


def test_the_empty_answer_passes_as_text_with_no_tokens() -> None:
    empty = Answer("gemini-3-flash", 0, 0, text=EMPTY_ANSWER, zero_usage=True)
    translator = AnthropicToOpenAIStream("m", include_usage=True)
    payloads = data_lines(feed(translator, stream_events(empty)))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in payloads[:-2])
    assert text == EMPTY_ANSWER
    assert payloads[-2]["usage"]["prompt_tokens"] == 0
    assert payloads[-2]["usage"]["completion_tokens"] == 0
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (0, 0)


def test_an_endless_event_ends_the_stream_with_an_error() -> None:
    translator = AnthropicToOpenAIStream("m")
    out = b""
    for _ in range(MAX_EVENT_BYTES // 65536 + 2):
        out += b"".join(translator(b"data: " + b"x" * 65536))
    assert json.loads(out[6:])["error"]["type"] == "api_error"
    assert translator.done


def test_garbage_events_are_skipped() -> None:
    events = stream_events(answer())
    data = events[0] + b"data: {not json\n\n: a comment\n\n" + b"".join(events[1:])
    assert translate(data) == translate(b"".join(events))


def test_model_defaults_to_the_upstreams() -> None:
    translator = AnthropicToOpenAIStream()
    payloads = data_lines(feed(translator, stream_events(answer())))
    assert payloads[0]["model"] == "claude-sonnet-4-5"
    assert payloads[0]["id"].startswith("chatcmpl-msg_standin")


# --- OpenAI -> Anthropic -------------------------------------------------------------


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    payload: dict[str, Any] = {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def openai_stream(tool: bool = False, reasoning: bool = False) -> bytes:
    parts = [chunk({"role": "assistant", "content": ""})]
    if reasoning:
        parts.append(chunk({"reasoning_content": "Thinking."}))
    parts += [chunk({"content": "Hello "}), chunk({"content": "there."})]
    if tool:
        head = {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "f", "arguments": ""},
        }
        parts.append(chunk({"tool_calls": [head]}))
        parts += [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in ['{"ci', 'ty": ', '"Paris"}']
        ]
    parts.append(chunk({}, "tool_calls" if tool else "stop"))
    usage = {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}
    usage["prompt_tokens_details"] = {"cached_tokens": 10}  # type: ignore[assignment]
    parts.append(chunk(None, usage=usage))
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def anthropic_events(out: bytes) -> list[dict[str, Any]]:
    events = []
    for raw in out.decode().split("\n\n")[:-1]:
        name, data = raw.split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}"
        events.append(payload)
    return events


def snapshot(events: list[dict[str, Any]]) -> Any:
    adapter: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
    current, buffers = None, {}
    for event in events:
        current = accumulate_event(
            event=adapter.validate_python(event), current_snapshot=current, json_bufs=buffers
        )
    return current


def test_reverse_text_stream() -> None:
    translator = OpenAIToAnthropicStream("claude-sonnet-4-5")
    events = anthropic_events(feed(translator, [openai_stream(reasoning=True)]))
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    message = snapshot(events)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[1].text == "Hello there."
    assert message.stop_reason == "end_turn"
    assert events[-2]["usage"] == {
        "input_tokens": 20,
        "cache_read_input_tokens": 10,
        "output_tokens": 9,
    }
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (30, 9)


def test_reverse_tool_stream() -> None:
    events = anthropic_events(feed(OpenAIToAnthropicStream("m"), [openai_stream(tool=True)]))
    message = snapshot(events)
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[1].id == "call_1"
    assert message.content[1].input == {"city": "Paris"}
    assert message.stop_reason == "tool_use"


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_reverse_any_split_gives_the_same_output(data: st.DataObject) -> None:
    stream = openai_stream(tool=True, reasoning=True)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=30)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert feed(OpenAIToAnthropicStream("m"), pieces) == feed(
        OpenAIToAnthropicStream("m"), [stream]
    )


def test_reverse_error_chunk_and_quota() -> None:
    error = (
        b"data: "
        + json.dumps(
            {"error": {"message": QUOTA, "type": "rate_limit_error", "code": None}}
        ).encode()
        + b"\n\n"
    )
    translator = OpenAIToAnthropicStream("m")
    events = anthropic_events(feed(translator, [chunk({"content": "a"}), error]))
    assert events[-1] == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": QUOTA, "code": QUOTA_CODE},
    }
    assert translator.quota is not None and translator.quota.reset_seconds == 60.0


def test_reverse_cut_stream() -> None:
    events = anthropic_events(feed(OpenAIToAnthropicStream("m"), [chunk({"content": "a"})]))
    assert events[-1]["type"] == "error"


def test_round_trip_openai_anthropic_openai() -> None:
    """OpenAI chunks -> Anthropic events -> OpenAI chunks keep text, tool call and usage."""
    anthropic = feed(OpenAIToAnthropicStream("m"), [openai_stream(tool=True)])
    back = data_lines(feed(AnthropicToOpenAIStream("m", include_usage=True), [anthropic]))
    completion = accumulate(back)
    message = completion.choices[0].message
    assert message.content == "Hello there."
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Paris"}
    assert back[-2]["usage"]["prompt_tokens"] == 30
    assert back[-2]["usage"]["prompt_tokens_details"] == {"cached_tokens": 10}


@pytest.mark.parametrize("finish", ["stop", "length", "content_filter"])
def test_reverse_finish_reasons(finish: str) -> None:
    data = chunk({"content": "a"}) + chunk({}, finish) + b"data: [DONE]\n\n"
    events = anthropic_events(feed(OpenAIToAnthropicStream("m"), [data]))
    expected = {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal"}[finish]
    assert events[-2]["delta"]["stop_reason"] == expected


# --- Anthropic passthrough -----------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_passthrough_forwards_events_unchanged_and_counts_usage(data: st.DataObject) -> None:
    stream = upstream(thinking="Hmm.", signature="s", tool=TOOL, cache_read=7)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=30)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    translator = AnthropicPassthroughStream()
    assert feed(translator, pieces) == stream
    assert (translator.usage.prompt_tokens, translator.usage.cached_tokens) == (32, 7)
    assert translator.usage.completion_tokens == answer(thinking="Hmm.", tool=TOOL).output_tokens
    assert translator.finished and translator.quota is None


def test_passthrough_gives_a_quota_error_the_quota_code() -> None:
    events = stream_events(answer())
    error = sse(
        "error", {"type": "error", "error": {"type": "invalid_request_error", "message": QUOTA}}
    )
    translator = AnthropicPassthroughStream()
    out = feed(translator, [events[0], error])
    assert out.startswith(events[0])
    name, data = out[len(events[0]) :].decode().strip().split("\n")
    assert name == "event: error"
    assert json.loads(data.removeprefix("data: "))["error"] == {
        "type": "rate_limit_error",
        "message": QUOTA,
        "code": QUOTA_CODE,
    }
    assert translator.quota is not None and translator.quota.reset_seconds == 60


def test_passthrough_leaves_other_errors_alone() -> None:
    error = sse(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    )
    translator = AnthropicPassthroughStream()
    assert feed(translator, [error]) == error
    assert translator.error == {"type": "overloaded_error", "message": "busy"}
    assert translator.quota is None


ECHOED = f'Invalid value "{QUOTA.replace("1m0s", "8760h0m0s")}"'


@pytest.mark.parametrize(
    ("make", "error"),
    [
        # an upstream quoting the client's field after other text, in the quota's own type
        (AnthropicPassthroughStream, {"type": "invalid_request_error", "message": ECHOED}),
        (
            lambda: AnthropicToOpenAIStream("m"),
            {"type": "invalid_request_error", "message": ECHOED},
        ),
        (lambda: OpenAIToAnthropicStream("m"), {"type": "rate_limit_error", "message": ECHOED}),
        # the quota sentence in a type that is not a quota answer's
        (AnthropicPassthroughStream, {"type": "api_error", "message": QUOTA}),
        (lambda: AnthropicToOpenAIStream("m"), {"type": "overloaded_error", "message": QUOTA}),
        (lambda: OpenAIToAnthropicStream("m"), {"message": QUOTA}),
    ],
)
def test_only_a_structured_in_stream_error_is_a_quota_signal(
    make: Callable[[], Any], error: dict[str, Any]
) -> None:
    translator = make()
    if isinstance(translator, OpenAIToAnthropicStream):
        event = b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
    else:
        event = sse("error", {"type": "error", "error": error})
    out = feed(translator, [event])
    assert translator.quota is None
    assert QUOTA_CODE.encode() not in out


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_terminators_split_between_reads_are_found(newline: bytes) -> None:
    data = upstream(tool=TOOL).replace(b"\n", newline)
    whole = translate(data, include_usage=True)
    for size in (1, 2, 3, 5):
        translator = AnthropicToOpenAIStream("cursor-pro-sonnet", True, created=1)
        pieces = [data[i : i + size] for i in range(0, len(data), size)]
        assert feed(translator, pieces) == whole


# --- hostile or odd upstream bytes never break the stream callable -------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
event_types = st.sampled_from(
    [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    ]
)


REAL_EVENTS = [
    json.loads(event.split(b"data: ", 1)[1])
    for event in stream_events(answer(thinking="t", signature="s", tool=TOOL), json_piece=5)
]
REAL_CHUNKS = [
    json.loads(event[6:]) for event in openai_stream(tool=True, reasoning=True).split(b"\n\n")[:-2]
]


@st.composite
def odd_events(draw: st.DrawFn) -> bytes:
    payload = draw(st.sampled_from(REAL_EVENTS + REAL_CHUNKS))
    if draw(st.booleans()):
        payload = mutate(draw, payload, json_values, max_depth=3)
    name = payload.get("type", "x") if isinstance(payload, dict) else "x"
    return sse(str(name), payload)  # type: ignore[arg-type]


@pytest.mark.fuzz
@settings(max_examples=200, deadline=None)
@given(
    st.lists(odd_events() | st.binary(max_size=30), max_size=20),
    st.sampled_from([AnthropicToOpenAIStream, OpenAIToAnthropicStream, AnthropicPassthroughStream]),
)
def test_odd_input_never_raises(pieces: list[bytes], kind: type) -> None:
    feed(kind(), pieces)


def test_unicode_line_separators_inside_text_survive() -> None:
    text = "a\u2028b\u2029c\x85d\x1ce"
    raw = stream_events(answer(text=text))
    # the upstream (Node) writes these characters unescaped
    data = (
        b"".join(raw).replace(b"\\u2028", "\u2028".encode()).replace(b"\\u2029", "\u2029".encode())
    )
    assert "\u2028".encode() in data
    payloads = data_lines(translate(data))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in payloads[:-1]) == text
    assert feed(AnthropicPassthroughStream(), [data]) == data

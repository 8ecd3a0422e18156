"""metering.py: usage merged per field on every path, and estimates of what passed through.

The shapes marked "real" are antigravity-claude-proxy 2.0.4's, as measured in
shared/notes/wire-formats.md: `message_start.message.usage` has `input_tokens` (the
prompt minus cached tokens) and `cache_read_input_tokens`; `message_delta.usage` has
`output_tokens` and both cache fields, and no `input_tokens`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apipod_proxy.metering import Meter, Usage, count_raw, estimate, meter_event, meter_of_body
from apipod_proxy.pipeline.usage import SseWatcher, usage_from_body
from apipod_proxy.translate.responses import anthropic_response_to_openai
from apipod_proxy.translate.streams import AnthropicPassthroughStream, AnthropicToOpenAIStream

REAL_START = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 0},
    },
}
REAL_DELTA = {
    "type": "message_delta",
    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
    "usage": {"output_tokens": 3, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 0},
}
TEXT = "Hello there, world."


def sse(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


def real_stream(thinking: str = "", with_delta: bool = True) -> bytes:
    events = [sse("message_start", REAL_START)]
    blocks: list[tuple[str, dict[str, Any]]] = []
    if thinking:
        blocks.append(("thinking", {"type": "thinking_delta", "thinking": thinking}))
    blocks.append(("text", {"type": "text_delta", "text": TEXT}))
    for index, (kind, delta) in enumerate(blocks):
        empty = {"type": kind, kind: ""}
        events.append(
            sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": empty},
            )
        )
        events.append(
            sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        )
        events.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    if with_delta:
        events.append(sse("message_delta", REAL_DELTA))
        events.append(sse("message_stop", {"type": "message_stop"}))
    return b"".join(events)


def pieces_of(data: st.DataObject, stream: bytes) -> list[bytes]:
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=40)))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


def fed(stream: Any, pieces: list[bytes]) -> bytes:
    out = b""
    for piece in [*pieces, b""]:
        result = stream(piece)
        out += result if isinstance(result, bytes) else b"".join(result)
    return out


# --- the merge ---------------------------------------------------------------------------


def test_the_real_upstreams_stream_shapes_give_prompt_25_cached_5_completion_3() -> None:
    meter = Meter()
    meter_event(meter, REAL_START)
    meter_event(meter, REAL_DELTA)
    assert meter.usage() == Usage(25, 3, 5)
    assert meter.openai() == {
        "prompt_tokens": 25,
        "completion_tokens": 3,
        "total_tokens": 28,
        "prompt_tokens_details": {"cached_tokens": 5},
    }
    assert meter.anthropic() == {
        "input_tokens": 20,
        "cache_read_input_tokens": 5,
        "output_tokens": 3,
    }


def test_the_real_upstreams_whole_answer_and_its_translation() -> None:
    body = {
        "id": "msg_1",
        "content": [{"type": "text", "text": TEXT}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 3},
    }
    assert usage_from_body(json.dumps(body).encode()) == Usage(25, 3, 5)
    shown = anthropic_response_to_openai(body)["usage"]
    assert (shown["prompt_tokens"], shown["prompt_tokens_details"]["cached_tokens"]) == (25, 5)


ANTHROPIC_FIELDS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


@st.composite
def cumulative_events(draw: st.DrawFn) -> list[dict[str, int]]:
    """Usage objects as a stream sends them: each holds some fields, every field's value
    never goes down from one event to the next (they are cumulative)."""
    names = (*ANTHROPIC_FIELDS, "output_tokens")
    current = dict.fromkeys(names, 0)
    events = []
    for _ in range(draw(st.integers(1, 6))):
        present = draw(st.sets(st.sampled_from(names), min_size=1))
        event = {}
        for name in sorted(present):
            current[name] += draw(st.integers(0, 1000))
            event[name] = current[name]
        events.append(event)
    return events


@settings(max_examples=300, deadline=None)
@given(cumulative_events())
def test_each_field_keeps_its_last_value_and_the_prompt_is_the_sum_of_the_three(
    events: list[dict[str, int]],
) -> None:
    meter = Meter()
    meter.add_anthropic(events[0], final=False)  # message_start
    for event in events[1:]:
        meter.add_anthropic(event)  # message_delta
    last = {}
    for event in events:
        last.update(event)
    usage = meter.usage()
    assert usage.prompt_tokens == sum(last.get(name, 0) for name in ANTHROPIC_FIELDS)
    assert usage.cached_tokens == last.get("cache_read_input_tokens", 0)
    assert usage.completion_tokens == last.get("output_tokens", 0)
    assert not usage.estimated


@settings(max_examples=200, deadline=None)
@given(st.permutations(["prompt", "completion", "cached", "reasoning"]), st.booleans())
def test_openai_usage_is_merged_per_field_whatever_chunk_carries_it(
    order: list[str], on_finish: bool
) -> None:
    """Usage split over chunks in any order (or all of it on the finish chunk)."""
    parts = {
        "prompt": {"prompt_tokens": 25},
        "completion": {"completion_tokens": 9},
        "cached": {"prompt_tokens_details": {"cached_tokens": 5}},
        "reasoning": {"completion_tokens_details": {"reasoning_tokens": 6}},
    }
    meter = Meter()
    if on_finish:
        whole: dict[str, Any] = {}
        for name in order:
            whole.update(parts[name])
        meter_event(meter, {"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": whole})
    else:
        for name in order:
            meter_event(meter, {"choices": [], "usage": parts[name]})
    usage = meter.usage()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (25, 9, 5)
    # Reported reasoning is the upstream's own figure, part of completion_tokens.
    assert (usage.reasoning_tokens, usage.reasoning_estimated) == (6, False)
    assert meter.openai()["completion_tokens_details"] == {"reasoning_tokens": 6}


def test_a_zero_never_erases_a_count_already_reported() -> None:
    meter = Meter()
    meter.add_anthropic({"input_tokens": 20, "output_tokens": 1}, final=False)
    meter.add_anthropic({"input_tokens": 0, "output_tokens": 3})
    assert meter.usage() == Usage(20, 3, 0)


# --- every stream path: the same figures, however the bytes are cut --------------------


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_every_watcher_merges_the_real_shapes_whatever_the_splits(data: st.DataObject) -> None:
    stream = real_stream()
    pieces = pieces_of(data, stream)
    passthrough = AnthropicPassthroughStream()
    assert fed(passthrough, pieces) == stream
    watcher = SseWatcher()
    assert fed(watcher, pieces) == stream
    translator = AnthropicToOpenAIStream("m", include_usage=True)
    out = fed(translator, pieces)
    for stream_usage in (passthrough.usage, watcher.usage, translator.usage):
        assert stream_usage == Usage(25, 3, 5)
    [shown] = [
        json.loads(line[6:])["usage"]
        for line in out.split(b"\n")
        if line.startswith(b"data: {") and b'"choices":[]' in line
    ]
    assert (shown["prompt_tokens"], shown["completion_tokens"]) == (25, 3)
    assert shown["prompt_tokens_details"] == {"cached_tokens": 5}


# --- reasoning ---------------------------------------------------------------------------


def test_thinking_delivered_is_estimated_reasoning_apart_from_the_reported_output() -> None:
    thinking = "Let me think about this for a while."
    for stream in (AnthropicPassthroughStream(), AnthropicToOpenAIStream("m"), SseWatcher()):
        fed(stream, [real_stream(thinking)])
        usage = stream.usage
        assert (usage.prompt_tokens, usage.completion_tokens) == (25, 3)
        assert usage.reasoning_tokens == math.ceil(len(thinking) / 4)
        assert usage.reasoning_estimated and not usage.estimated


def test_estimated_reasoning_is_billed_only_when_asked_and_never_twice() -> None:
    estimated = Usage(25, 3, 5, reasoning_tokens=9, reasoning_estimated=True)
    assert estimated.billable_reasoning(False) == 0
    assert estimated.billable_reasoning(True) == 9
    reported = Usage(25, 3, 5, reasoning_tokens=9)  # already inside completion_tokens
    assert reported.billable_reasoning(True) == 0
    cut = Usage(25, 12, 5, reasoning_tokens=9, reasoning_estimated=True, estimated=True)
    assert cut.billable_reasoning(True) == 0  # the estimated completion counts the thinking


# --- a stream cut before its usage -------------------------------------------------------


def test_the_estimator_is_characters_over_four_rounded_up() -> None:
    assert [estimate(n) for n in (0, 1, 3, 4, 5, 8, 9)] == [0, 1, 1, 1, 2, 2, 3]


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_a_stream_cut_before_message_delta_bills_the_delivered_text(data: st.DataObject) -> None:
    thinking = "Hmm, hmm."
    stream = real_stream(thinking, with_delta=False)
    pieces = pieces_of(data, stream)
    for watcher in (AnthropicPassthroughStream(), SseWatcher(), AnthropicToOpenAIStream("m")):
        for piece in pieces:  # the client hung up: no end-of-stream call
            watcher(piece)
        usage = watcher.usage
        assert (usage.prompt_tokens, usage.cached_tokens) == (25, 5)  # from message_start
        assert usage.completion_tokens == math.ceil((len(TEXT) + len(thinking)) / 4)
        assert usage.estimated


def test_no_usage_at_all_estimates_the_prompt_from_the_request_body() -> None:
    watcher = SseWatcher()
    watcher.meter.request_chars = 101
    chunk = {"choices": [{"delta": {"content": "abcdef"}, "finish_reason": None}]}
    watcher(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    assert watcher.usage == Usage(26, 2, 0, estimated=True)


def test_a_whole_answer_and_a_complete_stream_are_never_estimated() -> None:
    assert (
        not meter_of_body({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}).usage().estimated
    )
    meter = Meter()
    meter.request_chars = 500
    meter_event(meter, REAL_START)
    meter.delivered(TEXT)
    meter_event(meter, REAL_DELTA)
    assert meter.usage() == Usage(25, 3, 5)


def chunk(delta: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta}]}


def block_delta(delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": 0, "delta": delta}


@pytest.mark.parametrize(
    ("payload", "delivered", "thought"),
    [
        (chunk({"content": 'Hi "you"\n'}), 9, 0),
        (chunk({"content": "中文"}), 2, 0),
        (chunk({"reasoning_content": "hmm"}), 0, 3),
        (chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]}), 7, 0),
        (chunk({"content": None, "role": "assistant"}), 0, 0),
        (block_delta({"type": "text_delta", "text": "abc"}), 3, 0),
        (block_delta({"type": "thinking_delta", "thinking": "ab"}), 0, 2),
        (block_delta({"type": "input_json_delta", "partial_json": '{"x'}), 3, 0),
        ({"type": "content_block_start", "content_block": {"type": "text", "text": ""}}, 0, 0),
    ],
)
@pytest.mark.parametrize("ascii_only", [True, False])
@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])
def test_raw_events_are_counted_as_their_parsed_content(
    payload: dict[str, Any],
    delivered: int,
    thought: int,
    ascii_only: bool,
    separators: tuple[str, str],
) -> None:
    """count_raw (no JSON parse) counts the characters the parsed event holds, however
    the upstream writes its JSON (escaped non-ASCII or not, spaces or not)."""
    text = json.dumps(payload, ensure_ascii=ascii_only, separators=separators)
    raw, parsed = Meter(), Meter()
    count_raw(raw, b"data: " + text.encode() + b"\n\n")
    meter_event(parsed, payload)
    assert (raw.delivered_chars, raw.thinking_chars) == (delivered, thought)
    assert (parsed.delivered_chars, parsed.thinking_chars) == (delivered, thought)

"""Unit tests for apipod_proxy.pipeline.usage: usage in bodies and streams, and the recorder."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from apipod_proxy import clock
from apipod_proxy.pipeline import usage
from apipod_proxy.pipeline.usage import (
    MAX_EVENT_BYTES,
    SseWatcher,
    Usage,
    UsageRecorder,
    status_class,
    usage_from_body,
)
from apipod_proxy.storage.records import UsageCounts
from tests.support.gateway import LogRecords


def body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def sse(payload: Any, event: str | None = None, newline: str = "\n") -> bytes:
    lines = ([f"event: {event}"] if event else []) + [f"data: {json.dumps(payload)}"]
    return (newline.join(lines) + newline + newline).encode()


def content_chunk(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def openai_stream(newline: str = "\n") -> tuple[bytes, bytes]:
    """An OpenAI stream with its usage-only chunk, and the same stream without it."""
    head = sse(content_chunk("Hel"), newline=newline) + sse(content_chunk("lo"), newline=newline)
    usage_event = sse(usage_chunk(12, 34), newline=newline)
    done = f"data: [DONE]{newline}{newline}".encode()
    return head + usage_event + done, head + done


def feed(watcher: SseWatcher, *chunks: bytes) -> list[bytes | list[bytes]]:
    """Every chunk, then the end of the stream; what the watcher returned for each."""
    return [watcher(chunk) for chunk in (*chunks, b"")]


def sent(results: list[bytes | list[bytes]]) -> bytes:
    """What mitmproxy would have sent the client."""
    out = b""
    for result in results:
        out += result if isinstance(result, bytes) else b"".join(result)
    return out


def splits(data: bytes) -> Iterator[tuple[bytes, ...]]:
    """`data` cut in two at every byte offset (never an empty chunk)."""
    for offset in range(1, len(data)):
        yield data[:offset], data[offset:]


def assert_no_empty_bytes(results: list[bytes | list[bytes]]) -> None:
    for result in results:
        if isinstance(result, bytes):
            assert result != b""
        else:
            assert isinstance(result, list)
            assert all(isinstance(item, bytes) and item for item in result)


# --- usage_from_body -----------------------------------------------------------------


def test_usage_from_an_openai_body() -> None:
    found = usage_from_body(
        body(
            {
                "choices": [{"message": {"content": "hi"}}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            }
        )
    )
    assert found == Usage(prompt_tokens=11, completion_tokens=7)


def test_usage_from_an_anthropic_body_sums_cache_tokens_into_prompt() -> None:
    found = usage_from_body(
        body(
            {
                "type": "message",
                "content": [{"type": "text", "text": "hi"}],
                "usage": {
                    "input_tokens": 10,
                    "cache_creation_input_tokens": 200,
                    "cache_read_input_tokens": 3000,
                    "output_tokens": 42,
                },
            }
        )
    )
    assert found == Usage(prompt_tokens=3210, completion_tokens=42, cached_tokens=3000)


def test_usage_from_an_anthropic_body_with_null_cache_fields() -> None:
    found = usage_from_body(
        body(
            {
                "usage": {
                    "input_tokens": 5,
                    "cache_creation_input_tokens": None,
                    "cache_read_input_tokens": None,
                    "output_tokens": 6,
                }
            }
        )
    )
    assert found == Usage(5, 6)


@pytest.mark.parametrize(
    "raw",
    [
        body({"choices": []}),
        body({"usage": None}),
        body({"usage": "12 tokens"}),
        body({"usage": [1, 2]}),
        body({"usage": {}}),
        b"",
        b'{"usage": {"prompt_tokens": 3',
        b'not json but mentions "usage"',
        body([{"usage": {"prompt_tokens": 1, "completion_tokens": 2}}]),
        body("usage"),
        b'{"usage": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=[
        "no-usage",
        "usage-null",
        "usage-string",
        "usage-list",
        "usage-empty",
        "empty",
        "truncated",
        "not-json",
        "json-array",
        "json-string",
        "deeply-nested",
    ],
)
def test_usage_from_body_without_readable_usage_is_zero(raw: bytes) -> None:
    assert usage_from_body(raw) == Usage(0, 0)


@pytest.mark.parametrize("bad", [-5, True, 2.5, "7", None])
def test_usage_from_body_ignores_values_that_are_not_positive_ints(bad: object) -> None:
    found = usage_from_body(body({"usage": {"prompt_tokens": bad, "completion_tokens": 9}}))
    assert found == Usage(0, 9)


# --- SseWatcher: observing -----------------------------------------------------------------


def test_observer_returns_every_chunk_unchanged() -> None:
    stream, _ = openai_stream()
    watcher = SseWatcher()
    for offset in range(0, len(stream), 7):
        chunk = stream[offset : offset + 7]
        assert watcher(chunk) == chunk
    assert watcher(b"") == []


def test_observer_reads_usage_from_the_final_chunk() -> None:
    stream, _ = openai_stream()
    watcher = SseWatcher()
    feed(watcher, stream)
    assert watcher.usage == Usage(12, 34)


def test_observer_reads_usage_when_an_event_is_split_at_any_offset() -> None:
    stream, _ = openai_stream()
    for chunks in splits(stream):
        watcher = SseWatcher()
        results = feed(watcher, *chunks)
        assert watcher.usage == Usage(12, 34), chunks
        assert sent(results) == stream
        assert_no_empty_bytes(results)


def test_observer_reads_usage_when_fed_one_byte_at_a_time() -> None:
    stream, _ = openai_stream()
    watcher = SseWatcher()
    results = feed(watcher, *(stream[i : i + 1] for i in range(len(stream))))
    assert watcher.usage == Usage(12, 34)
    assert sent(results) == stream


def test_observer_handles_crlf_event_endings_at_any_offset() -> None:
    stream, _ = openai_stream(newline="\r\n")
    for chunks in splits(stream):
        watcher = SseWatcher()
        assert sent(feed(watcher, *chunks)) == stream
        assert watcher.usage == Usage(12, 34), chunks


def test_observer_without_a_usage_chunk_estimates_what_it_delivered() -> None:
    """No usage chunk (the client hung up first, or the upstream sent none): the output
    is the text delivered ("Hello": ceil(5 / 4) = 2 tokens), marked estimated."""
    _, stream = openai_stream()
    watcher = SseWatcher()
    assert sent(feed(watcher, stream)) == stream
    assert watcher.usage == Usage(0, 2, estimated=True)


def test_observer_ignores_an_unterminated_final_event() -> None:
    """Usage is read from complete events only; a cut-off stream's tail is not guessed."""
    watcher = SseWatcher()
    feed(watcher, sse(content_chunk("x")) + sse(usage_chunk(3, 4)).rstrip(b"\n"))
    assert watcher.usage == Usage(0, 1, estimated=True)  # "x" was delivered


# --- SseWatcher: stripping the usage chunk ---------------------------------------------------


def test_strip_removes_exactly_the_usage_only_chunk() -> None:
    stream, without = openai_stream()
    watcher = SseWatcher(strip_usage_chunk=True)
    results = feed(watcher, stream)
    assert sent(results) == without
    assert watcher.usage == Usage(12, 34)


def test_strip_at_every_split_offset() -> None:
    stream, without = openai_stream()
    for chunks in splits(stream):
        watcher = SseWatcher(strip_usage_chunk=True)
        results = feed(watcher, *chunks)
        assert sent(results) == without, chunks
        assert watcher.usage == Usage(12, 34)
        assert_no_empty_bytes(results)


def test_strip_with_crlf_event_endings_at_every_split_offset() -> None:
    stream, without = openai_stream(newline="\r\n")
    for chunks in splits(stream):
        watcher = SseWatcher(strip_usage_chunk=True)
        results = feed(watcher, *chunks)
        assert sent(results) == without, chunks
        assert watcher.usage == Usage(12, 34)


def test_strip_returns_an_empty_list_not_empty_bytes_when_only_usage_arrives() -> None:
    watcher = SseWatcher(strip_usage_chunk=True)
    result = watcher(sse(usage_chunk(1, 2)))
    assert result == []
    assert isinstance(result, list)
    assert watcher.usage == Usage(1, 2)


def test_strip_returns_complete_events_only() -> None:
    event = sse(content_chunk("hello"))
    watcher = SseWatcher(strip_usage_chunk=True)
    assert watcher(event[:10]) == []
    assert watcher(event[10:-1]) == []
    assert watcher(event[-1:] + event[:5]) == [event]
    assert watcher(event[5:] + event) == [event, event]


def test_strip_flushes_leftovers_at_the_end_of_the_stream() -> None:
    watcher = SseWatcher(strip_usage_chunk=True)
    assert watcher(sse(content_chunk("a")) + b"data: [DONE]") == [sse(content_chunk("a"))]
    assert watcher(b"") == [b"data: [DONE]"]
    assert watcher(b"") == []


def test_strip_end_of_stream_with_nothing_left_returns_an_empty_list() -> None:
    watcher = SseWatcher(strip_usage_chunk=True)
    watcher(sse(content_chunk("a")))
    result = watcher(b"")
    assert result == []
    assert isinstance(result, list)


def finish_chunk_with_usage(prompt: int, completion: int) -> dict[str, Any]:
    """A finish chunk carrying the usage, as some OpenAI-compatible servers send it."""
    finish = {**content_chunk(""), "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    return {**finish, "usage": usage_chunk(prompt, completion)["usage"]}


def test_strip_nulls_usage_that_rides_on_the_finish_chunk() -> None:
    """The client did not ask for usage: it is counted, and the client sees null."""
    chunk = finish_chunk_with_usage(5, 6)
    stream = sse(content_chunk("Hi")) + sse(chunk) + b"data: [DONE]\n\n"
    watcher = SseWatcher(strip_usage_chunk=True)
    out = sent(feed(watcher, stream))
    assert out == sse(content_chunk("Hi")) + sse({**chunk, "usage": None}) + b"data: [DONE]\n\n"
    assert watcher.usage == Usage(5, 6)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_strip_nulls_finish_chunk_usage_at_every_split_offset(newline: str) -> None:
    chunk = {**finish_chunk_with_usage(7, 8), "choices": [{"delta": {"content": "é"}}]}
    stream = sse(chunk, event="chunk", newline=newline) + sse(content_chunk("x"), newline=newline)
    expected = json.loads(json.dumps({**chunk, "usage": None}))
    for parts in splits(stream):
        watcher = SseWatcher(strip_usage_chunk=True)
        results = feed(watcher, *parts)
        assert_no_empty_bytes(results)
        out = sent(results).decode()
        first, second = out.split(newline + newline)[:2]
        assert first.split(newline)[0] == "event: chunk"
        assert json.loads(first.split(newline)[1].removeprefix("data: ")) == expected
        assert second.startswith("data: ")
        assert out.endswith(newline + newline)
        assert watcher.usage == Usage(7, 8)


def test_strip_writes_a_finish_chunk_with_a_lone_surrogate_escaped() -> None:
    """Issue 18: the finish chunk written again (usage nulled) had its own encoder, without
    the lone-surrogate fallback, so a cut emoji ("\\ud83d") raised UnicodeEncodeError
    inside the stream. Now it is written with \\u escapes, the rest as before."""
    chunk = {**finish_chunk_with_usage(5, 6), "choices": [{"delta": {"content": "é \ud83d"}}]}
    watcher = SseWatcher(strip_usage_chunk=True)
    out = sent(feed(watcher, sse(chunk)))
    assert out == sse({**chunk, "usage": None})  # json.dumps: ASCII, Python's separators
    assert watcher.usage == Usage(5, 6)


def test_without_strip_usage_on_the_finish_chunk_is_left_alone() -> None:
    """The client asked for usage itself: its stream is not touched."""
    stream = sse(finish_chunk_with_usage(5, 6)) + b"data: [DONE]\n\n"
    watcher = SseWatcher()
    assert sent(feed(watcher, stream)) == stream
    assert watcher.usage == Usage(5, 6)


def test_strip_keeps_a_chunk_with_empty_choices_and_null_usage() -> None:
    stream = sse({"id": "x", "choices": [], "usage": None})
    watcher = SseWatcher(strip_usage_chunk=True)
    assert sent(feed(watcher, stream)) == stream


def test_strip_keeps_events_that_merely_mention_usage() -> None:
    stream = sse(content_chunk('the word "usage" in text')) + b': comment "usage"\n\n'
    watcher = SseWatcher(strip_usage_chunk=True)
    assert sent(feed(watcher, stream)) == stream
    assert watcher.usage == Usage(0, 6, estimated=True)  # 24 characters delivered, no usage


# --- SseWatcher: Anthropic events --------------------------------------------------------------


def anthropic_stream() -> bytes:
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "usage": {
                "input_tokens": 20,
                "cache_creation_input_tokens": 100,
                "cache_read_input_tokens": 1000,
                "output_tokens": 1,
            },
        },
    }
    delta = {"type": "content_block_delta", "index": 0, "delta": {"text": "hi"}}
    return (
        sse(start, "message_start")
        + sse(delta, "content_block_delta")
        + sse({"type": "message_delta", "usage": {"output_tokens": 15}}, "message_delta")
        + sse({"type": "message_delta", "usage": {"output_tokens": 40}}, "message_delta")
        + sse({"type": "message_stop"}, "message_stop")
    )


def test_anthropic_stream_usage_prompt_from_start_and_last_output_count() -> None:
    watcher = SseWatcher()
    feed(watcher, anthropic_stream())
    assert watcher.usage == Usage(prompt_tokens=1120, completion_tokens=40, cached_tokens=1000)


def test_anthropic_stream_usage_at_every_split_offset() -> None:
    stream = anthropic_stream()
    for chunks in splits(stream):
        watcher = SseWatcher()
        assert sent(feed(watcher, *chunks)) == stream
        assert watcher.usage == Usage(1120, 40, 1000), chunks


def test_anthropic_stream_is_never_stripped() -> None:
    stream = anthropic_stream()
    watcher = SseWatcher(strip_usage_chunk=True)
    assert sent(feed(watcher, stream)) == stream
    assert watcher.usage == Usage(1120, 40, 1000)


def test_anthropic_message_start_without_a_message_object_is_ignored() -> None:
    watcher = SseWatcher()
    feed(watcher, sse({"type": "message_start", "message": "x", "usage": {"input_tokens": 9}}))
    assert watcher.usage == Usage(0, 0)


# --- SseWatcher: oversized events --------------------------------------------------------------


def test_an_oversized_event_stops_watching_and_passes_data_through(apipod_log: LogRecords) -> None:
    huge = b"data: " + b"x" * MAX_EVENT_BYTES
    watcher = SseWatcher(strip_usage_chunk=True)
    assert sent([watcher(huge)]) == huge
    assert len(apipod_log.warnings()) == 1
    later = b"\n\n" + sse(usage_chunk(1, 2))
    assert watcher(later) == later
    assert watcher.usage == Usage(0, 0)


def test_an_oversized_event_in_observe_mode_still_forwards_each_chunk(
    apipod_log: LogRecords,
) -> None:
    watcher = SseWatcher()
    half = b"y" * (MAX_EVENT_BYTES // 2 + 1)
    assert watcher(b"data: " + half) == b"data: " + half
    assert apipod_log.warnings() == []
    assert watcher(half) == half
    assert len(apipod_log.warnings()) == 1
    assert watcher(sse(usage_chunk(1, 2))) == sse(usage_chunk(1, 2))
    assert watcher.usage == Usage(0, 0)


def test_an_oversized_event_keeps_complete_events_before_it(apipod_log: LogRecords) -> None:
    first = sse(content_chunk("a"))
    huge = b"data: " + b"z" * MAX_EVENT_BYTES
    watcher = SseWatcher(strip_usage_chunk=True)
    assert sent([watcher(first + huge)]) == first + huge


def test_an_event_just_under_the_limit_is_still_watched() -> None:
    pad = b": " + b"p" * (MAX_EVENT_BYTES - 10) + b"\n"
    watcher = SseWatcher(strip_usage_chunk=True)
    watcher(pad)
    stream = b"\n" + sse(usage_chunk(7, 8))
    watcher(stream)
    assert watcher.usage == Usage(7, 8)


def test_end_of_stream_after_giving_up_returns_no_empty_bytes(apipod_log: LogRecords) -> None:
    watcher = SseWatcher(strip_usage_chunk=True)
    watcher(b"data: " + b"x" * MAX_EVENT_BYTES)
    assert_no_empty_bytes([watcher(b"")])


# --- status_class and UsageRecorder ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, "ok"),
        (201, "ok"),
        (204, "ok"),
        (299, "ok"),
        (301, "ok"),
        (304, "ok"),
        (399, "ok"),
        (400, "client_errors"),
        (401, "client_errors"),
        (429, "client_errors"),
        (499, "client_errors"),
        (500, "server_errors"),
        (502, "server_errors"),
        (504, "server_errors"),
    ],
)
def test_status_class(status: int, kind: str) -> None:
    assert status_class(status) == kind


NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> str:
    """Freeze the recorder's clock; return the hour bucket it falls into."""
    monkeypatch.setattr(usage.clock, "now_text", lambda: clock.format_time(NOW))
    return clock.hour_of(clock.format_time(NOW))


def test_empty_recorder_is_false() -> None:
    recorder = UsageRecorder()
    assert not recorder
    assert recorder.take() == ({}, {})


def test_add_makes_the_recorder_true(frozen: str) -> None:
    recorder = UsageRecorder()
    recorder.add(1, "m", 200, Usage())
    assert recorder


def test_add_accumulates_requests_tokens_and_status_classes(frozen: str) -> None:
    recorder = UsageRecorder()
    recorder.add(1, "gemini", 200, Usage(10, 5))
    recorder.add(1, "gemini", 302, Usage(1, 2))
    recorder.add(1, "gemini", 429, Usage())
    recorder.add(1, "gemini", 502, Usage(3, 0))
    pending, last_used = recorder.take()
    assert pending == {
        (1, "gemini", frozen): UsageCounts(
            requests=4,
            ok=2,
            client_errors=1,
            server_errors=1,
            prompt_tokens=14,
            completion_tokens=7,
        )
    }
    assert last_used == {1: clock.format_time(NOW)}


def test_add_keeps_keys_and_models_apart(frozen: str) -> None:
    recorder = UsageRecorder()
    recorder.add(1, "a", 200, Usage(1, 1))
    recorder.add(1, "b", 200, Usage(2, 2))
    recorder.add(2, "a", 500, Usage(3, 3))
    pending, last_used = recorder.take()
    assert set(pending) == {(1, "a", frozen), (1, "b", frozen), (2, "a", frozen)}
    assert pending[(2, "a", frozen)].server_errors == 1
    assert pending[(1, "b", frozen)].prompt_tokens == 2
    assert set(last_used) == {1, 2}


def test_add_uses_a_new_bucket_each_hour(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = UsageRecorder()
    moments = iter([NOW, NOW.replace(hour=8)])
    monkeypatch.setattr(usage.clock, "now_text", lambda: clock.format_time(next(moments)))
    recorder.add(1, "m", 200, Usage())
    recorder.add(1, "m", 200, Usage())
    pending, last_used = recorder.take()
    assert [counts.requests for counts in pending.values()] == [1, 1]
    assert len(pending) == 2
    assert last_used == {1: clock.format_time(NOW.replace(hour=8))}


def test_take_hands_over_everything_and_empties_the_recorder(frozen: str) -> None:
    recorder = UsageRecorder()
    recorder.add(1, "m", 200, Usage(1, 1))
    first, _ = recorder.take()
    assert len(first) == 1
    assert not recorder
    assert recorder.take() == ({}, {})
    recorder.add(1, "m", 200, Usage(1, 1))
    assert first[(1, "m", frozen)].requests == 1  # a taken batch is not changed later


def test_give_back_adds_a_failed_batch_to_newer_counts(frozen: str) -> None:
    recorder = UsageRecorder()
    recorder.add(1, "m", 200, Usage(10, 20))
    recorder.add(1, "m", 500, Usage())
    batch = recorder.take()
    recorder.add(1, "m", 404, Usage(1, 2))
    recorder.add(2, "n", 200, Usage(3, 4))
    recorder.give_back(*batch)
    pending, last_used = recorder.take()
    assert pending[(1, "m", frozen)] == UsageCounts(
        requests=3, ok=1, client_errors=1, server_errors=1, prompt_tokens=11, completion_tokens=22
    )
    assert pending[(2, "n", frozen)] == UsageCounts(
        requests=1, ok=1, prompt_tokens=3, completion_tokens=4
    )
    assert set(last_used) == {1, 2}


def test_give_back_into_an_empty_recorder_restores_the_batch(frozen: str) -> None:
    recorder = UsageRecorder()
    recorder.add(1, "m", 200, Usage(1, 2))
    pending, last_used = recorder.take()
    expected = {bucket: UsageCounts(**_fields(c)) for bucket, c in pending.items()}
    recorder.give_back(pending, last_used)
    assert recorder
    assert recorder.take() == (expected, last_used)


def test_give_back_keeps_the_latest_last_used_time() -> None:
    recorder = UsageRecorder()
    recorder.give_back({}, {1: "2024-01-01T00:00:00Z", 2: "2024-06-01T00:00:00Z"})
    recorder.give_back({}, {1: "2024-03-01T00:00:00Z", 2: "2024-02-01T00:00:00Z"})
    _, last_used = recorder.take()
    assert last_used == {1: "2024-03-01T00:00:00Z", 2: "2024-06-01T00:00:00Z"}


def _fields(counts: UsageCounts) -> dict[str, int]:
    return {name: getattr(counts, name) for name in UsageCounts.__slots__}


def test_each_event_is_parsed_once_whatever_the_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only an event holding a usage object is parsed, once, when complete, however many
    chunks it came in; what the others deliver is counted without parsing them."""
    parsed: list[bytes] = []
    real_loads = usage.json.loads
    monkeypatch.setattr(usage.json, "loads", lambda raw: parsed.append(raw) or real_loads(raw))
    watcher = SseWatcher(strip_usage_chunk=True)
    chunk = b'data: {"choices": [{"delta": {"content": "x"}}], "usage": null}\n\n'
    final = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}\n\n'
    assert watcher(chunk) == [chunk]
    stream = chunk + final + b"data: [DONE]\n\n"
    out = [watcher(stream[i : i + 5]) for i in range(0, len(stream), 5)]
    assert b"".join(b"".join(piece) for piece in out) == chunk + b"data: [DONE]\n\n"
    assert len(parsed) == 1  # the usage chunk
    assert (watcher.usage.prompt_tokens, watcher.usage.completion_tokens) == (3, 4)
    assert not watcher.usage.estimated
    assert watcher.meter.delivered_chars == 2  # "x", twice


def test_pending_usage_is_bounded_and_keeps_every_request(monkeypatch) -> None:
    """While the database is away counts pile up: past the bound, new models fold into
    one bucket per key and hour, so totals stay exact and memory stays bounded."""
    from apipod_proxy.pipeline import usage as usage_module
    from apipod_proxy.pipeline.usage import OVERFLOW_MODEL, Usage, UsageRecorder

    monkeypatch.setattr(usage_module, "MAX_PENDING_BUCKETS", 10)
    recorder = UsageRecorder()
    for i in range(50):
        recorder.add(1, f"made-up-{i}", 200, Usage(1, 2))
    batch = recorder.take()
    recorder.give_back(*batch)
    recorder.give_back(*batch)  # a failed flush, twice
    pending, _ = recorder.take()
    assert len(pending) == 11
    assert sum(c.requests for c in pending.values()) == 100
    assert sum(c.completion_tokens for c in pending.values()) == 200
    assert any(model == OVERFLOW_MODEL for _, model, _ in pending)

"""Token usage: read from responses and streams, counted per key, written in batches.

Non-streaming answers carry `usage` in their JSON. Streams carry it in events:
OpenAI's final usage chunk (`choices: []`, only sent when the request asked with
`stream_options.include_usage`), or Anthropic's `message_start` / `message_delta`.
When a client did not ask for the usage chunk, the proxy asks upstream anyway and
`SseWatcher` takes that chunk out of what the client receives.

Counts accumulate in memory and are flushed to SQLite about once a second in one
transaction: no disk sync per request, and a crash loses at most that second.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re

from .. import clock
from ..jsonenc import json_bytes
from ..metering import Meter, Usage, count_raw, meter_event, meter_of_body
from ..storage.records import UsageCounts

log = logging.getLogger("apipod")

#: An SSE event ends at a blank line; servers may use CRLF.
_EVENT_END = re.compile(rb"\r?\n\r?\n")
#: Usage as an object (not `"usage": null`, which every chunk of a stream that asked
#: for usage carries): only events holding it can need stripping.
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
#: A stream whose events never end is not watched past this many buffered bytes.
MAX_EVENT_BYTES = 1 << 20


def usage_from_body(body: bytes) -> Usage:
    """The usage of a whole JSON answer (metering.py merges it)."""
    if b'"usage"' in body:
        with contextlib.suppress(ValueError, RecursionError):
            return meter_of_body(json.loads(body)).usage()
    return Usage()


class SseWatcher:
    """`flow.response.stream` callable: forwards an SSE stream, noting its usage.

    Without stripping, every chunk is forwarded untouched the moment it arrives and
    is only observed. With `strip_usage_chunk` (the proxy asked for usage the client did
    not ask for), whole events are forwarded as soon as they are complete, minus OpenAI's
    usage-only chunk; a usage object that rides on another chunk (the finish chunk, with
    some OpenAI-compatible servers) is replaced by `null`. Either way it is counted, and
    so is what each event delivers (`meter`), for a stream cut before its usage.
    Events are parsed once each, when their last byte arrives; a chunk is only scanned
    for event ends.
    """

    def __init__(self, strip_usage_chunk: bool = False) -> None:
        self.meter = Meter()
        self.strip = strip_usage_chunk
        self._buffer = b""
        self._watching = True

    @property
    def usage(self) -> Usage:
        return self.meter.usage()

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        # mitmproxy sends each returned item as one chunk; an empty bytes object would be
        # an empty HTTP/1 chunk, which ends a chunked body, so "nothing" is an empty list.
        if not self._watching:
            return data or []
        if not data:  # end of stream: let through whatever is left
            rest, self._buffer = self._buffer, b""
            return [rest] if rest and self.strip else []
        scan_from = max(0, len(self._buffer) - 3)  # a terminator begun before `data`
        self._buffer += data
        events: list[bytes] = []
        start = 0
        for boundary in _EVENT_END.finditer(self._buffer, scan_from):
            event = self._buffer[start : boundary.end()]
            start = boundary.end()
            if (forwarded := self._observe(event)) is not None:
                events.append(forwarded)
        self._buffer = self._buffer[start:]
        if len(self._buffer) > MAX_EVENT_BYTES:
            log.warning(
                "SSE event over %d bytes: this stream's usage is not counted", MAX_EVENT_BYTES
            )
            self._watching = False
            events.append(self._buffer)
            self._buffer = b""
        return events if self.strip else data

    def _observe(self, event: bytes) -> bytes | None:
        """Meter the event; return what the client gets (None: nothing)."""
        if not _USAGE_OBJECT.search(event):
            count_raw(self.meter, event)  # content only: counted without parsing
            return event
        lines = event.splitlines(keepends=True)
        for index, line in enumerate(lines):
            if not line.startswith(b"data:"):
                continue
            try:
                payload = json.loads(line[5:])
            except (ValueError, RecursionError):
                continue
            meter_event(self.meter, payload)
            if not (self.strip and isinstance(payload, dict)):
                continue
            found, choices = payload.get("usage"), payload.get("choices")
            if not isinstance(found, dict) or not isinstance(choices, list):
                continue  # not an OpenAI chunk with usage (Anthropic's events pass untouched)
            if choices == [] and found:
                return None  # the usage-only chunk
            # Usage riding on the finish (or a content) chunk, as some OpenAI-compatible
            # servers send it: the chunk stays, its usage becomes what OpenAI sends there.
            payload["usage"] = None
            ending = line[len(line.rstrip(b"\r\n")) :]
            lines[index] = b"data: " + json_bytes(payload, spaced=True) + ending
        return b"".join(lines)


def status_class(status: int) -> str:
    if status >= 500:
        return "server_errors"
    return "client_errors" if status >= 400 else "ok"


#: Counts waiting for the database are kept in at most this many (key, model, hour)
#: buckets (about 200 bytes each: 20 MB), however long the database is away. Past it,
#: a new model's counts go to its key's OVERFLOW_MODEL bucket: no request is lost from
#: a key's totals, and made-up model names cannot grow memory.
MAX_PENDING_BUCKETS = 100_000
OVERFLOW_MODEL = "(other models)"


class UsageRecorder:
    """Counts per (key, routed model, hour), handed to the database in batches."""

    def __init__(self) -> None:
        self._pending: dict[tuple[int, str, str], UsageCounts] = {}
        self._last_used: dict[int, str] = {}

    def __bool__(self) -> bool:
        return bool(self._pending)

    def add(self, key_id: int, model: str, status: int, usage: Usage, cost: float = 0.0) -> None:
        now = clock.now_text()
        counts = self._bucket((key_id, model, clock.hour_of(now)))
        counts.requests += 1
        setattr(counts, status_class(status), getattr(counts, status_class(status)) + 1)
        counts.prompt_tokens += usage.prompt_tokens
        counts.completion_tokens += usage.completion_tokens
        counts.cached_tokens += usage.cached_tokens
        if usage.reasoning_estimated:
            counts.estimated_reasoning_tokens += usage.reasoning_tokens
        else:
            counts.reasoning_tokens += usage.reasoning_tokens
        counts.estimated_requests += usage.estimated
        counts.cost += cost
        self._last_used[key_id] = now

    def _bucket(self, bucket: tuple[int, str, str]) -> UsageCounts:
        counts = self._pending.get(bucket)
        if counts is None:
            if len(self._pending) >= MAX_PENDING_BUCKETS:
                bucket = (bucket[0], OVERFLOW_MODEL, bucket[2])
                counts = self._pending.get(bucket)
            if counts is None:
                counts = self._pending[bucket] = UsageCounts()
        return counts

    def take(self) -> tuple[dict[tuple[int, str, str], UsageCounts], dict[int, str]]:
        """Hand over everything counted so far; the recorder starts empty."""
        batch = self._pending, self._last_used
        self._pending, self._last_used = {}, {}
        return batch

    def give_back(
        self, pending: dict[tuple[int, str, str], UsageCounts], last_used: dict[int, str]
    ) -> None:
        """Return a batch that could not be written, so the next flush retries it."""
        for bucket, counts in pending.items():
            mine = self._bucket(bucket)
            for name in UsageCounts.__slots__:
                setattr(mine, name, getattr(mine, name) + getattr(counts, name))
        for key_id, moment in last_used.items():
            self._last_used[key_id] = max(moment, self._last_used.get(key_id, ""))

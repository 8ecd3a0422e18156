"""The bench's stream client finds each send-time stamp once, through apipod's translations.

The bench upstream writes `"<index>@<send time> "` into each Anthropic text delta; over
a translating apipod, the chat client (`translated` row) reads it from each chunk's
`content` and the Responses client (`/v1/responses` row) from each
`response.output_text.delta`. Each delta must come out the moment it goes in (else the
lag would measure batching) and be matched exactly once (the `.done` events repeat the
whole text), and the stream's end marker must be there, or the stream counts as broken.
"""

from __future__ import annotations

import pytest

from apipod_proxy.translate.directions import Direction
from apipod_proxy.translate.responses_api import ResponsesContext
from bench.load import CHAT_STREAM, RESPONSES_STREAM, StreamKind
from bench.upstream import anthropic_event, anthropic_message

MODEL = "gemini-3-flash"
CHUNKS = 4


def upstream_events() -> tuple[list[bytes], list[bytes], list[bytes]]:
    """The bench upstream's Messages stream: (head, one event per text delta, tail)."""
    start = {"type": "message_start", "message": anthropic_message(MODEL, [], 0)}
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
    head = [
        anthropic_event("message_start", start),
        anthropic_event("content_block_start", block),
    ]
    deltas = [
        anthropic_event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": f"{i}@1700000000.{i:06d} "},
            },
        )
        for i in range(CHUNKS)
    ]
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": CHUNKS},
    }
    tail = [
        anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        anthropic_event("message_delta", end),
        anthropic_event("message_stop", {"type": "message_stop"}),
    ]
    return head, deltas, tail


@pytest.mark.parametrize(
    ("direction", "kind"),
    [
        (Direction.OPENAI_TO_ANTHROPIC, CHAT_STREAM),
        (Direction.RESPONSES_TO_ANTHROPIC, RESPONSES_STREAM),
    ],
    ids=["translated", "responses"],
)
def test_each_stamp_comes_out_at_once_and_once(direction: Direction, kind: StreamKind) -> None:
    translate = direction.stream(MODEL, True, ResponsesContext())
    head, deltas, tail = upstream_events()
    out = b"".join(b"".join(translate(event)) for event in head)
    assert not kind.stamp.search(out)
    for i, event in enumerate(deltas):
        lines = b"".join(translate(event)).splitlines()
        stamps = [m for line in lines if (m := kind.stamp.search(line))]
        assert [(int(m[1]), m[2]) for m in stamps] == [(i, f"1700000000.{i:06d}".encode())]
    rest = b"".join(b"".join(translate(event)) for event in tail) + b"".join(translate(b""))
    lines = rest.splitlines()
    assert not [line for line in lines if kind.stamp.search(line)]
    assert any(line.startswith(kind.end) for line in lines)

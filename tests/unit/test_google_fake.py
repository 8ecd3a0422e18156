"""The fake Google backend's pure parts: which models think, and the chunks it sends."""

from __future__ import annotations

import pytest

from tests.support.google_fake import (
    SIGNATURE,
    Script,
    answer_chunks,
    last_user_text,
    merged,
    thinks,
)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("claude-sonnet-4-5", False),
        ("claude-sonnet-4-5-thinking", True),
        ("gemini-2.5-flash", False),
        ("gemini-3-flash", True),
        ("gemini-3.5-pro", True),
        ("gemini-2.5-flash-thinking", True),
        ("gpt-4o", False),
    ],
)
def test_thinks_as_the_package_decides(model: str, expected: bool) -> None:
    assert thinks(model) is expected


def test_chunks_carry_the_prompt_on_every_chunk_and_the_output_on_the_last() -> None:
    script = Script(text="a b c d e", thinking="hmm", prompt_tokens=25, cached_tokens=5)
    chunks = answer_chunks("gemini-3-flash", script)
    assert [c["usageMetadata"]["promptTokenCount"] for c in chunks] == [25] * len(chunks)
    assert all(c["usageMetadata"]["cachedContentTokenCount"] == 5 for c in chunks)
    assert [("candidatesTokenCount" in c["usageMetadata"]) for c in chunks][-2:] == [False, True]
    first = chunks[0]["candidates"][0]["content"]["parts"][0]
    assert first == {"text": "hmm", "thought": True, "thoughtSignature": SIGNATURE}
    text = "".join(p["text"] for c in chunks[1:] for p in c["candidates"][0]["content"]["parts"])
    assert text == "a b c d e"
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_a_function_call_comes_last_and_gemini_signs_it() -> None:
    tool = {"name": "get_weather", "args": {"city": "Paris"}}
    for model, signed in (("gemini-3-flash", True), ("claude-sonnet-4-5", False)):
        last = answer_chunks(model, Script(text="", tool=tool))[-1]
        [part] = last["candidates"][0]["content"]["parts"]
        assert part["functionCall"] == tool
        assert ("thoughtSignature" in part) is signed


def test_the_plain_answer_joins_the_streamed_pieces() -> None:
    chunks = answer_chunks("gemini-3-flash", Script(text="one two three", thinking="so"))
    parts = merged(chunks)["candidates"][0]["content"]["parts"]
    assert [p["text"] for p in parts] == ["so", "one two three"]
    assert merged(chunks)["usageMetadata"]["candidatesTokenCount"] == 3


def test_the_last_user_text_steers_the_answer() -> None:
    request = {
        "contents": [
            {"role": "user", "parts": [{"text": "first"}]},
            {"role": "model", "parts": [{"text": "answer"}]},
            {"role": "user", "parts": [{"text": "scenario=tool"}, {"inlineData": {}}]},
        ]
    }
    assert last_user_text(request) == "scenario=tool"

"""Custom (free-form) tools: their input carried as a function's one string parameter.

An upstream that knows only function tools gets a custom tool (Codex's and Cursor's
apply-patch) as a function taking one string, `input`. Its calls come back as the JSON
`{"input": "..."}`, which is unwrapped to the text the client's custom tool wanted:
whole (`unwrap`), or piece by piece as the arguments stream in (`InputUnwrapper`), so
each piece of the patch reaches the client the moment its JSON does.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..jsonenc import json_text

#: The one parameter of the function a custom tool becomes.
CUSTOM_INPUT = "input"

_OPENING = re.compile(r'\s*\{\s*"input"\s*:\s*"')
#: Complete characters and escapes of a JSON string body, up to (not including) the
#: closing quote or an escape not yet complete.
_STRING_BODY = re.compile(r'(?:[^"\\]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*')
_HIGH_SURROGATE_END = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}$")
#: An opening longer than this is not a `{"input": "` one: the arguments are read whole.
_MAX_OPENING = 64


def wrapped(text: str) -> str:
    """A custom tool's input as the arguments of the function it became."""
    return json_text({CUSTOM_INPUT: text})


def unwrap(arguments: Any) -> str:
    """The custom tool's input from the function's arguments (the raw text when they are
    not the expected `{"input": "..."}`)."""
    if not isinstance(arguments, str):
        return ""
    try:
        value = json.loads(arguments)
    except (ValueError, RecursionError):
        return arguments
    if isinstance(value, dict) and isinstance(value.get(CUSTOM_INPUT), str):
        return value[CUSTOM_INPUT]
    return arguments


def input_parameters(description: str) -> dict[str, Any]:
    """The JSON schema of the function a custom tool becomes."""
    return {
        "type": "object",
        "properties": {CUSTOM_INPUT: {"type": "string", "description": description}},
        "required": [CUSTOM_INPUT],
    }


class InputUnwrapper:
    """Streamed `{"input": "..."}` argument pieces in, the decoded input text out.

    `feed` returns the text decoded so far from the new piece (escapes split across
    pieces, surrogate pairs included, wait for their end); `finish` returns what is left:
    everything, when the arguments were not of the expected shape.
    """

    __slots__ = ("_head", "_in_string", "_pending", "_raw", "closed")

    def __init__(self) -> None:
        self._head = ""  # before the string opened
        self._pending = ""  # an escape not yet complete
        self._raw: list[str] = []  # everything fed, for the fallback
        self._in_string = False
        self.closed = False  # the string's closing quote was seen

    @property
    def fallback(self) -> bool:
        return not self._in_string and len(self._head) > _MAX_OPENING

    def feed(self, piece: str) -> str:
        if not piece:
            return ""
        self._raw.append(piece)
        if self.closed:
            return ""
        if not self._in_string:
            if self.fallback:
                return ""
            self._head += piece
            found = _OPENING.match(self._head)
            if found is None:
                return ""
            piece, self._head, self._in_string = self._head[found.end() :], "", True
        return self._decode(self._pending + piece)

    def _decode(self, text: str) -> str:
        body = _STRING_BODY.match(text).group()  # type: ignore[union-attr]  # always matches
        closed = len(body) < len(text) and text[len(body)] == '"'
        if not closed and _HIGH_SURROGATE_END.search(body):
            body = body[:-6]  # half of a surrogate pair: wait for the other half
        self._pending = "" if closed else text[len(body) :]
        self.closed = closed
        try:
            return json.loads('"' + body + '"') if body else ""
        except ValueError:
            return body

    def finish(self) -> str:
        """What is left once the arguments are complete."""
        if self._in_string:
            rest, self._pending = self._pending, ""
            return "" if self.closed else rest
        return unwrap("".join(self._raw))

"""The proxy's one JSON encoder: every payload it writes for a client, the upstream or the log.

A leaf module (it imports only `json`), so the pure `translate/` uses it as the rest of
the package does. What it settles once:

- **UTF-8, not `\\u` escapes** (`ensure_ascii=False`), except where a caller asks for
  ASCII (`ascii_only`) to keep the exact bytes it has always written.
- **Lone surrogates.** Text parsed from JSON may hold half an emoji (`"\\ud83d"`), which
  has no UTF-8 form. Bytes are then written with `\\u` escapes throughout, which every
  JSON reader accepts; `json_text` leaves them in the text, for the bytes written later.
- **Separators.** Compact (`,` and `:`) unless `spaced` (Python's `, ` and `: `), which
  the callers that have always written those keep: tool-call `arguments` for OpenAI
  clients, a finish chunk written again in a stream, the JSON log line.
- **NaN and infinities** are written as Python writes them unless `strict`, which
  refuses them (ValueError), as JSON does.

`json_bytes_in_parts` writes a large body in pieces so that the event loop gets turns
while a thread encodes it.
"""

from __future__ import annotations

import json
from typing import Any

_COMPACT = (",", ":")
_SPACED = (", ", ": ")


def json_text(
    payload: Any, *, spaced: bool = False, ascii_only: bool = False, strict: bool = False
) -> str:
    """`payload` as JSON text (lone surrogates stay in it unless `ascii_only`)."""
    return json.dumps(
        payload,
        ensure_ascii=ascii_only,
        separators=_SPACED if spaced else _COMPACT,
        allow_nan=not strict,
    )


def json_bytes(payload: Any, strict: bool = False, *, spaced: bool = False) -> bytes:
    """UTF-8 JSON, compact unless `spaced`; `strict` refuses NaN and infinities.

    Text with lone surrogates (a truncated emoji written as "\\ud83d") cannot be UTF-8,
    so it is written with \\u escapes instead, which any JSON reader accepts.
    """
    try:
        return json_text(payload, spaced=spaced, strict=strict).encode()
    except UnicodeEncodeError:
        return json_text(payload, spaced=spaced, ascii_only=True, strict=strict).encode()


_STRICT_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=_COMPACT, allow_nan=False)


def json_bytes_in_parts(payload: Any) -> bytes:
    """`json_bytes(payload, strict=True)`, written a top-level item (and a list's element)
    at a time. The C encoder holds the GIL for a whole call (0.2-0.4 s for a 29 MB body):
    on a thread, writing in parts gives the event loop a turn between them."""
    if not isinstance(payload, dict):
        return json_bytes(payload, strict=True)
    encode = _STRICT_COMPACT.encode
    parts = []
    for key, value in payload.items():
        if isinstance(value, list):
            parts.append(f"{encode(key)}:[{','.join(encode(item) for item in value)}]")
        else:
            parts.append(f"{encode(key)}:{encode(value)}")
    try:
        return ("{" + ",".join(parts) + "}").encode()
    except UnicodeEncodeError:  # a lone surrogate: json_bytes writes \u escapes
        return json_bytes(payload, strict=True)

"""Request and response bodies: decoded within a size limit, parsed strictly.

mitmproxy decodes a `Content-Encoding` body whole and without limit, so a few KB of
gzip could become gigabytes in memory (MAX_BODY_SIZE bounds only the bytes on the
wire), and it falls back to any Python codec for unknown encodings. Here only the
encodings HTTP clients send are accepted, and decoding stops past the limit.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import brotli

if TYPE_CHECKING:  # at run time bodies.py stays importable by the pure translate/
    from mitmproxy import http

from .keys import looks_keyish
from .policy.forwarding import FORWARDED

try:
    from compression import zstd  # Python 3.14+
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd


class BodyError(ValueError):
    """The body is not what it claims to be (encoding or JSON); the message says how."""


class BodyTooLarge(BodyError):
    """The decoded body is larger than allowed."""


def _zlib(data: bytes, limit: int, wbits: int) -> bytes:
    decoder = zlib.decompressobj(wbits)
    out = decoder.decompress(data, limit + 1)
    if len(out) > limit:
        raise BodyTooLarge("decoded body too large")
    if not decoder.eof:
        raise BodyError("truncated compressed body")
    return out


def _gzip(data: bytes, limit: int) -> bytes:
    return _zlib(data, limit, 31)


def _deflate(data: bytes, limit: int) -> bytes:
    # "deflate" is zlib-wrapped by the RFC, raw in some clients: accept both.
    try:
        return _zlib(data, limit, 15)
    except zlib.error:
        return _zlib(data, limit, -15)


def _br(data: bytes, limit: int) -> bytes:
    decoder = brotli.Decompressor()
    out = decoder.process(data, output_buffer_limit=limit + 1)
    if len(out) > limit:
        raise BodyTooLarge("decoded body too large")
    if not decoder.is_finished():
        raise BodyError("truncated compressed body")
    return out


def _zstd(data: bytes, limit: int) -> bytes:
    decoder = zstd.ZstdDecompressor()
    out = decoder.decompress(data, max_length=limit + 1)
    if len(out) > limit:
        raise BodyTooLarge("decoded body too large")
    if not decoder.eof:
        raise BodyError("truncated compressed body")
    return out


DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "br": _br,
    "zstd": _zstd,
}


def decoded(message: http.Message, limit: int) -> bytes:
    """The message body with its Content-Encoding undone, at most `limit` bytes."""
    encoding = message.headers.get("content-encoding", "").strip().lower()
    raw = message.raw_content or b""
    if encoding in ("", "identity") or not raw:
        return raw
    decoder = DECODERS.get(encoding)
    if decoder is None:
        raise BodyError(f"unsupported Content-Encoding {encoding!r}")
    try:
        return decoder(raw, limit)
    except (zlib.error, brotli.error, zstd.ZstdError) as exc:
        raise BodyError(f"body is not valid {encoding}") from exc


def parse_json(raw: bytes) -> Any:
    """Decode a JSON body strictly (UTF-8, an optional BOM, no NaN)."""
    try:
        text = raw.decode("utf-8-sig")
        return json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BodyError("Request body is not valid JSON") from exc


class InvalidJson(BodyError):
    """The (decoded) body is not strict JSON."""


class DuplicateKey(InvalidJson):
    """An object names the same key twice (readers disagree on which one counts)."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise DuplicateKey("A JSON object in the request body names the same key twice")
    return result


def parse_json_strict(raw: bytes) -> Any:
    """`parse_json`, refusing an object (at any depth) that names a key twice.

    Python's reader keeps the last of duplicate keys, others keep the first: a body the
    proxy checks must read the same to every reader, so it has no duplicates at all.
    """
    try:
        text = raw.decode("utf-8-sig")
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_pairs)
    except DuplicateKey:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidJson("Request body is not valid JSON") from exc


def is_json_type(content_type: str) -> bool:
    """`application/json`, a `+json` type, or none given (parameters aside)."""
    media = content_type.partition(";")[0].strip().lower()
    return media in ("", "application/json") or (
        media.startswith("application/") and media.endswith("+json")
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# --- model-bearing bodies --------------------------------------------------------------

#: Paths whose body names the model that the allow-list, routing and billing act on.
#: The one predicate the body check keys off (`is_model_endpoint`): every built-in row
#: of the forwarding table (forwarding.py) names one.
MODEL_ENDPOINTS = frozenset(route.path for route in FORWARDED)
#: A model id: what providers use (`claude-sonnet-4-5`, `models/gemini-3-pro`,
#: `claude-3-5-sonnet@20240620`, `ft:gpt-4o:org:x`), at most 128 characters.
MAX_MODEL_ID = 128
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")


def is_model_endpoint(path: str) -> bool:
    """Whether a POST to `path` (a query string and a trailing slash aside) names a model."""
    return _endpoint(path) in MODEL_ENDPOINTS


def _endpoint(path: str) -> str:
    """`path` without its query string and trailing slash."""
    return path.partition("?")[0].rstrip("/")


def is_model_id(name: str) -> bool:
    """A plausible model id: short, of the characters ids use, and nothing key-shaped."""
    return (
        len(name) <= MAX_MODEL_ID
        and _MODEL_ID.fullmatch(name) is not None
        and not looks_keyish(name)
    )


@dataclass(frozen=True, slots=True)
class BodyRefusal:
    """Why a model-bearing body is refused: always a 400 with this message and code."""

    message: str
    code: str


#: Chat Completions, whose body is a conversation in one of two shapes: its own `messages`,
#: or the Responses API's `input` (Cursor's Agent mode posts that here).
CHAT_COMPLETIONS = "/v1/chat/completions"
CONVERSATION_FIELDS = ("messages", "input")
NO_CONVERSATION = (
    "A /v1/chat/completions body needs either `messages` (Chat Completions) or `input` "
    "(a Responses-style body); this one has neither"
)


def model_body_refusal(body: Any, path: str = "") -> BodyRefusal | None:
    """Refuse a parsed model-bearing body whose model cannot be read as exactly one
    plausible id, or whose `stream` / `stream_options` another reader could take
    differently (`"stream": 1` streams on a lenient upstream, uncounted), or, posted to
    `path` /v1/chat/completions, one with neither `messages` nor `input` (null counts as
    absent). None: it may pass."""
    if not isinstance(body, dict):
        return BodyRefusal("The request body must be a JSON object", "invalid_json")
    model = body.get("model")
    if not isinstance(model, str):
        return BodyRefusal("The request body must name its `model` as one string", "invalid_model")
    if not is_model_id(model):
        return BodyRefusal(
            f"`model` is not a model id (at most {MAX_MODEL_ID} letters, digits and ._:/@+-)",
            "invalid_model",
        )
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        return BodyRefusal("`stream` must be true or false", "invalid_stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return BodyRefusal("`stream_options` must be an object", "invalid_stream")
    conversation = (body.get(name) for name in CONVERSATION_FIELDS)
    if _endpoint(path) == CHAT_COMPLETIONS and all(value is None for value in conversation):
        return BodyRefusal(NO_CONVERSATION, "missing_messages")
    return None

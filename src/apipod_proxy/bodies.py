"""Request and response bodies: decoded within a size limit, parsed strictly.

mitmproxy decodes a `Content-Encoding` body whole and without limit, so a few KB of
gzip could become gigabytes in memory (MAX_BODY_SIZE bounds only the bytes on the
wire), and it falls back to any Python codec for unknown encodings. Here only the
encodings HTTP clients send are accepted, and decoding stops past the limit.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import brotli

if TYPE_CHECKING:  # at run time bodies.py stays importable by the pure translate/
    from mitmproxy import http

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


def json_bytes(payload: Any, strict: bool = False) -> bytes:
    """Compact UTF-8 JSON. `strict` refuses NaN and infinities (ValueError), as JSON does.

    Text with lone surrogates (a truncated emoji written as "\\ud83d") cannot be UTF-8,
    so it is written with \\u escapes instead, which any JSON reader accepts.
    """
    try:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=not strict)
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(payload, separators=(",", ":"), allow_nan=not strict).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")

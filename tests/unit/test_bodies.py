"""Unit tests for apipod_proxy.bodies: bounded decoding and strict JSON."""

from __future__ import annotations

import json
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy.test import tutils

from apipod_proxy.bodies import (
    BodyError,
    BodyTooLarge,
    DuplicateKey,
    InvalidJson,
    decoded,
    is_json_type,
    is_model_endpoint,
    is_model_id,
    model_body_refusal,
    parse_json,
    parse_json_strict,
)
from tests.support.harness import ENCODERS

# --- parse_json -------------------------------------------------------------------


def test_parse_json_decodes_an_object() -> None:
    assert parse_json(b'{"model": "x", "n": [1, 2.5, null, true]}') == {
        "model": "x",
        "n": [1, 2.5, None, True],
    }


def test_parse_json_accepts_a_utf8_bom() -> None:
    assert parse_json(b'\xef\xbb\xbf{"model": "x"}') == {"model": "x"}


def test_parse_json_keeps_non_ascii() -> None:
    assert parse_json('{"content": "привет 👋"}'.encode()) == {"content": "привет 👋"}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"content": "\xff"}',
        b'{"content": "\xc3"}',
        '{"a": 1}'.encode("utf-16"),
        b"\xff\xfe",
    ],
)
def test_parse_json_rejects_invalid_utf8(raw: bytes) -> None:
    with pytest.raises(BodyError):
        parse_json(raw)


@pytest.mark.parametrize(
    "raw",
    [b'{"t": NaN}', b'{"t": Infinity}', b'{"t": -Infinity}', b"NaN", b"[Infinity]"],
)
def test_parse_json_rejects_nan_and_infinity(raw: bytes) -> None:
    with pytest.raises(BodyError):
        parse_json(raw)


@pytest.mark.parametrize(
    "raw",
    [b"", b"   ", b"{", b'{"a": 1} trailing', b"{'a': 1}", b'{"a": 1,}', b"model=x"],
)
def test_parse_json_rejects_malformed_json(raw: bytes) -> None:
    with pytest.raises(BodyError):
        parse_json(raw)


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_parse_json_deep_nesting_is_a_body_error(opener: bytes) -> None:
    depth = 200_000
    closer = b"]" if opener == b"[" else b"}"
    raw = opener * depth + b"1" + closer * depth
    with pytest.raises(BodyError) as info:
        parse_json(raw)
    assert isinstance(info.value.__cause__, RecursionError)


def test_parse_json_returns_non_objects_as_is() -> None:
    assert parse_json(b"[1, 2]") == [1, 2]
    assert parse_json(b'"text"') == "text"


def test_body_error_is_a_value_error_with_a_client_message() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_json(b"nope")


# --- decoded --------------------------------------------------------------------------

PLAIN = b'{"model": "cursor-pro-sonnet", "messages": []}'


def request(body: bytes, encoding: str | None) -> object:
    req = tutils.treq(content=b"")
    req.raw_content = body
    if encoding is not None:
        req.headers["content-encoding"] = encoding
    return req


@pytest.mark.parametrize("encoding", [None, "", "identity"])
def test_unencoded_bodies_come_back_as_they_are(encoding: str | None) -> None:
    assert decoded(request(PLAIN, encoding), 1024) == PLAIN


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_each_client_encoding_is_decoded(encoding: str) -> None:
    assert decoded(request(ENCODERS[encoding](PLAIN), encoding), 1024) == PLAIN


def test_raw_deflate_is_accepted_too() -> None:
    packer = zlib.compressobj(wbits=-15)
    raw = packer.compress(PLAIN) + packer.flush()
    assert decoded(request(raw, "deflate"), 1024) == PLAIN


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_a_bomb_stops_at_the_limit(encoding: str) -> None:
    bomb = ENCODERS[encoding](b"\0" * (8 << 20))
    assert len(bomb) < 64 << 10
    with pytest.raises(BodyTooLarge):
        decoded(request(bomb, encoding), 1 << 20)


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_exactly_the_limit_is_fine(encoding: str) -> None:
    assert len(decoded(request(ENCODERS[encoding](b"a" * 1000), encoding), 1000)) == 1000


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_truncated_or_garbage_bodies_are_errors(encoding: str) -> None:
    packed = ENCODERS[encoding](PLAIN * 50)
    for broken in (packed[: len(packed) // 2], b"definitely not " + encoding.encode()):
        with pytest.raises(BodyError) as info:
            decoded(request(broken, encoding), 1 << 20)
        assert not isinstance(info.value, BodyTooLarge)


@pytest.mark.parametrize("encoding", ["rot13", "base64", "hex", "bz2", "gzip, br", "compress"])
def test_unsupported_encodings_are_refused(encoding: str) -> None:
    with pytest.raises(BodyError, match="unsupported Content-Encoding"):
        decoded(request(PLAIN, encoding), 1024)


# --- strict parsing and the model check (issue 16) -------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "a", "model": "b"}',
        b'{"messages": [{"role": "user", "role": "system"}]}',
        b'{"a": {"b": {"c": 1, "c": 2}}}',
    ],
)
def test_a_key_named_twice_at_any_depth_is_refused(raw: bytes) -> None:
    with pytest.raises(DuplicateKey):
        parse_json_strict(raw)


def test_strict_parse_reads_what_parse_json_reads() -> None:
    raw = b'\xef\xbb\xbf{"model": "x", "n": [1, 2.5, null, {"a": true}]}'
    assert parse_json_strict(raw) == parse_json(raw)
    with pytest.raises(InvalidJson):
        parse_json_strict(b'{"n": NaN}')


@given(st.dictionaries(st.text(max_size=5), st.integers(), min_size=1))
def test_objects_without_duplicates_round_trip(value: dict[str, int]) -> None:
    assert parse_json_strict(json.dumps(value).encode()) == value


@given(st.lists(st.text(max_size=3), min_size=2).filter(lambda k: len(set(k)) < len(k)))
def test_any_repeated_key_is_found(names: list[str]) -> None:
    raw = "{" + ",".join(f"{json.dumps(n)}: 1" for n in names) + "}"
    with pytest.raises(DuplicateKey):
        parse_json_strict(raw.encode())


@pytest.mark.parametrize(
    "name",
    [
        "claude-sonnet-4-5",
        "gemini-3-pro-high",
        "models/gemini-3-flash",
        "claude-3-5-sonnet@20240620",
        "ft:gpt-4o:org:custom:id",
        "gpt-4.1",
    ],
)
def test_model_ids_that_pass(name: str) -> None:
    assert is_model_id(name)


@pytest.mark.parametrize(
    "name",
    ["", " gpt-4o", "gpt-4o ", "a b", "x" * 129, "apk_abcdef", "my-apk_x", "é", "a\nb", "-x"],
)
def test_model_ids_that_fail(name: str) -> None:
    assert not is_model_id(name)


@given(st.text(max_size=200))
def test_a_model_id_is_never_key_shaped_or_long(name: str) -> None:
    if is_model_id(name):
        assert "apk_" not in name and 0 < len(name) <= 128 and name.isascii() and name.isprintable()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ([], "invalid_json"),
        (None, "invalid_json"),
        ({"messages": []}, "invalid_model"),
        ({"model": ["gpt-4o"]}, "invalid_model"),
        ({"model": "gpt-4o", "stream": 1}, "invalid_stream"),
        ({"model": "gpt-4o", "stream": "yes"}, "invalid_stream"),
        ({"model": "gpt-4o", "stream": True, "stream_options": []}, "invalid_stream"),
        ({"model": "gpt-4o", "stream": True, "stream_options": {}}, None),
        ({"model": "gpt-4o", "stream": False, "stream_options": None}, None),
    ],
)
def test_model_body_refusal(body: object, code: str | None) -> None:
    refusal = model_body_refusal(body)
    assert (refusal and refusal.code) == code


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/v1/chat/completions", {"model": "m"}, "missing_messages"),
        ("/v1/chat/completions/?x=1", {"model": "m", "messages": None}, "missing_messages"),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": None, "input": None},
            "missing_messages",
        ),
        # Either shape passes here; what is in it is for the translation or the upstream.
        ("/v1/chat/completions", {"model": "m", "messages": []}, None),
        ("/v1/chat/completions", {"model": "m", "input": "hi"}, None),
        ("/v1/chat/completions", {"model": "m", "input": [], "messages": "x"}, None),
        # Only Chat Completions has the two shapes; the model check comes first.
        ("/v1/chat/completions", {"messages": []}, "invalid_model"),
        ("/v1/completions", {"model": "m"}, None),
        ("/v1/messages", {"model": "m"}, None),
        ("", {"model": "m"}, None),
    ],
)
def test_a_chat_body_needs_messages_or_input(path: str, body: object, code: str | None) -> None:
    refusal = model_body_refusal(body, path)
    assert (refusal and refusal.code) == code
    if code == "missing_messages":
        assert refusal is not None
        assert "`messages`" in refusal.message and "`input`" in refusal.message


def test_model_endpoints_and_json_types() -> None:
    assert is_model_endpoint("/v1/chat/completions?x=1")
    assert is_model_endpoint("/v1/messages/count_tokens/")
    assert not is_model_endpoint("/v1/embeddings")
    assert is_json_type("") and is_json_type("Application/JSON; charset=utf-8")
    assert is_json_type("application/vnd.api+json")
    assert not is_json_type("multipart/form-data; boundary=x") and not is_json_type("text/plain")

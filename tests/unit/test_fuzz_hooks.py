"""Hostile input through the addon's hooks: hypothesis properties, no sockets.

Each test loads one Apipod inside mitmproxy's `taddons` context (once per test, not per
example) and drives generated flows from `tflow` through `requestheaders` and `request`,
as mitmproxy does (it runs `request` even when `requestheaders` already answered), then
through `responseheaders`/`response` so the access line is written too.

Every input must end in one of two ways: a JSON error with a documented status and the
shape {"error": {"message", "type", "param", "code"}}, or a forwarded request that carries
the upstream key and no client credential. Never an exception, never a 500.

Known bugs found by these properties are pinned at the bottom as strict xfails.
"""

from __future__ import annotations

import asyncio
import contextlib
import encodings
import encodings.aliases
import gzip
import json
import pkgutil
import random
import re
import sqlite3
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import brotli
import pytest
from backports import zstd
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from apipod_proxy import clock, keys
from apipod_proxy.bodies import is_model_id
from apipod_proxy.endpoints import pages
from apipod_proxy.flowstate import state_of
from apipod_proxy.policy.forwarding import BUILT_IN as FORWARDED
from apipod_proxy.policy.routing import Alias, Router, RouteTable
from apipod_proxy.storage.records import KeyRecord
from tests.support.gateway import Gateway, open_gateway
from tests.support.gateway import make_flow as gateway_flow
from tests.support.harness import ENCODERS

pytestmark = pytest.mark.fuzz

UPSTREAM_URL = "http://127.0.0.1:9"
UPSTREAM_KEY = "upstream-key-for-fuzz-0000"
ADMIN_SECRET = "admin-secret-for-fuzz-0123456789"
ALIAS = "cursor-pro-sonnet"
CLAUDE = "claude-sonnet-4-5"
GEMINI = "gemini-3-flash"
TARGETS = {CLAUDE, GEMINI}
MAX_BODY = 1 << 20

# Keys with known plaintext, so strategies can use them; stored by hash in each gateway.
VALID_KEY = keys.generate_key()
INACTIVE_KEY = keys.generate_key()
EXPIRED_KEY = keys.generate_key()

CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "proxy-authorization")
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    503: "service_unavailable",
}

FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- the gateway ---------------------------------------------------------------------


@contextlib.contextmanager
def running_gateway(router: Router | None = None, **overrides: Any) -> Iterator[Gateway]:
    """A loaded addon with the three known keys (one test, many examples)."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        open_gateway(
            Path(tmp),
            router=router or Router(rng=random.Random(7)),
            antigravity_key=UPSTREAM_KEY,
            admin_secret=ADMIN_SECRET,
            max_body_size=MAX_BODY,
            default_rpm=0,
            # Hundreds of examples from one address would trip the admin throttle, which
            # tests/unit/test_admin.py covers; here every answer's shape is under test.
            **{"admin_auth_limit": 0, **overrides},
        ) as gateway,
    ):
        gateway.install_key(VALID_KEY, "valid")
        gateway.sql(
            "UPDATE users SET active = 0 WHERE id = ?",
            gateway.install_key(INACTIVE_KEY, "inactive").id,
        )
        expired = gateway.install_key(EXPIRED_KEY, "expired", expires_in=3600)
        gateway.sql("UPDATE users SET expires_at = '2000-01-01T00:00:00Z' WHERE id = ?", expired.id)
        yield gateway


def make_flow(
    method: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
) -> http.HTTPFlow:
    """As received: no content-length rewrite, no encoding."""
    return gateway_flow(method, path, body, headers, raw=True)


@dataclass
class Outcome:
    forwarded: bool
    flow: http.HTTPFlow
    sent_headers: list[tuple[bytes, bytes]]
    sent_body: bytes | None


UPSTREAM_ANSWER = b'{"id":"x","usage":{"prompt_tokens":1,"completion_tokens":2}}'


def drive(gateway: Gateway, flow: http.HTTPFlow) -> Outcome:
    """What mitmproxy does with one request; the upstream, if reached, answers 200 JSON."""
    addon = gateway.addon

    async def go() -> Outcome:
        await addon.requestheaders(flow)
        await addon.request(flow)
        forwarded = flow.response is None
        outcome = Outcome(
            forwarded,
            flow,
            list(flow.request.headers.fields),
            flow.request.raw_content if forwarded else None,
        )
        if forwarded:
            flow.response = http.Response.make(
                200, UPSTREAM_ANSWER, {"content-type": "application/json"}
            )
        addon.responseheaders(flow)
        addon.response(flow)
        return outcome

    return asyncio.run(go())


def error_of(response: http.Response | None, statuses: set[int]) -> dict[str, Any]:
    """The documented error shape, with a documented status; returns the error object."""
    assert response is not None
    assert response.status_code in statuses, (response.status_code, response.content[:300])
    assert response.headers["content-type"] == "application/json"
    payload = json.loads(response.content)
    assert set(payload) in ({"error"}, {"type", "error"})
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] is None
    assert error["type"] == ERROR_TYPES[response.status_code]
    return error


def assert_clean_upstream_headers(
    fields: list[tuple[bytes, bytes]], client_headers: tuple[bytes, ...] = ()
) -> None:
    """Exactly the upstream's key, once as x-api-key and once as Bearer; no other client
    credential header; no known key anywhere but in `client_headers` (non-credential
    headers the client filled itself)."""
    credentials = [(n.lower(), v) for n, v in fields if n.lower().decode() in CREDENTIAL_HEADERS]
    assert sorted(credentials) == [
        (b"authorization", b"Bearer " + UPSTREAM_KEY.encode()),
        (b"x-api-key", UPSTREAM_KEY.encode()),
    ]
    for known in (VALID_KEY, INACTIVE_KEY, EXPIRED_KEY):
        assert all(known.encode() not in v for n, v in fields if n.lower() not in client_headers)


def bearer(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + key.encode())]


def chat(model: Any = ALIAS, **extra: Any) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return json.dumps(body).encode()


# --- strategies: header values -------------------------------------------------------

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
LONE_SURROGATES = st.characters(categories=["Cs"])
ANY_CHAR = st.one_of(st.characters(), LONE_SURROGATES)

key_tokens = st.one_of(
    st.sampled_from([VALID_KEY, INACTIVE_KEY, EXPIRED_KEY]),
    st.text(B64URL, min_size=43, max_size=43).map("apk_".__add__),  # right shape, unknown
    st.sampled_from(
        [
            VALID_KEY[:-1],
            VALID_KEY + "A",
            VALID_KEY.upper(),
            VALID_KEY.lower(),
            VALID_KEY.replace("apk_", "APK_"),
            "apk_' OR '1'='1' --" + "A" * 28,
            "apk_",
            "",
        ]
    ),
    st.text(ANY_CHAR, max_size=60),
).map(lambda s: s.encode("utf-8", "surrogatepass"))

padding = st.sampled_from(
    [b"", b" ", b"  ", b"\t", b"\r\n", b"\r\n ", b"\x00", b"\x0b", b"\x1f", b"\xc2\xa0", b"\xff"]
)
schemes = st.sampled_from(
    [b"Bearer", b"bearer", b"BEARER", b"Basic", b"Token", b"", b"Bearer\x00", b"B\xc3\xa9arer"]
)
separators = st.sampled_from([b" ", b"  ", b"\t", b"", b"\x0b", b"\xc2\xa0", b"\r\n "])

header_values = st.one_of(
    st.binary(max_size=300),
    st.text(ANY_CHAR, max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.builds(
        lambda a, s, sep, k, b: a + s + sep + k + b,
        padding,
        schemes,
        separators,
        key_tokens,
        padding,
    ),
    st.builds(lambda a, k, b: a + k + b, padding, key_tokens, padding),
    st.builds(
        lambda n, unit: b"Bearer " + unit * n,
        st.integers(10_000, 300_000),
        st.sampled_from([b"A", b"\xff", b"\x00", b" ", b"apk_"]),
    ),
)
header_names = st.sampled_from(CREDENTIAL_HEADERS).flatmap(
    lambda n: st.sampled_from([n.encode(), n.upper().encode(), n.title().encode()])
)
credential_fields = st.lists(st.tuples(header_names, header_values), max_size=4)


def canonical_valid(fields: list[tuple[bytes, bytes]]) -> bool:
    """The documented ways to present the valid key, with nothing else."""
    if len(fields) != 1:
        return False
    name, value = fields[0][0].lower(), fields[0][1]
    return (name, value) in {
        (b"authorization", b"Bearer " + VALID_KEY.encode()),
        (b"x-api-key", VALID_KEY.encode()),
    }


# --- (a) credentials of any bytes and length -----------------------------------------


def test_any_credential_is_refused_in_json_or_swapped_for_the_upstream_key() -> None:
    with running_gateway() as gateway:
        valid_id = gateway.records[VALID_KEY].id

        @FUZZ
        @given(
            fields=credential_fields,
            path=st.sampled_from(["/v1/chat/completions", "/v1/messages", "/v1/completions"]),
            db_down=st.booleans(),
        )
        @example(
            fields=[(b"authorization", b"Bearer " + VALID_KEY.encode())],
            path="/v1/chat/completions",
            db_down=False,
        )
        @example(fields=[(b"X-Api-Key", VALID_KEY.encode())], path="/v1/messages", db_down=False)
        @example(
            fields=[(b"x-api-key", b"\r\n" + VALID_KEY.encode() + b"\x00")],
            path="/v1/messages",
            db_down=False,
        )
        @example(
            fields=[(b"authorization", b"Bearer " + b"\xff" * 200_000)],
            path="/v1/chat/completions",
            db_down=False,
        )
        @example(
            fields=[(b"authorization", b"Bearer " + INACTIVE_KEY.encode())],
            path="/v1/chat/completions",
            db_down=False,
        )
        @example(fields=[(b"x-api-key", EXPIRED_KEY.encode())], path="/v1/messages", db_down=False)
        @example(
            fields=[(b"authorization", b"Bearer " + VALID_KEY.encode())],
            path="/v1/chat/completions",
            db_down=True,
        )
        def check(fields: list[tuple[bytes, bytes]], path: str, db_down: bool) -> None:
            flow = make_flow(
                "POST", path, chat(), [*fields, (b"content-type", b"application/json")]
            )
            real_find = gateway.addon.gateway.store.find
            if db_down:

                def broken(key_hash: str) -> KeyRecord | None:
                    raise sqlite3.OperationalError("database is locked")

                gateway.addon.gateway.store.find = broken  # type: ignore[method-assign]
            try:
                outcome = drive(gateway, flow)
            finally:
                gateway.addon.gateway.store.find = real_find  # type: ignore[method-assign]
            presented = b"\n".join(v for _, v in fields)
            if outcome.forwarded:
                state = state_of(flow)
                assert state is not None and state.user is not None
                assert state.user.id == valid_id  # (with the database down: from a cache)
                assert VALID_KEY.encode() in presented
                assert_clean_upstream_headers(outcome.sent_headers)
                assert json.loads(outcome.sent_body or b"")["model"] in TARGETS
                return
            assert not canonical_valid(fields) or db_down
            error = error_of(flow.response, {400, 401, 403, 503})
            status = flow.response.status_code  # type: ignore[union-attr]
            expected_codes = {
                400: {"invalid_request_headers"},
                401: {"missing_api_key"},
                403: {"invalid_api_key", "inactive_api_key", "expired_api_key"},
                503: {"database_unavailable"},
            }[status]
            assert error["code"] in expected_codes
            if error["code"] == "inactive_api_key":
                assert INACTIVE_KEY.encode() in presented
            if error["code"] == "expired_api_key":
                assert EXPIRED_KEY.encode() in presented
            if status == 503:
                assert db_down
            if status == 400:  # CR, LF (obs-fold) and NUL never pass a proxy
                assert any(c in presented for c in (b"\r", b"\n", b"\0"))
            if path.startswith("/v1/messages"):
                assert json.loads(flow.response.content)["type"] == "error"  # type: ignore[union-attr]

        check()
        assert gateway.exceptions() == []


def test_any_x_request_id_or_session_header_is_harmless() -> None:
    """Other client-controlled headers the addon reads: never a crash, never echoed raw
    with a line break (mitmproxy's parser strips a value's trailing CR/LF)."""
    sticky = RouteTable(aliases={ALIAS: Alias.from_weights({CLAUDE: 20, GEMINI: 80}, sticky=True)})
    with running_gateway(router=Router(sticky)) as gateway:

        @FUZZ
        @given(request_id=header_values, session=st.none() | header_values)
        def check(request_id: bytes, session: bytes | None) -> None:
            request_id = request_id.strip()  # what mitmproxy's HTTP/1 reader leaves
            headers = [*bearer(VALID_KEY), (b"x-request-id", request_id)]
            if session is not None:
                headers.append((b"x-session-id", session.strip()))
            flow = make_flow("POST", "/v1/chat/completions", chat(), headers)
            outcome = drive(gateway, flow)
            if any(c in v for _, v in headers for c in (b"\r", b"\n", b"\0")):
                assert not outcome.forwarded  # a proxy must not pass these bytes on
                assert error_of(flow.response, {400})["code"] == "invalid_request_headers"
                return
            assert outcome.forwarded
            assert_clean_upstream_headers(outcome.sent_headers, (b"x-request-id", b"x-session-id"))
            sent_id = flow.request.headers["x-request-id"]
            assert 0 < len(sent_id) <= 128
            assert not any(c in sent_id for c in "\r\n\x00")
            assert flow.response is not None
            assert flow.response.headers["x-request-id"] == sent_id

        check()
        assert gateway.exceptions() == []


# --- strategies: JSON bodies ---------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A JSON token written verbatim: numbers json.dumps cannot write, broken literals."""

    text: str


@dataclass(frozen=True)
class Obj:
    """A JSON object as written: its pairs in order, duplicate keys allowed."""

    pairs: tuple[tuple[str, Any], ...]


def has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def write_json(value: Any, ascii_only: bool) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Obj):
        pairs = (f"{write_str(k, ascii_only)}:{write_json(v, ascii_only)}" for k, v in value.pairs)
        return "{" + ",".join(pairs) + "}"
    if isinstance(value, list):
        return "[" + ",".join(write_json(v, ascii_only) for v in value) + "]"
    if isinstance(value, str):
        return write_str(value, ascii_only)
    return json.dumps(value)


def write_str(text: str, ascii_only: bool) -> str:
    # Lone surrogates can only travel as \u escapes.
    return json.dumps(text, ensure_ascii=ascii_only or has_surrogate(text))


json_text = st.text(ANY_CHAR, max_size=12)
numbers = st.one_of(
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, -0.0]),
    st.integers(1, 6000).map(lambda n: Raw("9" * n)),  # beyond 4300 digits Python refuses
    st.sampled_from(
        [Raw(t) for t in ("1e309", "-1e400", "1e-400", "1E+308", "-0", "0e0", "12345678901e-999")]
    ),
)
broken_literals = st.sampled_from(
    [Raw(t) for t in ("NaN", "Infinity", "-Infinity", "undefined", "01", "1.", "+1", ".5", "'x'")]
)
json_leaves = st.one_of(st.none(), st.booleans(), numbers, json_text)
json_values = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(st.tuples(json_text, children), max_size=4).map(lambda p: Obj(tuple(p))),
    ),
    max_leaves=12,
)
model_values = st.one_of(
    st.sampled_from([ALIAS, ALIAS, "gpt-4o", CLAUDE, GEMINI, "Cursor-Pro-Sonnet", ALIAS + " ", ""]),
    st.just(Raw('"\\u0063ursor-pro-sonnet"')),  # the alias, spelled with an escape
    st.sampled_from(["\ud800", "a\udfffb", "x\ny", "\x1b[31m", "\x00", "m" * 5000]),
    json_text,
    json_values,
    broken_literals,
)
special_fields = st.sampled_from(
    [
        ("stream", True),
        ("stream", True),
        ("stream", False),
        ("stream", Raw("1")),
        ("stream_options", None),
        ("stream_options", Obj((("include_usage", False),))),
        ("stream_options", Obj((("include_usage", True),))),
        ("stream_options", Obj(())),
        ("stream_options", []),
        ("stream_options", 0),
        ("model", ALIAS),  # a duplicate key: the last one wins
        ("model", "gpt-4o"),
        ("messages", [Obj((("role", "user"), ("content", "hi")))]),
        ("system", "be brief"),
    ]
)
other_fields = st.one_of(special_fields, st.tuples(json_text, json_values))
#: A chat body without `messages` (or `input`) is refused (`missing_messages`), so half
#: the bodies carry a conversation, to be forwarded.
conversations = st.sampled_from([(), (("messages", [Obj((("role", "user"), ("content", "hi")))]),)])
objects = st.builds(
    lambda before, model, conversation, after: Obj(
        (*before, ("model", model), *conversation, *after)
    ),
    st.lists(other_fields, max_size=3),
    model_values,
    conversations,
    st.lists(other_fields, max_size=3),
)
nesting_depths = st.one_of(
    st.integers(1, 3000), st.integers(1300, 1600), st.sampled_from([997, 998, 999, 1000, 1001])
)


def nested(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def nested_body(model: str, where: str, depth: int, kind: str) -> str:
    """A body with `where` nested `depth` deep; with `messages` (empty) besides, so that a
    chat body is not refused for having no conversation before its depth counts."""
    conversation = "" if where == "messages" else '"messages":[],'
    head = f"{json.dumps('model')}:{json.dumps(model)},{conversation}{json.dumps(where)}"
    return f"{{{head}:{nested(depth, kind)}}}"


deep_bodies = st.builds(
    nested_body,
    st.sampled_from([ALIAS, "gpt-4o"]),
    st.sampled_from(["messages", "system", "tools"]),
    nesting_depths,
    st.sampled_from(["list", "dict"]),
)
json_documents = st.one_of(
    st.builds(write_json, objects, st.booleans()),
    st.builds(write_json, objects, st.booleans()),
    st.builds(write_json, json_values, st.booleans()),  # not an object at all
    deep_bodies,
)


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    text = draw(json_documents)
    body = text.encode("utf-8")
    mutation = draw(
        st.sampled_from(["none", "none", "none", "bom", "pad", "invalid_utf8", "truncate", "utf16"])
    )
    if mutation == "bom":
        body = b"\xef\xbb\xbf" + body
    elif mutation == "pad":
        body = draw(padding) + body + draw(padding)
    elif mutation == "invalid_utf8":
        at = draw(st.integers(0, len(body)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
        body = body[:at] + bad + body[at:]
    elif mutation == "truncate":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    elif mutation == "utf16":
        body = text.encode("utf-16", "surrogatepass")
    return body


INVALID = object()


def _reject(name: str) -> Any:
    raise ValueError(name)


def strict_parse(raw: bytes) -> Any:
    """What the README promises to accept: JSON in UTF-8, an optional BOM, no NaN."""
    try:
        return json.loads(raw.decode("utf-8-sig"), parse_constant=_reject)
    except (ValueError, RecursionError):
        return INVALID


def wants_usage(path: str, body: dict[str, Any]) -> bool:
    if body.get("stream") is not True or not path.startswith("/v1/chat/completions"):
        return False
    options_ = body.get("stream_options")
    return options_ is None or (isinstance(options_, dict) and not options_.get("include_usage"))


def walk(value: Any) -> Iterator[Any]:
    """Every value inside `value`, without recursion (bodies nest thousands deep)."""
    stack = [value]
    while stack:
        item = stack.pop()
        yield item
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def depth_of(value: Any) -> int:
    """How deeply containers nest in `value`, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            stack.extend(
                (v, level + 1) for v in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


#: Python's JSON reader stops near 1500 levels, earlier the deeper the call stack it runs
#: in (about 1480 under pytest); from here on a 400 for a body that parses in the test's
#: own, shallower frame is fine.
NESTING_LIMIT_ZONE = 1000


def same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except RecursionError:  # too deep to compare here; the model check still applies
        return True


content_types = st.sampled_from(
    [
        b"application/json",
        b"application/json",
        b"",
        b"text/plain",
        b"multipart/form-data; b=x",
        b"MULTIPART/mixed",
    ]
)
api_paths = st.sampled_from(
    [
        "/v1/chat/completions",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/messages",
        "/v1/messages/count_tokens",
    ]
)


def flush_usage(gateway: Gateway, routed_model: str | None) -> None:
    """Write counted usage as the periodic flusher does. A lone surrogate in the model
    breaks that flush: a known bug, pinned by an xfail below; nothing else may."""
    try:
        gateway.flush()
    except UnicodeEncodeError:
        if not (isinstance(routed_model, str) and has_surrogate(routed_model)):
            raise


def unique_parse(raw: bytes) -> Any:
    """`strict_parse`, and INVALID for an object that names a key twice."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in items}) != len(items):
            raise ValueError("duplicate key")
        return dict(items)

    try:
        return json.loads(raw.decode("utf-8-sig"), parse_constant=_reject, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return INVALID


def expected_refusal(content_type: bytes, expected: Any, path: str) -> str | None:
    """The code a model-bearing body is refused with (README "Limits"), None if it passes."""
    media = content_type.split(b";")[0].strip().lower()
    if media not in (b"", b"application/json"):
        return "unsupported_content_type"
    if not isinstance(expected, dict):
        return "invalid_json"
    model = expected.get("model")
    if not isinstance(model, str) or not is_model_id(model):
        return "invalid_model"
    if expected.get("stream") is not None and not isinstance(expected["stream"], bool):
        return "invalid_stream"
    if expected.get("stream_options") is not None and not isinstance(
        expected["stream_options"], dict
    ):
        return "invalid_stream"
    if path.startswith("/v1/chat/completions") and all(
        expected.get(name) is None for name in ("messages", "input")
    ):
        return "missing_messages"
    return None


def check_body_outcome(gateway: Gateway, path: str, content_type: bytes, raw: bytes) -> None:
    headers = [*bearer(VALID_KEY), (b"content-type", content_type)]
    flow = make_flow("POST", path, raw, headers)
    outcome = drive(gateway, flow)
    state = state_of(flow)
    assert state is not None
    flush_usage(gateway, state.routed_model)
    expected = unique_parse(raw)
    refusal = expected_refusal(content_type, expected, path)
    if not outcome.forwarded:
        error = error_of(flow.response, {400})
        if refusal is not None:
            assert error["code"] == refusal
            return
        assert error["code"] == "invalid_json"
        if depth_of(expected) < NESTING_LIMIT_ZONE:
            # It parses, so only a rewrite that cannot write it back may refuse it.
            assert any(
                isinstance(v, float) and v in (float("inf"), float("-inf")) for v in walk(expected)
            )
        return
    assert refusal is None, f"forwarded what must be refused ({refusal})"
    assert_clean_upstream_headers(outcome.sent_headers)
    sent = outcome.sent_body or b""
    model = expected["model"]
    # The object checked: its very bytes (unchanged, no BOM), or written again from it.
    out = json.loads(sent.decode("utf-8"), parse_constant=_reject)
    if sent == raw:
        assert not raw.startswith(b"\xef\xbb\xbf")
    else:
        assert flow.request.headers["content-length"] == str(len(sent))
    assert isinstance(out, dict)
    if model == ALIAS:
        assert out["model"] in TARGETS
        assert state.routed_model == out["model"]
    else:
        assert out["model"] == model
        assert state.routed_model == model
    if wants_usage(path, expected):
        assert out["stream_options"]["include_usage"] is True
    rest = {k: v for k, v in out.items() if k not in ("model", "stream_options")}
    assert same(rest, {k: v for k, v in expected.items() if k not in ("model", "stream_options")})


# --- (b) JSON bodies of every shape --------------------------------------------------


def test_any_body_is_forwarded_correctly_or_refused_as_invalid_json() -> None:
    with running_gateway() as gateway:

        @FUZZ
        @given(path=api_paths, content_type=content_types, raw=raw_bodies())
        @example("/v1/chat/completions", b"application/json", b'{"model":"cursor-pro-sonnet"}')
        @example(
            "/v1/chat/completions",
            b"application/json",
            b'{"model":"cursor-pro-sonnet","messages":[]}',
        )
        @example(
            "/v1/chat/completions",
            b"application/json",
            b'{"model":"cursor-pro-sonnet","model":"gpt-4o"}',
        )
        @example(
            "/v1/chat/completions",
            b"application/json",
            b'{"model":"gpt-4o","model":"cursor-pro-sonnet"}',
        )
        @example(
            "/v1/chat/completions",
            b"application/json",
            b'\xef\xbb\xbf{"model":"cursor-pro-sonnet","x":"\\ud800"}',
        )
        @example(
            "/v1/chat/completions", b"application/json", b'{"model":"cursor-pro-sonnet","n":1e400}'
        )
        @example(
            "/v1/chat/completions",
            b"application/json",
            b'{"model":"cursor-pro-sonnet","n":' + b"9" * 5000 + b"}",
        )
        @example(
            "/v1/chat/completions", b"application/json", b'{"model":"cursor-pro-sonnet","x":"\xff"}'
        )
        @example("/v1/messages", b"application/json", b'{"model":' + b"[" * 100_000)
        @example(
            "/v1/chat/completions",
            b"application/json",
            b'{"model":"x","stream":true,"stream_options":{"include_usage":0},"n":1e999}',
        )
        def check(path: str, content_type: bytes, raw: bytes) -> None:
            check_body_outcome(gateway, path, content_type, raw)

        check()
        assert gateway.exceptions() == []


def parser_limit(gateway: Gateway) -> int:
    """The first nesting depth the gateway refuses (it depends on the call stack the
    hooks run in), found by bisection with a model that needs no rewrite."""
    low, high = 2, 5000  # low forwarded, high refused
    while high - low > 1:
        middle = (low + high) // 2
        raw = f'{{"model":"gpt-4o","messages":{nested(middle, "list")}}}'.encode()
        flow = make_flow("POST", "/v1/chat/completions", raw, bearer(VALID_KEY))
        if drive(gateway, flow).forwarded:
            low = middle
        else:
            high = middle
    assert 500 < high < 3000
    return high


def test_deep_nesting_at_the_parser_limit_is_never_a_500() -> None:
    """Every depth around where Python's JSON reader gives up, for each container kind."""
    with running_gateway() as gateway:
        limit = parser_limit(gateway)
        for depth in range(limit - 40, limit + 5):
            for where in ("messages", "system"):
                for kind in ("list", "dict"):
                    for model in (ALIAS, "gpt-4o"):
                        raw = nested_body(model, where, depth, kind).encode()
                        check_body_outcome(
                            gateway, "/v1/chat/completions", b"application/json", raw
                        )
        assert gateway.exceptions() == []


def test_sticky_alias_bodies_are_forwarded_correctly_or_refused() -> None:
    """The same, with a sticky alias: the conversation hash reads the body too.
    (Nesting stays below 1000 here; deeper `system` prompts are the xfail below.)"""
    sticky = RouteTable(aliases={ALIAS: Alias.from_weights({CLAUDE: 20, GEMINI: 80}, sticky=True)})
    with running_gateway(router=Router(sticky)) as gateway:
        shallow = st.one_of(
            st.builds(write_json, objects, st.booleans()),
            st.builds(
                nested_body,
                st.sampled_from([ALIAS, "gpt-4o"]),
                st.sampled_from(["messages", "system"]),
                st.integers(1, 1000),
                st.sampled_from(["list", "dict"]),
            ),
        )

        @FUZZ
        @given(text=shallow)
        def check(text: str) -> None:
            check_body_outcome(gateway, "/v1/chat/completions", b"application/json", text.encode())

        check()
        assert gateway.exceptions() == []


# --- (c) admin bodies of every shape -------------------------------------------------

CREATED_FIELDS = {"api_key", "id", "name", "tier", "created_at", "expires_at"}
printable = st.text(st.characters(categories=["L", "N", "P", "S"]), min_size=1, max_size=40)
valid_create = st.fixed_dictionaries(
    {"name": printable},
    optional={
        "tier": printable,
        "expires_in": st.one_of(
            st.integers(1, clock.MAX_LIFETIME_SECONDS),
            st.builds(lambda n, u: f"{n}{u}", st.integers(1, 90), st.sampled_from("smhd")),
        ),
        "rpm": st.one_of(st.none(), st.integers(0, 1_000_000)),
    },
)
any_create = st.one_of(
    st.builds(lambda d: json.dumps(d).encode(), valid_create),
    st.builds(
        lambda pairs, ascii_only: write_json(Obj(tuple(pairs)), ascii_only).encode(),
        st.lists(
            st.tuples(
                st.sampled_from(["name", "tier", "expires_in", "rpm", "id", "api_key"]) | json_text,
                st.one_of(
                    json_values,
                    printable,
                    st.sampled_from(["30d", " 12h ", "0", "-1s", "9" * 5000, "\u00b2", "\u0665"]),
                ),
            ),
            max_size=5,
        ),
        st.booleans(),
    ),
    st.builds(write_json, json_values, st.booleans()).map(str.encode),
    raw_bodies(),
    st.binary(max_size=200),
)


def _text_field(value: Any, limit: int) -> bool:
    return (
        isinstance(value, str)
        and bool(value.strip())
        and value.isprintable()
        and len(value.strip()) <= limit
    )


def clearly_valid(body: Any) -> bool:
    """The README's create-key body: {"name", "tier"?, "expires_in"?} (and "rpm"?)."""
    if not isinstance(body, dict) or not set(body) <= {"name", "tier", "expires_in", "rpm"}:
        return False
    expires = body.get("expires_in")
    lifetime = None
    if isinstance(expires, int) and not isinstance(expires, bool):
        lifetime = expires
    elif isinstance(expires, str) and (match := re.fullmatch(r"([0-9]{1,9})([smhd]?)", expires)):
        lifetime = int(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    rpm = body.get("rpm")
    return (
        _text_field(body.get("name"), keys.MAX_NAME_LENGTH)
        and ("tier" not in body or body["tier"] is None or _text_field(body["tier"], 64))
        and (expires is None or (lifetime is not None and 0 < lifetime <= 100 * 365 * 86400))
        and (rpm is None or (type(rpm) is int and 0 <= rpm <= 1_000_000))
    )


def admin_flow(path: str, body: bytes, content_type: bytes = b"application/json") -> http.HTTPFlow:
    headers = [(b"x-admin-secret", ADMIN_SECRET.encode()), (b"content-type", content_type)]
    return make_flow("POST", path, body, headers)


def test_any_create_key_body_is_201_with_the_documented_fields_or_400() -> None:
    with running_gateway() as gateway:

        @FUZZ
        @given(raw=any_create)
        @example(raw=b'{"name": "ok"}')
        @example(raw=b'{"name": "x", "expires_in": "' + b"9" * 5000 + b's"}')
        @example(raw=b'{"name": "x", "rpm": "\xc2\xb2"}')
        @example(raw=b'{"name": "\\ud800"}')
        @example(raw=b'{"name": "a\\nb"}')
        @example(raw=b'{"name": "x", "expires_in": 1e400}')
        def check(raw: bytes) -> None:
            flow = admin_flow("/admin/create-key", raw)
            outcome = drive(gateway, flow)
            assert not outcome.forwarded
            response = flow.response
            assert response is not None
            if response.status_code == 201:
                created = json.loads(response.content)
                assert set(created) == CREATED_FIELDS
                assert keys.looks_like_key(created["api_key"])
                body = strict_parse(raw)
                assert isinstance(body, dict)
                assert created["name"] == body["name"].strip()
                record = gateway.addon.gateway.store.find(keys.hash_key(created["api_key"]))
                assert record is not None and record.id == created["id"]
                return
            error = error_of(response, {400})
            assert error["code"] in {"invalid_json", "invalid_field", "unknown_field"}
            assert not clearly_valid(strict_parse(raw)), "a documented, valid body was refused"

        check()
        assert gateway.exceptions() == []


SQLITE_INTS = st.integers(-(2**63), 2**63 - 1)


def test_any_revoke_or_activate_body_is_200_404_or_400() -> None:
    with running_gateway() as gateway:
        for n in range(5):
            gateway.addon.gateway.store.create(f"spare{n}", "elite", None)
        existing = {row[0] for row in gateway.sql("SELECT id FROM users")}

        ids = st.one_of(st.sampled_from(sorted(existing)), SQLITE_INTS, st.integers(-3, 20))
        bodies = st.one_of(
            st.builds(lambda i: json.dumps({"id": i}).encode(), ids),
            st.builds(
                lambda v, a: write_json(Obj((("id", v),)), a).encode(), json_values, st.booleans()
            ),
            st.builds(lambda i: json.dumps({"id": i, "extra": 1}).encode(), ids),
            any_create,
        )

        @FUZZ
        @given(path=st.sampled_from(["/admin/revoke-key", "/admin/activate-key"]), raw=bodies)
        @example(path="/admin/revoke-key", raw=b'{"id": 1.0}')
        @example(path="/admin/revoke-key", raw=b'{"id": true}')
        @example(path="/admin/activate-key", raw=b'{"id": "1"}')
        @example(path="/admin/revoke-key", raw=b'{"id": 9223372036854775807}')
        def check(path: str, raw: bytes) -> None:
            body = strict_parse(raw)
            key_id = body.get("id") if isinstance(body, dict) and set(body) <= {"id"} else None
            is_id = isinstance(key_id, int) and not isinstance(key_id, bool)
            # Ids beyond SQLite's 64 bits are a known bug (xfail below).
            assume(not is_id or -(2**63) <= key_id < 2**63)
            flow = admin_flow(path, raw)
            outcome = drive(gateway, flow)
            assert not outcome.forwarded
            response = flow.response
            assert response is not None
            if response.status_code == 200:
                assert is_id and key_id in existing
                assert json.loads(response.content) == {
                    "id": key_id,
                    "active": path == "/admin/activate-key",
                }
            elif response.status_code == 404:
                assert error_of(response, {404})["code"] == "key_not_found"
                assert is_id and key_id not in existing
            else:
                assert error_of(response, {400})["code"] in {
                    "invalid_json",
                    "invalid_model",
                    "invalid_field",
                    "unknown_field",
                }
                assert not is_id

        check()
        assert gateway.exceptions() == []


def test_any_admin_secret_but_the_right_one_is_401() -> None:
    with running_gateway(admin_auth_limit=0) as gateway:  # no throttle: each guess counts

        @FUZZ
        @given(
            secret_fields=st.lists(
                st.tuples(st.sampled_from([b"x-admin-secret", b"authorization"]), header_values),
                max_size=3,
            ),
            path=st.sampled_from(["/admin/create-key", "/admin/keys", "/metrics", "/admin/x"]),
        )
        def check(secret_fields: list[tuple[bytes, bytes]], path: str) -> None:
            method = "POST" if path in ("/admin/create-key", "/admin/x") else "GET"
            flow = make_flow(method, path, b'{"name": "fuzz"}', secret_fields)
            outcome = drive(gateway, flow)
            assert not outcome.forwarded
            response = flow.response
            assert response is not None
            forbidden = any(c in v for _, v in secret_fields for c in (b"\r", b"\n", b"\0"))
            if forbidden:
                assert error_of(response, {400})["code"] == "invalid_request_headers"
            elif path == "/admin/x":
                assert error_of(response, {404})["code"] == "not_found"
            elif response.status_code >= 400:
                assert error_of(response, {401})["code"] == "invalid_admin_secret"
            else:
                values = [v.strip() for _, v in secret_fields]
                assert ADMIN_SECRET.encode() in b"\n".join(values)

        check()
        assert gateway.exceptions() == []


TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
INTERNAL = [
    "/health",
    "/metrics",
    "/admin",
    "/admin/",
    "/admin/keys",
    "/admin/create-key",
    "/admin/revoke-key",
    "/admin/usage",
    "/admin/nope",
    "/v1/models",
]


def test_any_method_and_path_without_a_key_is_answered_locally() -> None:
    """Nothing goes upstream without a key; internal paths answer for themselves. (405
    `method_not_allowed` from /admin/* is not in the README's error table.)"""
    with running_gateway() as gateway:
        paths = st.one_of(
            st.sampled_from(INTERNAL),
            st.builds(lambda p, q: f"{p}?{q}", st.sampled_from(INTERNAL), json_text),
            st.builds(
                lambda since: f"/admin/usage?since={since}",
                st.one_of(
                    json_text, st.sampled_from(["24h", "9" * 5000 + "d", "-1h", "0", "%00", "1e9"])
                ),
            ),
            st.text(ANY_CHAR, max_size=40).map(lambda s: "/" + s),
        )

        @FUZZ
        @given(
            method=st.one_of(
                st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]),
                st.text(TOKEN, min_size=1, max_size=10),
            ),
            path=paths,
            admin=st.booleans(),
        )
        def check(method: str, path: str, admin: bool) -> None:
            headers = [(b"x-admin-secret", ADMIN_SECRET.encode())] if admin else []
            request = tutils.treq(
                method=method.encode(),
                path=path.encode("utf-8", "surrogatepass"),
                headers=http.Headers(headers),
                content=b"",
            )
            flow = tflow.tflow(req=request)
            outcome = drive(gateway, flow)
            assert not outcome.forwarded
            response = flow.response
            assert response is not None
            route = flow.request.path.partition("?")[0]
            if response.status_code == 405:
                assert route.startswith("/admin/") or route in ("/health", "/metrics", *FORWARDED)
                assert error_of(response, {405})["code"] == "method_not_allowed"
            elif response.status_code in (200, 201):
                assert route in INTERNAL
            elif response.status_code in (304, 308):  # the dashboard's pages
                assert method in ("GET", "HEAD") and pages.is_page(route)
            else:
                error = error_of(response, {400, 401, 404})
                assert (
                    route in INTERNAL
                    or route.startswith("/admin")
                    # unknown and odd paths are refused before any key check
                    or error["code"] in ("missing_api_key", "not_found", "invalid_request_target")
                )

        check()
        assert gateway.exceptions() == []


# --- (d) encoded request bodies ------------------------------------------------------


def test_encoded_alias_bodies_are_routed_and_forwarded_decoded() -> None:
    with running_gateway() as gateway:

        @FUZZ
        @given(
            encoding=st.sampled_from(sorted(ENCODERS)),
            spelling=st.sampled_from([str.lower, str.upper]),
            extra=st.dictionaries(st.text(max_size=8), st.text(ANY_CHAR, max_size=30), max_size=4),
            stream=st.booleans(),
        )
        def check(
            encoding: str, spelling: Callable[[str], str], extra: dict[str, str], stream: bool
        ) -> None:
            fields = {k: v for k, v in extra.items() if k not in ("model", "stream_options")}
            body = {**fields, "messages": [], "model": ALIAS, "stream": stream}
            plain = json.dumps(body).encode()
            headers = [
                *bearer(VALID_KEY),
                (b"content-type", b"application/json"),
                (b"content-encoding", spelling(encoding).encode()),
            ]
            flow = make_flow("POST", "/v1/chat/completions", ENCODERS[encoding](plain), headers)
            outcome = drive(gateway, flow)
            assert outcome.forwarded
            assert_clean_upstream_headers(outcome.sent_headers)
            sent = outcome.sent_body or b""
            # Written from the object checked, so no longer in the client's encoding.
            assert "content-encoding" not in flow.request.headers
            assert flow.request.headers["content-length"] == str(len(sent))
            out = json.loads(sent)
            assert out["model"] in TARGETS
            if stream:
                assert out["stream_options"]["include_usage"] is True
            assert {k: v for k, v in out.items() if k not in ("model", "stream_options")} == {
                k: v for k, v in json.loads(plain).items() if k not in ("model", "stream_options")
            }

        check()


def strict_decode(encoding: str, raw: bytes) -> bytes | None:
    """The body, if it is complete, valid data in its encoding (by the libraries'
    one-shot decoders, which refuse truncated input); None otherwise."""
    if not raw:
        return b""
    attempts: list[Callable[[], bytes]] = {
        "gzip": [lambda: zlib.decompress(raw, 31)],
        "deflate": [lambda: zlib.decompress(raw), lambda: zlib.decompress(raw, -15)],
        "br": [lambda: brotli.decompress(raw)],
        "zstd": [lambda: zstd.decompress(raw)],
    }[encoding]
    for attempt in attempts:
        with contextlib.suppress(Exception):
            return attempt()
    return None


def test_a_body_claiming_an_encoding_it_does_not_have_is_400_invalid_encoding() -> None:
    with running_gateway() as gateway:

        @FUZZ
        @given(
            encoding=st.sampled_from(sorted(ENCODERS)),
            raw=st.one_of(st.binary(max_size=300), st.just(chat()), raw_bodies()),
        )
        @example(encoding="gzip", raw=chat())
        @example(encoding="gzip", raw=b"\x1f\x8b\x08\x00garbage")
        @example(encoding="gzip", raw=gzip.compress(chat())[:-5])
        @example(encoding="gzip", raw=zlib.compress(chat()))  # zlib data is not gzip
        def check(encoding: str, raw: bytes) -> None:
            headers = [
                *bearer(VALID_KEY),
                (b"content-type", b"application/json"),
                (b"content-encoding", encoding.encode()),
            ]
            flow = make_flow("POST", "/v1/chat/completions", raw, headers)
            outcome = drive(gateway, flow)
            if strict_decode(encoding, raw) is None:
                assert error_of(flow.response, {400})["code"] == "invalid_encoding"
            elif outcome.forwarded:
                assert_clean_upstream_headers(outcome.sent_headers)
            else:
                assert error_of(flow.response, {400})["code"] == "invalid_json"

        check()
        assert gateway.exceptions() == []


# Every codec name Python knows is a Content-Encoding mitmproxy will try (it falls back to
# `codecs.decode`). The rot13 family is excluded here: see the xfail below.
ROT13 = {"rot13", "rot_13"}
CODEC_NAMES = sorted(
    {
        *encodings.aliases.aliases,
        *(m.name for m in pkgutil.iter_modules(encodings.__path__) if not m.name.startswith("_")),
        *("identity", "gzip", "br", "zstd", "deflate", "compress", "x-gzip", "gzip, br", "*", ""),
    }
    - ROT13
)


def test_any_content_encoding_name_is_forwarded_or_a_json_400() -> None:
    with running_gateway() as gateway:

        @FUZZ
        @given(
            encoding=st.one_of(
                st.sampled_from(CODEC_NAMES),
                st.text(ANY_CHAR, max_size=20).filter(lambda s: s.strip().lower() not in ROT13),
            ),
            path=st.sampled_from(["/v1/chat/completions", "/admin/create-key"]),
            raw=st.sampled_from([chat(), b'{"name": "enc"}', b"\x00\xff", b""]),
        )
        def check(encoding: str, path: str, raw: bytes) -> None:
            headers = [
                *bearer(VALID_KEY),
                (b"x-admin-secret", ADMIN_SECRET.encode()),
                (b"content-type", b"application/json"),
                (b"content-encoding", encoding.encode("utf-8", "surrogatepass")),
            ]
            flow = make_flow("POST", path, raw, headers)
            outcome = drive(gateway, flow)
            if outcome.forwarded:
                assert path.startswith("/v1/")
                assert_clean_upstream_headers(outcome.sent_headers)
                return
            response = flow.response
            assert response is not None
            name = encoding.strip().lower()
            if response.status_code == 201 or not raw:
                return
            error = error_of(response, {400})
            if any(c in encoding for c in "\r\n\0"):
                assert error["code"] == "invalid_request_headers"
            elif name not in ("", "identity", "gzip", "x-gzip", "deflate", "br", "zstd"):
                # Only the encodings HTTP clients send; no fallback to Python's codecs.
                assert error["code"] in {"invalid_encoding", "invalid_json", "invalid_model"}
            else:
                assert error["code"] in {
                    "invalid_encoding",
                    "invalid_json",
                    "invalid_model",
                    "invalid_field",
                    "unknown_field",
                }

        check()
        assert gateway.exceptions() == []


# --- known bugs, pinned --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/admin/revoke-key", "/admin/activate-key"])
@pytest.mark.parametrize("key_id", [2**63, -(2**63) - 1, 10**30])
def test_admin_id_beyond_64_bits_is_400_or_404(path: str, key_id: int) -> None:
    with running_gateway() as gateway:
        flow = admin_flow(path, json.dumps({"id": key_id}).encode())
        drive(gateway, flow)
        error_of(flow.response, {400, 404})


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/admin/create-key"])
def test_content_encoding_rot13_is_400(path: str) -> None:
    with running_gateway() as gateway:
        headers = [
            *bearer(VALID_KEY),
            (b"x-admin-secret", ADMIN_SECRET.encode()),
            (b"content-type", b"application/json"),
            (b"content-encoding", b"rot13"),
        ]
        flow = make_flow("POST", path, b'{"model": "cursor-pro-sonnet", "name": "x"}', headers)
        drive(gateway, flow)
        error_of(flow.response, {400})


def test_sticky_alias_deep_system_prompt_is_never_a_500() -> None:
    sticky = RouteTable(aliases={ALIAS: Alias.from_weights({CLAUDE: 20, GEMINI: 80}, sticky=True)})
    with running_gateway(router=Router(sticky)) as gateway:
        limit = parser_limit(gateway)
        for depth in range(limit - 40, limit + 5):
            raw = nested_body(ALIAS, "system", depth, "list").encode()
            check_body_outcome(gateway, "/v1/chat/completions", b"application/json", raw)


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_decompressed_body_over_max_body_size_is_413(encoding: str) -> None:
    with running_gateway() as gateway:
        plain = b'{"model":"cursor-pro-sonnet","pad":"' + b"a" * (24 * MAX_BODY) + b'"}'
        packed = ENCODERS[encoding](plain)
        assert len(packed) < MAX_BODY // 4
        headers = [
            *bearer(VALID_KEY),
            (b"content-type", b"application/json"),
            (b"content-encoding", encoding.encode()),
        ]
        flow = make_flow("POST", "/v1/chat/completions", packed, headers)
        drive(gateway, flow)
        assert error_of(flow.response, {413})["code"] == "request_too_large"


@pytest.mark.parametrize(
    "model",
    ["gpt-4o\n2030-01-01T00:00:00.000Z INFO POST /admin/create-key 201", "a\rb", "\ud800"],
    ids=["newline", "carriage-return", "lone-surrogate"],
)
def test_a_model_that_is_no_model_id_is_refused_and_never_logged(model: str) -> None:
    with running_gateway() as gateway:
        flow = make_flow("POST", "/v1/chat/completions", chat(model), bearer(VALID_KEY))
        assert not drive(gateway, flow).forwarded
        assert error_of(flow.response, {400})["code"] == "invalid_model"
        [line] = [r.getMessage() for r in gateway.log.records if "/v1/chat" in r.getMessage()]
        assert "\n" not in line and "\r" not in line and "model=" not in line
        line.encode("utf-8")
        gateway.flush()
        scrape = make_flow("GET", "/metrics", b"", [(b"x-admin-secret", ADMIN_SECRET.encode())])
        drive(gateway, scrape)
        assert scrape.response is not None
        assert scrape.response.status_code == 200


def test_an_oddly_encoded_upstream_answer_is_still_logged_and_counted() -> None:
    with running_gateway() as gateway:
        flow = make_flow("POST", "/v1/chat/completions", chat(GEMINI), bearer(VALID_KEY))

        async def go() -> None:
            await gateway.addon.requestheaders(flow)
            await gateway.addon.request(flow)
            flow.response = http.Response.make(200, b"", {"content-type": "application/json"})
            flow.response.headers["content-encoding"] = "rot13"
            flow.response.raw_content = b'{"usage": {}}'
            gateway.addon.responseheaders(flow)
            gateway.addon.response(flow)

        asyncio.run(go())
        assert flow.id not in gateway.addon.gateway.traffic.in_flight

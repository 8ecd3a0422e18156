"""Hostile input through a real mitmdump, over raw sockets where httpx would refuse.

A sample of generated requests (credentials of any bytes and length, header names,
bodies of every shape, broken HTTP) and hand-made smuggling attempts. Each must get a
parseable HTTP response with our JSON error, or be proxied correctly, or (where HTTP
itself is broken) a clean connection close. Whatever reaches the stand-in upstream
carries exactly the upstream key and no client credential, and the proxy's log gets no
Traceback and no key.

Known bugs found here are pinned at the bottom as strict xfails.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from apipod_proxy.connections import MAX_HEADER_BYTES
from tests.support.harness import ADMIN_SECRET, ENCODERS, UPSTREAM_KEY, Proxy
from tests.support.standin import StandIn

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

ALIAS = "cursor-pro-sonnet"
TARGETS = {"claude-sonnet-4-5", "gemini-3-flash"}
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "proxy-authorization")
OUR_CODES = {
    400: {
        "invalid_json",
        "invalid_encoding",
        "malformed_request",
        "invalid_request_headers",
        "invalid_field",
        "unknown_field",
        "invalid_request_target",
        "invalid_model",
        "invalid_stream",
        "unsupported_content_type",
    },
    401: {"missing_api_key", "invalid_admin_secret"},
    403: {"invalid_api_key", "inactive_api_key", "expired_api_key"},
    404: {"not_found", "key_not_found"},
    413: {"request_too_large"},
    431: {"request_headers_too_large"},
}

SAMPLE = settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- raw HTTP ------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(port: int, data: bytes, half_close: bool = False, timeout: float = 10) -> bytes:
    """Send `data`, read until the proxy closes. `half_close` ends our side first, as a
    client that gives up mid-request does."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the proxy answered and closed before reading everything
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def parse_reply(raw: bytes) -> Reply | None:
    """One complete HTTP/1.1 response and nothing after it, or None for a bare close."""
    if not raw:
        return None
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, raw[:300]
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1", status_line
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    assert len(rest) == length, (length, rest[:300])  # no second, smuggled response
    return Reply(int(status), headers, rest)


def request(
    path: str = "/v1/chat/completions",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    method: bytes = b"POST",
) -> bytes:
    lines = [method + b" " + path.encode() + b" HTTP/1.1", b"Host: proxy", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers or []]
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def assert_our_error(reply: Reply | None, status: int | set[int], code: str | None = None) -> str:
    """Our JSON error with a documented status (and code); returns the code."""
    assert reply is not None, "the proxy closed the connection without an answer"
    statuses = {status} if isinstance(status, int) else status
    assert reply.status in statuses, (reply.status, reply.body[:300])
    assert reply.headers["content-type"] == "application/json"
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["param"] is None
    assert error["code"] in OUR_CODES[reply.status]
    if code is not None:
        assert error["code"] == code
    return error["code"]


def assert_upstream_clean(upstream: StandIn) -> None:
    """Everything that reached the upstream carries exactly the upstream key, no client one."""
    for seen in upstream.received:
        assert seen.headers.get("x-api-key") == UPSTREAM_KEY
        # Our key as Bearer too (OpenAI-only upstreams read only that), never a client's.
        assert seen.headers.get("authorization") == f"Bearer {UPSTREAM_KEY}"
        assert not {"proxy-authorization", "x-goog-api-key"} & set(seen.headers)
        assert all("apk_" not in value for value in seen.headers.values())


@pytest.fixture
def log_watch(proxy: Proxy) -> Iterator[None]:
    """The shared proxy's log, from this test on: no Traceback, no key."""
    start = len(proxy.log())
    yield
    time.sleep(0.2)  # let the last access lines land
    written = proxy.log()[start:]
    assert "Traceback" not in written
    assert "apk_" not in written


def still_serves(proxy: Proxy, key: str, upstream: StandIn) -> None:
    before = len(upstream.received)
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": ALIAS, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 200, response.text
    assert response.json()["model"] in TARGETS
    assert len(upstream.received) == before + 1


CHAT = json.dumps({"model": ALIAS, "messages": [{"role": "user", "content": "hi"}]}).encode()


# --- credentials and header names -----------------------------------------------------

no_line_breaks = st.binary(max_size=400).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
credential_values = st.one_of(
    no_line_breaks,
    st.text(max_size=200)
    .map(lambda s: s.encode())
    .filter(lambda b: b"\r" not in b and b"\n" not in b),
    st.builds(
        lambda n, unit: b"Bearer " + unit * n,
        st.integers(10_000, 400_000),
        st.sampled_from([b"A", b"\xff", b"\x00", b"apk_"]),
    ),
    st.builds(
        lambda pre, scheme, token, post: pre + scheme + token + post,
        st.sampled_from([b"", b" ", b"\t", b"\x00", b"\x1f", b"\xc2\xa0"]),
        st.sampled_from([b"Bearer ", b"bearer  ", b"Basic ", b"", b"Bearer\x00", b"Bearer\x0b"]),
        st.sampled_from([b"VALID", b"apk_" + b"A" * 43, b"apk_\xff" * 11, b"apk_' OR 1=1 --"]),
        st.sampled_from([b"", b" ", b"\t", b"\x00", b"\x7f", b"\xff"]),
    ),
)
credential_names = st.sampled_from(CREDENTIAL_HEADERS).flatmap(
    lambda n: st.sampled_from([n.encode(), n.upper().encode(), n.title().encode()])
)


def test_generated_credentials_are_refused_in_json_or_swapped(
    proxy: Proxy, upstream: StandIn, api_key: str, log_watch: None
) -> None:
    key = api_key.encode()

    @SAMPLE
    @given(fields=st.lists(st.tuples(credential_names, credential_values), min_size=1, max_size=3))
    @example(fields=[(b"Authorization", b"Bearer VALID")])
    @example(fields=[(b"x-api-key", b"VALID")])
    @example(fields=[(b"x-api-key", b"\tVALID ")])
    @example(fields=[(b"Authorization", b"Bearer " + b"\xff" * 300_000)])
    @example(fields=[(b"Authorization", b"Bearer VALID"), (b"Authorization", b"Bearer VALID")])
    def check(fields: list[tuple[bytes, bytes]]) -> None:
        fields = [(n, v.replace(b"VALID", key)) for n, v in fields]
        before = len(upstream.received)
        reply = parse_reply(exchange(proxy.port, request(headers=fields, body=CHAT)))
        assert reply is not None
        if reply.status == 200:
            assert key in b"".join(v for _, v in fields)
            assert len(upstream.received) == before + 1
            assert reply.json()["model"] in TARGETS
        else:
            code = assert_our_error(reply, {400, 401, 403, 431})
            assert (reply.status == 401) == (code == "missing_api_key")
            if reply.status == 431:  # a request head over the proxy's bound
                assert code == "request_headers_too_large"
                assert sum(len(n) + len(v) for n, v in fields) > MAX_HEADER_BYTES // 2
            if reply.status == 400:  # NUL survives HTTP/1 parsing; a proxy must refuse it
                assert code == "invalid_request_headers"
                assert b"\0" in b"".join(v for _, v in fields)
            assert len(upstream.received) == before
            canonical = {(b"authorization", b"Bearer " + key), (b"x-api-key", key)}
            assert not (len(fields) == 1 and (fields[0][0].lower(), fields[0][1]) in canonical)
        assert_upstream_clean(upstream)

    check()


token_chars = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def test_generated_header_names_are_accepted_or_refused_as_invalid_headers(
    proxy: Proxy, upstream: StandIn, log_watch: None
) -> None:
    @SAMPLE
    @given(
        name=st.one_of(
            st.binary(min_size=1, max_size=30),
            st.lists(st.sampled_from(list(token_chars)), min_size=1, max_size=30).map(bytes),
            st.builds(
                lambda a, bad, b: a + bad + b,
                st.sampled_from([b"X-Api-Key", b"Transfer-Encoding", b"Content-Length", b"X"]),
                st.sampled_from([b" ", b"\t", b"\x00", b"\x7f", b"\xff", b"(", b"/", b"@"]),
                st.sampled_from([b"", b"x", b"-Trace"]),
            ),
        ).filter(lambda b: not set(b) & set(b":\r\n") and b[:1] not in (b" ", b"\t")),
    )
    @example(name=b"Transfer-Encoding ")
    @example(name=b"Content-Length\x00")
    @example(name=b"X-\xff")
    def check(name: bytes) -> None:
        reply = parse_reply(exchange(proxy.port, request(headers=[(name, b"v")], body=CHAT)))
        framing = name.lower() in (b"content-length", b"transfer-encoding")
        if all(c in token_chars for c in name) and not framing:
            assert_our_error(reply, {401, 403})  # a valid header; refused for want of a key
        else:
            # Not a token (a space before the colon, say): mitmproxy's 400 when it reads
            # the body's framing, unless the missing key is answered first, and the
            # connection closed with the body unread (issue 16). Never forwarded.
            assert_our_error(reply, {400, 401})
        assert upstream.received == []

    check()


# --- bodies ---------------------------------------------------------------------------

printable_text = st.text(st.characters(categories=["L", "N", "P", "S"]), max_size=20)
any_text = st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=20)
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        any_text,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(any_text, children, max_size=3)
    ),
    max_leaves=8,
)
# A model with a lone surrogate or a line break is a known bug (xfails below) that would
# poison the shared proxy's log, usage and metrics; here models stay printable.
models = st.one_of(
    st.sampled_from([ALIAS, ALIAS, "gpt-4o", "claude-sonnet-4-5", ""]),
    printable_text,
    st.integers(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)


def as_json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False).encode().decode()
    except UnicodeEncodeError:
        return json.dumps(value)


@st.composite
def hostile_bodies(draw: st.DrawFn) -> bytes:
    model = as_json(draw(models))
    rest = draw(st.dictionaries(any_text, json_values, max_size=3))
    rest.pop("model", None)
    fields = as_json(rest)[1:-1]
    shape = draw(
        st.sampled_from(
            [
                "plain",
                "duplicate",
                "deep",
                "huge-int",
                "huge-float",
                "bom",
                "invalid-utf8",
                "truncated",
                "not-an-object",
                "nan",
            ]
        )
    )
    if shape == "duplicate":
        first = as_json(draw(models))
        text = f'{{"model":{first},"model":{model}{"," if fields else ""}{fields}}}'
    elif shape == "deep":
        depth = draw(st.sampled_from([10, 999, 1480, 1490, 1495, 1500, 3000, 100_000]))
        text = f'{{"model":{model},"messages":{"[" * depth}{"]" * depth}}}'
    elif shape == "huge-int":
        digits = draw(st.sampled_from([20, 400, 4300, 4301, 20_000]))
        text = f'{{"model":{model},"n":{"9" * digits}}}'
    elif shape == "huge-float":
        number = draw(st.sampled_from(["1e308", "-1e308", "1e309", "-1e400", "1e-400"]))
        text = f'{{"model":{model},"x":{number}}}'
    elif shape == "not-an-object":
        text = as_json(draw(json_values))
    elif shape == "nan":
        text = f'{{"model":{model},"x":NaN}}'
    else:
        text = f'{{"model":{model}{"," if fields else ""}{fields}}}'
    body = text.encode("utf-8", "surrogatepass")
    if shape == "bom":
        body = b"\xef\xbb\xbf" + body
    elif shape == "invalid-utf8":
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + body[at:]
    elif shape == "truncated":
        body = body[: draw(st.integers(1, max(1, len(body) - 1)))]
    return body


INVALID = object()


def strict_parse(raw: bytes) -> Any:
    """The body as the README promises to read it (UTF-8, optional BOM, no NaN, no key
    twice in an object), or INVALID. Parsed on a fresh thread, whose empty stack nests as
    deep as any parser here can."""

    def reject(name: str) -> Any:
        raise ValueError(name)

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({name for name, _ in pairs}) != len(pairs):
            raise ValueError("a key named twice")
        return dict(pairs)

    def parse() -> None:
        try:
            text = raw.decode("utf-8-sig")
            result.append(json.loads(text, parse_constant=reject, object_pairs_hook=unique))
        except (ValueError, RecursionError):
            result.append(INVALID)

    result: list[Any] = []
    thread = threading.Thread(target=parse)
    thread.start()
    thread.join()
    return result[0]


#: A model id, as the tests read issue 16: at most 128 of these characters, never a key.
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")


def body_refusal(parsed: object) -> str | None:
    """The code a model endpoint must refuse this strictly parsed body with, or None."""
    if parsed is INVALID or not isinstance(parsed, dict):
        return "invalid_json"
    model = parsed.get("model")
    if not isinstance(model, str) or not MODEL_ID.fullmatch(model) or "apk_" in model:
        return "invalid_model"
    if parsed.get("stream") not in (None, True, False):
        return "invalid_stream"
    if parsed.get("stream_options") is not None and not isinstance(parsed["stream_options"], dict):
        return "invalid_stream"
    return None


def test_generated_bodies_are_forwarded_correctly_or_refused_as_invalid_json(
    proxy: Proxy, upstream: StandIn, api_key: str, log_watch: None
) -> None:
    headers = [
        (b"Authorization", b"Bearer " + api_key.encode()),
        (b"Content-Type", b"application/json"),
    ]

    @SAMPLE
    @given(raw=hostile_bodies())
    @example(raw=b'\xef\xbb\xbf{"model":"gpt-4o"}')  # a BOM: forwarded without it
    def check(raw: bytes) -> None:
        before = len(upstream.received)
        reply = parse_reply(exchange(proxy.port, request("/v1/completions", headers, raw)))
        assert reply is not None
        expected = strict_parse(raw)
        refusal = body_refusal(expected)
        if reply.status != 200:
            code = assert_our_error(reply, 400)
            assert len(upstream.received) == before
            if refusal is not None:  # not one object with one model id (issue 16)
                # Nesting deeper than the proxy parses is refused as JSON first.
                deep = b"[" * 1000 in raw
                assert code == refusal or (deep and code == "invalid_json"), (code, raw[:200])
                return
            assert code == "invalid_json"
            if isinstance(expected, dict) and b"[" * 1000 not in raw:
                # It parses here, so only an unwritable rewrite (an infinite number) may fail.
                assert expected.get("model") == ALIAS
                assert b"e309" in raw or b"e400" in raw
            return
        assert refusal is None, (refusal, raw[:200])
        assert reply.json() == {"echo": "/v1/completions", "method": "POST"}
        assert len(upstream.received) == before + 1
        sent = upstream.received[-1].body
        if isinstance(expected, dict) and expected.get("model") == ALIAS:
            routed = json.loads(sent.decode("utf-8"))
            assert routed["model"] in TARGETS
        elif raw.startswith(b"\xef\xbb\xbf"):  # a BOM: written again from the object
            assert not sent.startswith(b"\xef\xbb\xbf")
            assert json.loads(sent.decode("utf-8")) == expected
        else:
            assert raw == b"" or expected is not INVALID
            assert sent == raw
        assert_upstream_clean(upstream)

    check()


# --- size limits, truncation, broken HTTP ---------------------------------------------


@pytest.fixture
def small(make_proxy: Callable[..., Proxy], standin: StandIn) -> Proxy:
    """A proxy that accepts request bodies of at most 4 KiB."""
    return make_proxy(standin.url, MAX_BODY_SIZE="4k")


def test_oversized_truncated_and_broken_requests(small: Proxy, standin: StandIn) -> None:
    key = small.create_key().encode()
    standin.reset()
    auth = b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nConnection: close\r\n"
    auth += b"Authorization: Bearer " + key + b"\r\n"
    chunked = auth + b"Transfer-Encoding: chunked\r\n\r\n"
    answers: list[tuple[bytes, int, str]] = [
        # Declared too large: refused before the body is read, with or without a key.
        (auth + b"Content-Length: 5000\r\n\r\n", 413, "request_too_large"),
        # Without a key, the 401 comes first: the body is never read (issue 16).
        (request(body=b"x" * 5000)[:-5000], 401, "missing_api_key"),
        (auth + b"Content-Length: 1000000000000\r\n\r\n", 413, "request_too_large"),
        (auth + b"Expect: 100-continue\r\nContent-Length: 9999\r\n\r\n", 413, "request_too_large"),
        # Chunked: refused once what arrived passes the limit.
        (chunked + b"1388\r\n" + b"a" * 5000 + b"\r\n0\r\n\r\n", 413, "request_too_large"),
        (
            chunked + (b"64\r\n" + b"a" * 100 + b"\r\n") * 61 + b"0\r\n\r\n",
            413,
            "request_too_large",
        ),
        # Broken HTTP.
        (auth + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n", 400, "malformed_request"),
        (b"GARBAGE\r\n\r\n", 400, "malformed_request"),
        (b"GET /\r\n\r\n", 400, "malformed_request"),
        (
            b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
            400,
            "malformed_request",
        ),
        (b"POST /v1/chat HTTP/1.1\r\n Folded: first\r\n\r\n", 400, "malformed_request"),
        # Odd but parseable request lines: refused as targets, before any key check.
        (
            b"GET /v1/\xff\xfe HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
            400,
            "invalid_request_target",
        ),
        (
            b"GET http://evil.example/v1/models HTTP/1.1\r\nHost: evil.example\r\n"
            b"Connection: close\r\n\r\n",
            400,
            "invalid_request_target",
        ),
        (
            b"GET /v1/models HTTP/1.1\r\nHost: p\r\nConnection: close\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
            + b"\r\n",
            401,
            "missing_api_key",
        ),
    ]
    for raw, status, code in answers:
        assert_our_error(parse_reply(exchange(small.port, raw)), status, code)
    # At the limit exactly: forwarded.
    head = b'{"model":"gemini-3-flash","messages":[],"a":"'
    body = head + b"x" * (4096 - len(head) - 2) + b'"}'
    raw = auth + b"Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n" + body
    reply = parse_reply(exchange(small.port, raw))
    assert reply is not None and reply.status == 200
    assert [r.body for r in standin.received] == [body]
    standin.reset()
    # HTTP broken mid-message: our JSON error, or a clean close without an answer.
    cut_off = [
        (auth + b"Content-Length: 100\r\n\r\n{}", True),
        (chunked + b"100\r\nabc", True),
        (auth + b"Content-Le", True),
        (chunked + b"zz\r\nabc\r\n0\r\n\r\n", False),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", False),
        (b"\x16\x03\x01\x00\x05hello", True),
    ]
    for raw, half_close in cut_off:
        reply = parse_reply(exchange(small.port, raw, half_close=half_close))
        if reply is not None:
            assert_our_error(reply, 400)

    @SAMPLE
    @given(garbage=st.binary(min_size=1, max_size=200))
    def check(garbage: bytes) -> None:
        reply = parse_reply(exchange(small.port, garbage + b"\r\n\r\n", half_close=True))
        if reply is not None:
            assert_our_error(reply, {400, 401, 404, 413})

    check()
    assert standin.received == []
    still_serves(small, key.decode(), standin)
    time.sleep(0.2)
    log = small.log()
    assert "Traceback" not in log
    assert "apk_" not in log


# --- smuggling ------------------------------------------------------------------------

SMUGGLING = {
    # name: (headers after the credentials, body, expected code); all are 400.
    "two-different-content-lengths": (
        b"Content-Length: 2\r\nContent-Length: 40\r\n",
        b"{}",
        "malformed_request",
    ),
    "two-equal-content-lengths": (
        b"Content-Length: 2\r\nContent-Length: 2\r\n",
        b"{}",
        "malformed_request",
    ),
    "content-length-list": (b"Content-Length: 2, 2\r\n", b"{}", "malformed_request"),
    "content-length-plus": (b"Content-Length: +2\r\n", b"{}", "malformed_request"),
    "content-length-and-chunked": (
        b"Content-Length: 40\r\nTransfer-Encoding: chunked\r\n",
        b"0\r\n\r\nGET /admin/keys HTTP/1.1\r\nHost: p\r\n\r\n",
        "invalid_request_headers",
    ),
    "chunked-then-content-length": (
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"0\r\n\r\n",
        "invalid_request_headers",
    ),
    "chunked-identity": (
        b"Transfer-Encoding: chunked, identity\r\n",
        b"0\r\n\r\n",
        "malformed_request",
    ),
    "space-before-colon": (
        b"Transfer-Encoding : chunked\r\n",
        b"0\r\n\r\n",
        "invalid_request_headers",
    ),
    "xchunked": (b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n", "malformed_request"),
    "chunked-twice": (
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"0\r\n\r\n",
        "malformed_request",
    ),
    "vertical-tab-chunked-with-length": (
        b"Content-Length: 5\r\nTransfer-Encoding:\x0bchunked\r\n",
        b"0\r\n\r\n",
        "invalid_request_headers",
    ),
    "gzip-transfer-encoding": (b"Transfer-Encoding: gzip\r\n", b"", "invalid_request_headers"),
    "tab-separated-name": (
        b"Transfer-Encoding\t: chunked\r\n",
        b"0\r\n\r\n",
        "invalid_request_headers",
    ),
}


@pytest.mark.parametrize("case", sorted(SMUGGLING))
def test_smuggling_attempts_are_400_json_and_never_forwarded(
    proxy: Proxy, upstream: StandIn, api_key: str, log_watch: None, case: str
) -> None:
    extra, body, code = SMUGGLING[case]
    raw = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nConnection: keep-alive\r\n"
        b"Authorization: Bearer " + api_key.encode() + b"\r\n" + extra + b"\r\n" + body
    )
    # A second, pipelined request: it must never be answered from the smuggled bytes.
    raw += request(
        "/v1/models/x", [(b"Authorization", b"Bearer " + api_key.encode())], method=b"GET"
    )
    assert_our_error(parse_reply(exchange(proxy.port, raw)), 400, code)
    assert upstream.received == []
    still_serves(proxy, api_key, upstream)
    assert_upstream_clean(upstream)


def test_smuggling_over_http_1_0_is_400_json(
    proxy: Proxy, upstream: StandIn, api_key: str, log_watch: None
) -> None:
    raw = (
        b"POST /v1/chat/completions HTTP/1.0\r\nHost: p\r\nAuthorization: Bearer "
        + api_key.encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert_our_error(parse_reply(exchange(proxy.port, raw)), 400, "invalid_request_headers")
    assert upstream.received == []
    still_serves(proxy, api_key, upstream)


# --- encoded bodies -------------------------------------------------------------------


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_encoded_bodies_are_routed(
    proxy: Proxy, upstream: StandIn, api_key: str, log_watch: None, encoding: str
) -> None:
    response = httpx.post(
        f"{proxy.url}/v1/completions",
        headers={
            "authorization": f"Bearer {api_key}",
            "content-type": "application/json",
            "content-encoding": encoding,
        },
        content=ENCODERS[encoding](CHAT),
    )
    assert response.status_code == 200, response.text
    [seen] = upstream.received
    # Written again from the object checked, uncompressed (decoders differ: issue 16).
    assert "content-encoding" not in seen.headers
    assert json.loads(seen.body)["model"] in TARGETS
    assert_upstream_clean(upstream)


@pytest.mark.parametrize("encoding", ["gzip", "zstd", "br", "deflate"])
def test_a_body_that_is_not_what_its_encoding_claims_is_400(
    proxy: Proxy, upstream: StandIn, api_key: str, log_watch: None, encoding: str
) -> None:
    headers = [
        (b"Authorization", b"Bearer " + api_key.encode()),
        (b"Content-Type", b"application/json"),
        (b"Content-Encoding", encoding.encode()),
    ]
    reply = parse_reply(exchange(proxy.port, request(headers=headers, body=CHAT)))
    assert_our_error(reply, 400, "invalid_encoding")
    assert upstream.received == []


# --- known bugs, pinned ---------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [b"X-Trace: a\r\n x-api-key: apk_smuggled", b"X-Trace: a\x00b"],
    ids=["obs-fold", "nul"],
)
def test_obs_fold_and_nul_in_header_values_are_refused(
    proxy: Proxy, upstream: StandIn, api_key: str, header: bytes
) -> None:
    raw = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nConnection: close\r\n"
        b"Authorization: Bearer " + api_key.encode() + b"\r\n" + header + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(CHAT) + CHAT
    )
    answer = exchange(proxy.port, raw)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]  # today: the stand-in's refusal
    assert_our_error(parse_reply(answer), 400, "invalid_request_headers")
    assert upstream.received == []


def test_a_lone_surrogate_model_does_not_break_usage_metrics_or_logs(
    make_proxy: Callable[..., Proxy], standin: StandIn
) -> None:
    proxy = make_proxy(standin.url)
    key = proxy.create_key("surrogate")
    auth = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    poisoned = httpx.post(
        f"{proxy.url}/v1/chat/completions", headers=auth, content=b'{"model":"\\ud800"}'
    )
    # No model id: refused in JSON, never forwarded or counted (issue 16).
    assert poisoned.status_code == 400, poisoned.text
    assert poisoned.json()["error"]["code"] == "invalid_model"
    for _ in range(3):
        body = {"model": "gemini-3-flash", "messages": []}
        httpx.post(f"{proxy.url}/v1/chat/completions", headers=auth, json=body)
    time.sleep(2.5)  # usage is written about once a second
    admin = {"x-admin-secret": ADMIN_SECRET}
    rows = httpx.get(f"{proxy.url}/admin/usage", headers=admin).json()["data"]
    counted = sum(r["requests"] for r in rows if r["model"] == "gemini-3-flash")
    problems = []
    if counted != 3:
        problems.append(f"usage counted {counted} of 3 later requests")
    if (status := httpx.get(f"{proxy.url}/metrics", headers=admin).status_code) != 200:
        problems.append(f"GET /metrics answered {status}")
    if "Traceback" in proxy.log():
        problems.append("Traceback in the proxy log")
    assert problems == []


def test_a_model_cannot_forge_access_log_lines(
    make_proxy: Callable[..., Proxy], standin: StandIn
) -> None:
    proxy = make_proxy(standin.url)
    key = proxy.create_key("forger")
    forged = "2030-01-01T00:00:00.000Z INFO POST /admin/create-key 201 1.0ms key=- id=forged"
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": f"gpt-4o\n{forged}", "messages": []},
    )
    assert response.status_code == 400  # no model id (issue 16); the line is still checked
    assert response.json()["error"]["code"] == "invalid_model"
    time.sleep(0.3)
    assert forged not in proxy.log().splitlines()

"""End to end: hostile request bodies, through real mitmdump (issue 16 items 2, 4, 5, 6, 8;
issue 17's `stream` that is not a boolean).

- the model allow-list fails closed: a body whose model cannot be read as exactly one
  string (a list, an array body, duplicate keys, a non-JSON content type) is refused, and
  what is forwarded is the object checked;
- `stream` is a JSON boolean and `stream_options` an object, or the request is refused;
- a model name that is no model id (an `apk_` key, say) is refused and shown nowhere;
- slow bodies are timed out, and a request refused on its headers is closed unread;
- bodies without a key are held to a small global budget, and memory comes back;
- large bodies are parsed off the event loop, so other clients are not stalled.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.harness import ADMIN_SECRET, Proxy, bearer
from tests.support.standin import StandIn

GEMINI = "gemini-3-flash"
CLAUDE = "claude-sonnet-4-5"


def post(proxy: Proxy, key: str, raw: bytes, path: str = "/v1/chat/completions", **headers: str):
    return httpx.post(
        f"{proxy.url}{path}",
        content=raw,
        headers={**bearer(key), "content-type": "application/json", **headers},
        timeout=30,
    )


def forwarded_models(upstream: StandIn) -> list[object]:
    return [r.json().get("model") for r in upstream.received if r.path.startswith("/v1/")]


# --- the model check fails closed ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "content_type", "code"),
    [
        (b'{"model": ["claude-sonnet-4-5"], "messages": []}', "application/json", "invalid_model"),
        (b'[{"model": "claude-sonnet-4-5", "messages": []}]', "application/json", "invalid_json"),
        (
            b'{"model": "claude-sonnet-4-5", "model": "gemini-3-flash", "messages": []}',
            "application/json",
            "invalid_json",
        ),
        (
            b'{"model": "claude-sonnet-4-5", "messages": []}',
            "multipart/form-data; boundary=x",
            "unsupported_content_type",
        ),
        (
            b'{"model": "claude-sonnet-4-5", "messages": []}',
            "text/plain",
            "unsupported_content_type",
        ),
        (b'{"messages": []}', "application/json", "invalid_model"),
    ],
    ids=["model-list", "array-body", "duplicate-model", "multipart", "text-plain", "no-model"],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_model_the_check_cannot_read_is_refused(
    proxy: Proxy, upstream: StandIn, raw: bytes, content_type: str, code: str, path: str
) -> None:
    key = proxy.create_key(models=[GEMINI])  # claude-sonnet-4-5 is not allowed
    response = post(proxy, key, raw, path, **{"content-type": content_type})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"]["code"] == code
    if path == "/v1/messages":
        assert body["type"] == "error"  # the caller's shape
    assert upstream.received == [], "nothing of a refused body reaches the upstream"


def test_what_is_forwarded_is_the_object_checked(proxy: Proxy, upstream: StandIn) -> None:
    key = proxy.create_key(models=[GEMINI])
    raw = b'{"model": "gemini-3-flash", "messages": [{"role": "user", "content": "hi"}]}'
    assert post(proxy, key, raw).status_code == 200
    # gzip: Python reads the first member only, Node every member; what goes upstream is
    # the object the proxy read, written again, never the client's compressed bytes.
    packed = gzip.compress(raw) + gzip.compress(b'{"model": "claude-sonnet-4-5"}')
    response = post(proxy, key, packed, **{"content-encoding": "gzip"})
    assert response.status_code == 200, response.text
    plain, decoded = upstream.received
    assert plain.body == raw  # unchanged, strictly parsed: the very bytes checked
    assert "content-encoding" not in decoded.headers
    assert json.loads(decoded.body) == json.loads(raw)


# --- stream is a boolean --------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [{"stream": 1}, {"stream": "yes"}, {"stream": True, "stream_options": []}],
    ids=["one", "yes", "options-list"],
)
def test_stream_that_is_not_a_boolean_is_refused(
    proxy: Proxy, upstream: StandIn, extra: dict[str, object]
) -> None:
    key = proxy.create_key()
    body = {"model": GEMINI, "messages": [{"role": "user", "content": "hi"}], **extra}
    response = post(proxy, key, json.dumps(body).encode())
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_stream"
    assert upstream.received == []


# --- model names -------------------------------------------------------------------------------


def test_a_key_sent_as_model_name_is_refused_and_shown_nowhere(
    proxy: Proxy, upstream: StandIn
) -> None:
    key = proxy.create_key()
    secret = proxy.create_key("victim")
    for model in (secret, "x" * 200, "gpt-4o\nforged", "a b"):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        response = post(proxy, key, json.dumps(body).encode())
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_model"
        assert secret not in response.text
    assert upstream.received == []
    admin = {"x-admin-secret": ADMIN_SECRET}
    metrics = httpx.get(f"{proxy.url}/metrics", headers=admin).text
    requests = httpx.get(f"{proxy.url}/admin/requests", headers=admin).text
    time.sleep(1.5)  # the access lines and the usage flush
    for where in (proxy.log(), metrics, requests):
        assert secret not in where
        assert secret[4:20] not in where


def test_metrics_label_only_known_models(proxy: Proxy, upstream: StandIn) -> None:
    key = proxy.create_key()
    for n in range(5):
        body = {"model": f"junk-model-{n}", "messages": [{"role": "user", "content": "hi"}]}
        assert post(proxy, key, json.dumps(body).encode()).status_code == 200
    body = {"model": GEMINI, "messages": [{"role": "user", "content": "hi"}]}
    assert post(proxy, key, json.dumps(body).encode()).status_code == 200
    metrics = httpx.get(f"{proxy.url}/metrics", headers={"x-admin-secret": ADMIN_SECRET}).text
    assert "junk-model" not in metrics
    assert 'model="other"' in metrics
    assert f'model="{GEMINI}"' in metrics


# --- slow bodies -------------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def slow_body(proxy: Proxy, headers: bytes, stop: threading.Event, closed: list[float]) -> None:
    """Send a request head announcing 100000 bytes, then one byte a second until closed."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=1) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                b"content-type: application/json\r\n" + headers + b"\r\n{"
            )
            while not stop.is_set():
                try:
                    if sock.recv(65536) == b"":
                        break
                except TimeoutError:
                    pass
                try:
                    sock.sendall(b" ")
                except OSError:
                    break
    except OSError:
        pass
    closed.append(time.monotonic() - started)


def slow_clients(proxy: Proxy, count: int, headers: bytes, seconds: float) -> list[float]:
    """`count` slow-body connections; how long each stayed open (at most `seconds`)."""
    stop = threading.Event()
    closed: list[float] = []
    threads = [
        threading.Thread(target=slow_body, args=(proxy, headers, stop, closed), daemon=True)
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds
    while len(closed) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join(5)
    return closed


def test_a_request_refused_on_its_headers_is_closed_without_reading_its_body(
    make_proxy, upstream: StandIn
) -> None:
    proxy = make_proxy(upstream.url, MAX_CONNECTIONS="40", CLIENT_HEADER_TIMEOUT="3")
    closed = slow_clients(proxy, 40, b"", seconds=15)
    assert len(closed) == 40, "every unauthenticated slow body is closed"
    assert max(closed) < 10
    assert httpx.get(f"{proxy.url}/health", timeout=5).status_code == 200
    # Each is still logged once, with the status it was answered.
    lines = [line for line in proxy.log().splitlines() if "POST /v1/chat/completions" in line]
    assert len(lines) == 40 and all(" 401 " in line for line in lines), lines[:3]


def test_a_slow_body_is_timed_out(make_proxy, upstream: StandIn) -> None:
    proxy = make_proxy(upstream.url, CLIENT_BODY_TIMEOUT="2", CLIENT_HEADER_TIMEOUT="2")
    key = proxy.create_key()
    stop = threading.Event()
    closed: list[float] = []

    def pause() -> None:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                + f"authorization: Bearer {key}\r\n\r\n".encode()
                + b'{"model":'
            )
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except (TimeoutError, ConnectionResetError):
                pass
            closed.append(time.monotonic() - started)
            answers.append(data)

    answers: list[bytes] = []
    thread = threading.Thread(target=pause, daemon=True)
    thread.start()
    thread.join(20)
    stop.set()
    assert closed and closed[0] < 10, closed
    assert b" 408 " in answers[0].split(b"\r\n", 1)[0]
    assert b"request_timeout" in answers[0]


# --- memory ---------------------------------------------------------------------------------

BIG = 30 << 20


def stalled_body(proxy: Proxy, head: bytes, chunked: bool, opened: list[socket.socket]) -> None:
    """Send `head` and up to BIG bytes of body, then stall (the socket stays open)."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    opened.append(sock)
    block = b"x" * (1 << 20)
    if chunked:
        block = f"{len(block):x}\r\n".encode() + block + b"\r\n"
    try:
        sock.sendall(head)
        for _ in range(BIG >> 20):
            sock.sendall(block)
    except OSError:
        pass


def test_unauthenticated_bodies_do_not_take_memory(make_proxy, upstream: StandIn) -> None:
    proxy = make_proxy(upstream.url)
    pid = proxy.process.pid
    for _ in range(3):  # warm up: a few ordinary requests
        httpx.get(f"{proxy.url}/health", timeout=5)
    before = rss_kb(pid)
    heads = [
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % BIG,
            False,
        ),
        (b"POST /admin/create-key HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % BIG, False),
        (b"POST /admin/create-key HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", True),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            True,
        ),
    ]
    opened: list[socket.socket] = []
    threads = [
        threading.Thread(target=stalled_body, args=(proxy, *heads[n % 4], opened), daemon=True)
        for n in range(8)
    ]
    peak = before
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        peak = max(peak, rss_kb(pid))
        time.sleep(0.1)
    time.sleep(2)  # stalled
    peak = max(peak, rss_kb(pid))
    for sock in opened:
        sock.close()
    time.sleep(3)
    after = rss_kb(pid)
    assert httpx.get(f"{proxy.url}/health", timeout=5).status_code == 200
    print(f"RSS before {before} kB, peak {peak} kB, after {after} kB")
    # Before: +290 MB, and it stayed. Generous bounds: the budget is 4 MiB.
    assert (peak - before) < 80_000, (before, peak, after)
    assert (after - before) < 60_000, (before, peak, after)


# --- the event loop -----------------------------------------------------------------------


def test_large_bodies_do_not_stall_other_clients(make_proxy, upstream: StandIn) -> None:
    proxy = make_proxy(upstream.url)
    key = proxy.create_key(rpm=0)
    other = proxy.create_key()
    # A long conversation: many small objects, the slow case for a JSON reader.
    turn = {"role": "user", "content": "hello world " * 3}
    # `stream`: the proxy asks for the usage chunk, so the body is written again too.
    raw = json.dumps({"model": GEMINI, "stream": True, "messages": [turn] * 400_000}).encode()
    assert len(raw) > 25 << 20
    with httpx.Client(timeout=10) as client:  # the list is cached after the first call
        client.get(f"{proxy.url}/v1/models", headers=bearer(other))

    def big() -> None:
        # The stand-in may refuse 29 MB; the proxy has parsed it by then.
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(
                f"{proxy.url}/v1/chat/completions",
                content=raw,
                headers={**bearer(key), "content-type": "application/json"},
                timeout=60,
            )

    slowest = 0.0
    with httpx.Client(timeout=30) as client:
        for _round in range(2):
            threads = [threading.Thread(target=big, daemon=True) for _ in range(4)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 60
            while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
                started = time.monotonic()
                response = client.get(f"{proxy.url}/v1/models", headers=bearer(other))
                assert response.status_code == 200
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.05)
            for thread in threads:
                thread.join(5)
    print(f"slowest GET /v1/models during 4 x 29 MB bodies: {slowest:.3f} s")
    # On the loop (main): 0.86-1.57 s here, 4.1 s in the review; on one body thread
    # 0.15-0.18 s. The bound leaves room for two shared, busy cores.
    assert slowest < 0.6, slowest

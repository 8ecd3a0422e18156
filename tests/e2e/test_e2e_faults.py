"""End to end: faults of the upstream, the client and the database, through real mitmdump."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import socketserver
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.harness import ADMIN_SECRET, Proxy, bearer, free_port
from tests.support.standin import StandIn

ADMIN = {"x-admin-secret": ADMIN_SECRET}


def chat(stream: bool = False) -> dict[str, object]:
    return {"model": "gemini-3-flash", "stream": stream, "messages": []}


class RawUpstream(socketserver.ThreadingTCPServer):
    """An upstream that reads a request and answers with fixed bytes, then closes."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, reply: bytes, pause: float = 0.0) -> None:
        self.reply, self.pause = reply, pause
        super().__init__(("127.0.0.1", 0), RawHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class RawHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: RawUpstream = self.server  # type: ignore[assignment]
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(rest) < length:
            rest += self.request.recv(65536)
        for part in server.reply.split(b"<PAUSE>"):
            self.request.sendall(part)
            time.sleep(server.pause)
        self.request.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def raw_upstream() -> Iterator[list[RawUpstream]]:
    servers: list[RawUpstream] = []
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def assert_json_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code


# --- the upstream misbehaves -----------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (b"this is not HTTP at all\r\n\r\n", "upstream_invalid_response"),
        (b"\x16\x03\x01\x02\x00garbage", "upstream_invalid_response"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nZZ\r\nnope\r\n", None),
        (b"", "upstream_closed"),
    ],
    ids=["text", "binary", "bad-chunked", "silent-close"],
)
def test_garbage_from_the_upstream_is_a_clean_502(
    make_proxy, raw_upstream: list[RawUpstream], reply: bytes, code: str | None
) -> None:
    upstream = RawUpstream(reply)
    raw_upstream.append(upstream)
    proxy = make_proxy(upstream.url)
    key = proxy.create_key()
    started = time.monotonic()
    try:
        response = httpx.post(f"{proxy.url}/v1/chat/completions", headers=bearer(key), json=chat())
    except httpx.RemoteProtocolError:
        # Bad chunking after a 200 head: the head was already sent, so the client's
        # response is cut short; it must not hang.
        assert code is None
    else:
        assert_json_error(response, 502, code or "upstream_invalid_response")
    assert time.monotonic() - started < 3
    assert httpx.get(f"{proxy.url}/health").status_code == 200
    assert "Traceback" not in proxy.log()


def test_upstream_dropping_mid_stream_ends_the_client_stream_promptly(
    make_proxy, raw_upstream: list[RawUpstream]
) -> None:
    event = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
    chunk = b"%x\r\n%s\r\n" % (len(event), event)
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    upstream = RawUpstream(head + chunk + b"<PAUSE>" + chunk + b"<PAUSE>", pause=0.3)
    raw_upstream.append(upstream)
    proxy = make_proxy(upstream.url)
    key = proxy.create_key()
    received: list[str] = []
    started = time.monotonic()
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST", f"{proxy.url}/v1/chat/completions", headers=bearer(key), json=chat(True)
        ) as response,
    ):
        for line in response.iter_lines():
            if line:
                received.append(line)
    # The upstream hung up 0.3 s after its second event; the client knows within a second.
    assert time.monotonic() - started < 1.6
    assert len(received) == 2
    time.sleep(0.2)
    assert " 502 " in proxy.log() or "/v1/chat/completions 200" in proxy.log()
    assert httpx.get(f"{proxy.url}/health").status_code == 200


def test_client_disconnect_mid_stream_closes_the_upstream_side(
    proxy: Proxy, upstream: StandIn, api_key: str
) -> None:
    headers = {**bearer(api_key), "x-standin-chunks": "200", "x-standin-interval": "0.05"}
    with httpx.stream(
        "POST", f"{proxy.url}/v1/chat/completions", headers=headers, json=chat(True)
    ) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        assert upstream.open_streams == 1
    # The client hung up after one event; the upstream stream must stop soon, not run
    # its remaining ten seconds into nothing.
    deadline = time.monotonic() + 2
    while upstream.open_streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.open_streams == 0
    assert httpx.get(f"{proxy.url}/v1/models", headers=bearer(api_key)).status_code == 200


def test_upstream_status_and_retry_after_pass_through(proxy: Proxy, api_key: str) -> None:
    for status in (429, 500, 502, 503, 529):
        response = httpx.post(
            f"{proxy.url}/v1/chat/completions",
            headers={**bearer(api_key), "x-standin-status": str(status)},
            json=chat(),
        )
        assert response.status_code == status
        assert response.headers["retry-after"] == "7"
        assert response.json()["error"]["message"] == f"stand-in error {status}"


# --- the database misbehaves ------------------------------------------------------------


def test_a_locked_database_makes_requests_wait_not_fail(proxy: Proxy, api_key: str) -> None:
    holder = sqlite3.connect(proxy.database, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(2.0, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        # Readers are not blocked in WAL mode; a writer (create-key) waits for the lock.
        assert httpx.get(f"{proxy.url}/v1/models", headers=bearer(api_key)).status_code == 200
        started = time.monotonic()
        created = httpx.post(
            f"{proxy.url}/admin/create-key", headers=ADMIN, json={"name": "waited"}, timeout=10
        )
        assert created.status_code == 201
        assert time.monotonic() - started > 1.0
    finally:
        release.join()
        holder.close()


def test_a_database_locked_past_the_busy_timeout_answers_503(proxy: Proxy) -> None:
    holder = sqlite3.connect(proxy.database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        response = httpx.post(
            f"{proxy.url}/admin/create-key", headers=ADMIN, json={"name": "late"}, timeout=15
        )
        assert_json_error(response, 503, "database_unavailable")
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert (
        httpx.post(
            f"{proxy.url}/admin/create-key", headers=ADMIN, json={"name": "late"}
        ).status_code
        == 201
    )


def test_a_deleted_database_is_503_until_restored_then_recreated_on_demand(
    make_proxy, standin: StandIn
) -> None:
    proxy = make_proxy(standin.url)
    key = proxy.create_key()
    backup = proxy.database.with_name("backup.db")
    sqlite3.connect(proxy.database).backup(dst := sqlite3.connect(backup))
    dst.close()
    for suffix in ("", "-wal", "-shm"):
        proxy.database.with_name(proxy.database.name + suffix).unlink(missing_ok=True)

    response = httpx.get(f"{proxy.url}/v1/models", headers=bearer(key))
    assert_json_error(response, 503, "database_unavailable")
    health = httpx.get(f"{proxy.url}/health")
    assert health.status_code == 503 and health.json()["database"] == "unavailable"

    shutil.copy(backup, proxy.database)  # the operator restores the backup
    assert httpx.get(f"{proxy.url}/v1/models", headers=bearer(key)).status_code == 200
    assert httpx.get(f"{proxy.url}/health").status_code == 200

    proxy.database.unlink()  # gone for good: creating a key starts a fresh schema
    fresh = proxy.create_key("after-the-loss")
    assert httpx.get(f"{proxy.url}/v1/models", headers=bearer(fresh)).status_code == 200
    assert httpx.get(f"{proxy.url}/v1/models", headers=bearer(key)).status_code == 403


def test_an_unreadable_database_is_503_and_recovers(make_proxy, standin: StandIn) -> None:
    proxy = make_proxy(standin.url)
    key = proxy.create_key()
    good = proxy.database.read_bytes()
    wal = proxy.database.with_name(proxy.database.name + "-wal")
    sqlite3.connect(proxy.database).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    good = proxy.database.read_bytes()
    replacement = proxy.database.with_name("garbage.db")
    replacement.write_bytes(b"this is not a database" * 100)
    os.replace(replacement, proxy.database)
    wal.unlink(missing_ok=True)
    response = httpx.get(f"{proxy.url}/v1/models", headers=bearer(key))
    assert_json_error(response, 503, "database_unavailable")
    assert httpx.get(f"{proxy.url}/health").json()["database"] == "unavailable"
    restored = proxy.database.with_name("restored.db")
    restored.write_bytes(good)
    os.replace(restored, proxy.database)
    assert httpx.get(f"{proxy.url}/v1/models", headers=bearer(key)).status_code == 200
    assert "Traceback" not in proxy.log()


# --- restarts under load --------------------------------------------------------------------


def test_sigterm_under_load_serves_in_flight_and_counts_exactly_what_was_served(
    make_proxy, standin: StandIn
) -> None:
    proxy = make_proxy(standin.url)
    key_id = httpx.post(
        f"{proxy.url}/admin/create-key", headers=ADMIN, json={"name": "load"}
    ).json()
    key = key_id["api_key"]

    def one(i: int) -> str:
        try:
            response = httpx.post(
                f"{proxy.url}/v1/chat/completions",
                headers={**bearer(key), "x-standin-chunks": "10", "x-standin-interval": "0.05"},
                json=chat(stream=i % 2 == 0),
                timeout=20,
            )
        except httpx.TransportError:
            return "refused"  # arrived after the listener closed
        return "ok" if response.status_code == 200 else f"status {response.status_code}"

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, i) for i in range(200)]
        time.sleep(0.4)
        proxy.process.send_signal(signal.SIGTERM)
        outcomes = [f.result() for f in futures]
    assert proxy.process.wait(20) == 0
    served = outcomes.count("ok")
    assert served > 0 and set(outcomes) <= {"ok", "refused"}, set(outcomes)
    rows = proxy.usage_from_cli()
    counted = sum(r["requests"] for r in rows if r["key_id"] == key_id["id"])
    print(f"served {served}, refused {outcomes.count('refused')}, counted {counted}")
    assert counted == served


def test_a_down_upstream_port_answers_502_quickly_many_times(make_proxy) -> None:
    proxy = make_proxy(f"http://127.0.0.1:{free_port()}")
    key = proxy.create_key()
    with httpx.Client(headers=bearer(key)) as client:
        for _ in range(20):
            response = client.post(f"{proxy.url}/v1/chat/completions", json=chat())
            assert_json_error(response, 502, "upstream_unreachable")

"""Unit tests for connections.py (phases, limits, accept errors) and logs.RateLimitedLog.

The sockets themselves (408s, 503s, lingering after 413) are tested end to end in
tests/e2e/test_e2e_hostile.py.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.test import taddons, tflow

from apipod_proxy.config import ConfigError, Settings, load_settings
from apipod_proxy.connections import (
    BODY,
    BUSY,
    HEADERS,
    IDLE,
    MAX_HEADER_BYTES,
    RESERVED_FDS,
    Conn,
    ConnectionPolicy,
    default_max_connections,
    raise_file_limit,
)
from apipod_proxy.logs import RateLimitedLog
from tests.support.gateway import make_settings


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines() -> Any:
    handler = ListHandler()
    logger = logging.getLogger("apipod.test")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.lines
    logger.removeHandler(handler)


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    return make_settings(tmp_path, admin_secret=None, max_body_size=1024, **overrides)


# --- logs.RateLimitedLog -------------------------------------------------------------------


def test_rate_limited_log_writes_once_per_interval_with_a_count(lines: list[str]) -> None:
    now = [100.0]
    rate_log = RateLimitedLog(logging.getLogger("apipod.test"), 10, lambda: now[0])
    assert rate_log(logging.ERROR, "accept", "cannot accept: %s", "EMFILE")
    for _ in range(4999):
        now[0] += 0.001
        assert not rate_log(logging.ERROR, "accept", "cannot accept: %s", "EMFILE")
    assert rate_log(logging.WARNING, "other", "another kind")  # kinds are apart
    now[0] = 110.5
    assert rate_log(logging.ERROR, "accept", "cannot accept: %s", "EMFILE")
    assert lines == [
        "cannot accept: EMFILE",
        "another kind",
        "cannot accept: EMFILE (5000 times in the last 10s)",
    ]


# --- limits --------------------------------------------------------------------------------


def test_default_max_connections_leaves_room_for_upstreams_and_sqlite() -> None:
    assert default_max_connections(1024) == (1024 - RESERVED_FDS) // 2 == 384
    assert default_max_connections(1_048_576) == 524_160
    assert default_max_connections(100) == 1


def test_raise_file_limit_raises_the_soft_limit_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
        got = raise_file_limit()
        assert got == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert got == min(hard, 1 << 20) if hard != resource.RLIM_INFINITY else 1 << 20
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_settings_defaults_and_validation() -> None:
    base = {"ANTIGRAVITY_KEY": "k"}
    loaded = load_settings(base)
    assert (loaded.client_header_timeout, loaded.idle_timeout) == (30.0, 120.0)
    assert loaded.max_connections is None
    loaded = load_settings(
        {**base, "CLIENT_HEADER_TIMEOUT": "2.5", "IDLE_TIMEOUT": "9", "MAX_CONNECTIONS": "500"}
    )
    assert (loaded.client_header_timeout, loaded.idle_timeout) == (2.5, 9.0)
    assert loaded.max_connections == 500
    for name, value in [
        ("MAX_CONNECTIONS", "0"),
        ("MAX_CONNECTIONS", "many"),
        ("CLIENT_HEADER_TIMEOUT", "-1"),
        ("IDLE_TIMEOUT", "soon"),
    ]:
        with pytest.raises(ConfigError, match=name):
            load_settings({**base, name: value})


def test_setup_derives_max_connections_unless_set(tmp_path: Path) -> None:
    policy = ConnectionPolicy()
    policy.setup(settings(tmp_path, max_connections=7))
    assert policy.max_connections == 7
    policy.setup(settings(tmp_path))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert policy.max_connections == default_max_connections(min(soft, 1 << 20))


# --- phases --------------------------------------------------------------------------------


def test_a_connection_moves_between_headers_busy_and_idle(tmp_path: Path) -> None:
    async def go() -> list[tuple[str, bool, bool]]:
        policy = ConnectionPolicy()
        policy.setup(settings(tmp_path, client_header_timeout=30.0, idle_timeout=120.0))
        flow = tflow.tflow()
        conn = policy.conns[flow.client_conn.id] = Conn(policy, flow.client_conn)
        conn.arm(30.0)
        seen = []

        def note() -> None:
            assert conn.timer is None or isinstance(conn.timer, asyncio.TimerHandle)
            seen.append((conn.phase, conn.partial, conn.timer is not None))

        conn.received(b"GET / HTTP/1.1\r\n")
        note()  # headers, partial, header timer
        policy.requestheaders(flow)
        note()  # body (tflow's request has one): the body timer
        policy.request(flow)
        note()  # busy: no timer at all, however long the upstream or the stream takes
        conn.received(b"GET / HTTP/1.1\r\n")  # a pipelined request changes nothing
        note()
        policy.response(flow)
        note()  # idle, idle timer
        conn.received(b"GET / HTTP/1.1\r\n")
        note()  # the next request began: headers again, partial
        policy.requestheaders(flow)
        policy.error(flow)
        note()
        with taddons.context():  # no proxyserver: no socket to close
            policy.client_disconnected(flow.client_conn)
        assert flow.client_conn.id not in policy.conns
        return seen

    assert asyncio.run(go()) == [
        (HEADERS, True, True),
        (BODY, False, True),
        (BUSY, False, False),
        (BUSY, False, False),
        (IDLE, False, True),
        (HEADERS, True, True),
        (IDLE, False, True),
    ]


def test_a_lingering_close_counts_once_against_max_connections(tmp_path: Path) -> None:
    """A connection closed unread lingers while mitmproxy still holds it: it is one
    connection, not two (40 refused slow bodies reached MAX_CONNECTIONS=48 before)."""

    async def go() -> list[int]:
        policy = ConnectionPolicy()
        policy.setup(settings(tmp_path))
        held, refused = tflow.tflow().client_conn, tflow.tflow().client_conn
        policy.conns[held.id] = Conn(policy, held)
        counts = []

        def count() -> None:
            counts.append(len(policy.conns) + policy.lingering)

        release = asyncio.Event()
        lingers = [asyncio.create_task(release.wait()) for _ in range(2)]
        policy.track_linger(lingers[0], False, held.id)  # closed unread, still in conns
        policy.track_linger(lingers[1], True, refused.id)  # refused at accept: never in conns
        count()  # 1 held + 1 refused
        with taddons.context():
            policy.client_disconnected(held)  # mitmproxy lets go; the linger goes on
        count()
        release.set()
        await asyncio.gather(*lingers)
        await asyncio.sleep(0)  # the done callbacks
        count()
        return counts

    assert asyncio.run(go()) == [2, 2, 0]


def test_a_request_head_past_the_limit_is_refused_once(tmp_path: Path) -> None:
    async def go() -> tuple[list[int], list[int]]:
        policy = ConnectionPolicy()
        policy.setup(settings(tmp_path))
        refused: list[int] = []
        policy.headers_too_large = lambda conn: refused.append(conn.head_bytes)  # type: ignore[method-assign]
        flow = tflow.tflow()
        conn = Conn(policy, flow.client_conn)
        conn.received(b"GET / HTTP/1.1\r\nx: " + b"a" * (MAX_HEADER_BYTES - 200))
        conn.received(b"a" * 99 + b"\r")
        conn.received(b"\n\r\n" + b"body" * 100_000)  # the end of the head, split across reads
        fine = list(refused)
        conn = Conn(policy, flow.client_conn)
        for _ in range(3):
            conn.received(b"x: " + b"a" * 65536)
        return fine, refused

    fine, refused = asyncio.run(go())
    assert fine == []
    assert len(refused) == 1 and refused[0] > MAX_HEADER_BYTES


def test_expiry_while_busy_does_nothing(tmp_path: Path) -> None:
    async def go() -> str:
        policy = ConnectionPolicy()
        policy.setup(settings(tmp_path, client_header_timeout=0.01))
        flow = tflow.tflow()
        conn = policy.conns[flow.client_conn.id] = Conn(policy, flow.client_conn)
        policy.requestheaders(flow)
        policy.request(flow)  # the body is in
        policy.expired(conn)
        return conn.phase

    assert asyncio.run(go()) == BUSY


def test_a_body_pause_is_timed_from_the_last_read(tmp_path: Path) -> None:
    async def go() -> list[str]:
        policy = ConnectionPolicy()
        policy.setup(settings(tmp_path, client_body_timeout=0.2))
        flow = tflow.tflow()
        conn = policy.conns[flow.client_conn.id] = Conn(policy, flow.client_conn)
        policy.requestheaders(flow)
        seen = [conn.phase]
        for _ in range(4):  # a byte every 0.1 s is no pause
            await asyncio.sleep(0.1)
            conn.received(b"x")
        seen.append(conn.phase)
        with taddons.context():  # no proxyserver: no socket to close
            await asyncio.sleep(0.35)
        seen.append("timer" if conn.timer is not None else "expired")
        return seen

    assert asyncio.run(go()) == [BODY, BODY, "expired"]


def test_unauthenticated_bodies_share_one_budget(tmp_path: Path) -> None:
    async def go() -> list[int]:
        policy = ConnectionPolicy()
        policy.setup(settings(tmp_path, unauthenticated_body_buffer=1000))
        conns = []
        for _ in range(2):
            flow = tflow.tflow()
            flow.request.headers["content-length"] = "700"
            conn = policy.conns[flow.client_conn.id] = Conn(policy, flow.client_conn)
            with taddons.context():
                policy.requestheaders(flow)  # no FlowState: no key
                conn.received(b"x" * 400)
            conns.append(conn)
        held = [policy.unauthenticated_bytes, conns[0].held, conns[1].held]
        conns[0].request_done()
        return [*held, policy.unauthenticated_bytes]

    # The second announces 700 more than the 600 left: refused before reading.
    assert asyncio.run(go()) == [400, 400, 0, 0]


# --- accept errors -------------------------------------------------------------------------


def test_accept_errors_are_rate_limited_and_others_passed_on(tmp_path: Path) -> None:
    passed_on: list[dict[str, Any]] = []

    async def go() -> list[str]:
        loop = asyncio.get_running_loop()

        def previous(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            passed_on.append(context)

        loop.set_exception_handler(previous)
        policy = ConnectionPolicy()
        policy.setup(settings(tmp_path))
        handler = ListHandler()
        logging.getLogger("apipod").addHandler(handler)
        try:
            policy.running()
            for _ in range(1000):
                loop.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(errno.EMFILE, "Too many open files"),
                    }
                )
            loop.call_exception_handler({"message": "something else"})
            policy.done()
            assert loop.get_exception_handler() is previous
        finally:
            logging.getLogger("apipod").removeHandler(handler)
        return handler.lines

    logged = asyncio.run(go())
    assert [line for line in logged if "accept" in line] == [
        "cannot accept a connection: [Errno 24] Too many open files"
    ]
    assert passed_on == [{"message": "something else"}]

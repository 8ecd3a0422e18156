"""Client connection policy: header and idle timeouts, a connection limit, lingering close.

A sub-addon of `Apipod` (listed in its `addons`), so the request path stays small.
mitmproxy's only client timeout is `tcp_timeout` (600 s of inactivity), so without this
a client that sends half a request line and nothing more holds a socket for ten minutes,
and enough of them exhaust the process's file descriptors.

A connection is in one of three phases:
- headers: opened, or bytes of a new request arrived after an idle spell; the request
  headers must be complete within CLIENT_HEADER_TIMEOUT, else the connection is closed
  (with a 408 when part of a request was read);
- body: from request headers to the end of the request body; a pause between reads
  longer than CLIENT_BODY_TIMEOUT is answered 408 and the connection closed. A body
  without a customer key (an internal path) counts against UNAUTHENTICATED_BODY_BUFFER,
  shared by all connections; past it, 413 and a close. A request refused on its headers
  (401, 403, 429) is answered and closed at once, its body never read;
- busy: from the end of the body to the end of the response. No timeout of ours applies:
  waiting for the upstream is UPSTREAM_TIMEOUT's business, and a stream may run for long;
- idle: between requests on keep-alive; closed silently after IDLE_TIMEOUT.

Past MAX_CONNECTIONS, a new connection is answered 503 `overloaded` and closed. Errors
that come in floods (refused connections, accept failures) are logged once per 10 s.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
from typing import Any

from mitmproxy import connection, http
from mitmproxy.net.http import http1

from . import errors, mitm_compat
from .config import Settings
from .flowstate import STATE
from .logs import RateLimitedLog

log = logging.getLogger("apipod")

#: File descriptors kept for what is not a client connection: SQLite (a connection per
#: database thread, each with its -wal and -shm files), listening sockets, log files,
#: and connections accepted in one burst before the limit is checked.
RESERVED_FDS = 256
#: The soft file limit is raised to the hard limit, but not past this.
MAX_FILE_LIMIT = 1 << 20
#: A body over MAX_BODY_SIZE: after the 413, read and discard up to 2 x MAX_BODY_SIZE
#: or this many seconds, so a client that writes its whole body first (httpx, the SDKs)
#: gets to read the 413 (nginx's lingering close).
LINGER_SECONDS = 30.0
#: A refused connection lingers briefly, so the request it already sent does not turn
#: the close into a reset that loses the 503; at most this many at a time.
REFUSED_LINGER = (64 * 1024, 1.0)
MAX_REFUSED_LINGERING = 64
_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

#: A request head (request line and headers) larger than this gets 431 and a close.
MAX_HEADER_BYTES = 128 * 1024

#: A connection that read more body bytes than this hands freed memory back to the
#: system when it closes (glibc keeps freed arenas otherwise: 8 x 30 MB bodies left RSS
#: 290 MB higher). At most one trim a second.
TRIM_AFTER_BYTES = 4 << 20
TRIM_INTERVAL = 1.0

HEADERS, BODY, BUSY, IDLE = "headers", "body", "busy", "idle"


def expects_body(request: http.Request) -> bool:
    """Whether a request's head announces a body (a Content-Length over 0, or chunks)."""
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        return True
    try:
        return int(request.headers.get("content-length", "0")) > 0
    except ValueError:
        return False


def announced_length(request: http.Request) -> int:
    try:
        return max(0, int(request.headers.get("content-length", "0")))
    except ValueError:
        return 0


def raise_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as Go programs do); the new soft limit.

    Soft limits are often 1024 (systemd, Docker 25+) while the hard limit is far higher;
    a proxy holds two descriptors per client connection that is forwarding.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_FILE_LIMIT if hard == resource.RLIM_INFINITY else min(hard, MAX_FILE_LIMIT)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return min(soft, MAX_FILE_LIMIT) if soft != resource.RLIM_INFINITY else MAX_FILE_LIMIT
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the file limit from %d to %d: %s", soft, target, exc)
        return soft
    return target


def default_max_connections(file_limit: int) -> int:
    """A client connection may hold an upstream socket too: two descriptors each."""
    return max(1, (file_limit - RESERVED_FDS) // 2)


class ConnectionPolicy:
    """The addon. Its policy applies once `setup` has its settings (the addon calls it
    when the Gateway is loaded; a test may call it directly)."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.max_connections = 0
        self.conns: dict[str, Conn] = {}
        #: Closing connections still reading what their client sends (LingeringWriter),
        #: counted here once mitmproxy has let go of them (until then, in `conns`).
        self.lingering = 0
        self.refused_lingering = 0
        self._lingering_ids: set[str] = set()
        self.rate_log = RateLimitedLog(log)
        self._exception_handler: Any = None
        self._previous_handler: Any = None
        self._linger_tasks: set[asyncio.Task[None]] = set()
        #: Body bytes of requests without a customer key, held now, all connections.
        self.unauthenticated_bytes = 0
        self._trimmed_at = float("-inf")

    def setup(self, settings: Settings) -> None:
        self.settings = settings
        file_limit = raise_file_limit()
        self.max_connections = settings.max_connections or default_max_connections(file_limit)
        log.info(
            "client connections: at most %d (MAX_CONNECTIONS, file limit %d), "
            "header timeout %gs, body timeout %gs, idle timeout %gs",
            self.max_connections,
            file_limit,
            settings.client_header_timeout,
            settings.client_body_timeout,
            settings.idle_timeout,
        )

    # --- lifecycle ---------------------------------------------------------------

    def running(self) -> None:
        # mitmproxy's master installed its handler (a traceback per error) before `running`.
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            if isinstance(exc, OSError) and exc.errno in _ACCEPT_ERRORS:
                self.rate_log(logging.ERROR, "accept", "cannot accept a connection: %s", exc)
            elif previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        self._exception_handler, self._previous_handler = handler, previous
        loop.set_exception_handler(handler)

    def done(self) -> None:
        for conn in self.conns.values():
            conn.cancel_timer()
        for task in self._linger_tasks:
            task.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._exception_handler is not None and (
            loop.get_exception_handler() is self._exception_handler
        ):
            loop.set_exception_handler(self._previous_handler)

    # --- connections -------------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        if self.settings is None:
            return
        streams = mitm_compat.client_streams(client)
        if streams is None:
            return
        reader, writer = streams
        if len(self.conns) + self.lingering >= self.max_connections:
            self._refuse(client, reader, writer)
            return
        conn = self.conns[client.id] = Conn(self, client)
        mitm_compat.replace_client_streams(client, reader=WatchedReader(reader, conn))
        conn.arm(self.settings.client_header_timeout)

    def _refuse(self, client: connection.Client, reader: Any, writer: Any) -> None:
        reply = errors.error_response(
            503,
            "The proxy has too many open connections (MAX_CONNECTIONS); retry shortly",
            "overloaded",
            {"connection": "close", "retry-after": "1"},
        )
        writer.write(http1.assemble_response(reply))
        self._linger_briefly(client, reader, writer)
        client.error = "over MAX_CONNECTIONS"  # mitmproxy closes the connection at once
        self.rate_log(
            logging.WARNING,
            "overloaded",
            "refused a connection with 503: %d connections reach MAX_CONNECTIONS=%d",
            len(self.conns) + self.lingering,
            self.max_connections,
        )

    def _linger_briefly(self, client: connection.Client, reader: Any, writer: Any) -> None:
        """Make the coming close of a refused connection a short lingering one."""
        if self.refused_lingering < MAX_REFUSED_LINGERING:
            max_bytes, seconds = REFUSED_LINGER
            inner = reader.inner if isinstance(reader, WatchedReader) else reader
            lingering = LingeringWriter(
                writer, inner, self, max_bytes, seconds, refused=True, client_id=client.id
            )
            mitm_compat.replace_client_streams(client, writer=lingering)

    def headers_too_large(self, conn: Conn) -> None:
        conn.cancel_timer()
        streams = mitm_compat.client_streams(conn.client)
        if streams is None or conn.answered:
            return
        conn.answered = True
        reply = errors.error_response(
            431,
            f"The request headers are larger than the proxy accepts ({MAX_HEADER_BYTES} bytes)",
            "request_headers_too_large",
            {"connection": "close"},
        )
        self._linger_briefly(conn.client, *streams)
        mitm_compat.close_client(conn.client, http1.assemble_response(reply))
        self.rate_log(
            logging.WARNING,
            "headers too large",
            "closed a connection whose request head passed %d bytes",
            MAX_HEADER_BYTES,
        )

    def client_disconnected(self, client: connection.Client) -> None:
        conn = self.conns.pop(client.id, None)
        if conn is not None and client.id in self._lingering_ids:
            self.lingering += 1  # still closing: it counts as lingering from now on
        if conn is not None:
            conn.cancel_timer()
            conn.release()
            if conn.body_total > TRIM_AFTER_BYTES:
                self._trim_memory()
        if mitm_compat.close_forgotten_client(client):
            self.rate_log(logging.DEBUG, "forgotten", "closed a client socket mitmproxy left open")

    # --- requests ----------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # Called after the gateway's requestheaders: authentication has run.
        if (conn := self.conns.get(flow.client_conn.id)) is None:
            return
        conn.busy += 1
        conn.phase = BUSY
        conn.partial = False
        conn.cancel_timer()
        if flow.response is not None or not expects_body(flow.request):
            return  # a refusal is closed unread by the gateway (close_unread)
        assert self.settings is not None
        state = flow.metadata.get(STATE)
        conn.unauthenticated = state is None or state.user is None
        if conn.unauthenticated:
            budget = self.settings.unauthenticated_body_buffer
            if self.unauthenticated_bytes + announced_length(flow.request) > budget:
                self.over_budget(conn)
                return
            if not conn.hold(conn.early_bytes):
                return
        conn.phase = BODY
        conn.last_read = asyncio.get_running_loop().time()
        conn.arm(self.settings.client_body_timeout)

    def request(self, flow: http.HTTPFlow) -> None:
        """The body is complete: no more body timeout for this request."""
        conn = self.conns.get(flow.client_conn.id)
        if conn is not None and conn.phase == BODY:
            conn.phase = BUSY
            conn.cancel_timer()

    def close_unread(self, client: connection.Client, last_words: bytes) -> bool:
        """Answer with `last_words` and close, without reading the request body (a short
        lingering close discards what is already on its way, so the answer is not lost
        to a reset). False if the connection is gone."""
        streams = mitm_compat.client_streams(client)
        if streams is None:
            return False
        if (conn := self.conns.get(client.id)) is not None:
            if conn.answered:  # already answered (431: the head read on) and closing
                return False
            conn.answered = True
            conn.cancel_timer()
            conn.phase = BUSY
        self._linger_briefly(client, *streams)
        mitm_compat.close_client(client, last_words)
        return True

    def over_budget(self, conn: Conn) -> None:
        """Unauthenticated bodies would pass UNAUTHENTICATED_BODY_BUFFER: 413 and close."""
        assert self.settings is not None
        reply = errors.error_response(
            413,
            "Request bodies without an API key use up the proxy's buffer "
            "(UNAUTHENTICATED_BODY_BUFFER); retry shortly",
            "request_too_large",
            {"connection": "close"},
        )
        conn.release()
        self.close_unread(conn.client, http1.assemble_response(reply))
        self.rate_log(
            logging.WARNING,
            "unauthenticated buffer",
            "closed a connection: request bodies without a key would pass %d bytes "
            "(UNAUTHENTICATED_BODY_BUFFER)",
            self.settings.unauthenticated_body_buffer,
        )

    def _trim_memory(self) -> None:
        """Hand freed heap back to the system, on a thread, at most once a second."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._trimmed_at < TRIM_INTERVAL:
            return
        self._trimmed_at = loop.time()
        task = loop.create_task(asyncio.to_thread(mitm_compat.trim_memory), name="apipod trim")
        self._linger_tasks.add(task)  # a reference until done
        task.add_done_callback(self._linger_tasks.discard)

    def response(self, flow: http.HTTPFlow) -> None:
        if (conn := self.conns.get(flow.client_conn.id)) is not None:
            conn.request_done()

    def error(self, flow: http.HTTPFlow) -> None:
        conn = self.conns.get(flow.client_conn.id)
        if conn is None:
            return
        conn.request_done()
        if flow.error is not None and mitm_compat.says(flow.error.msg, "request_too_large"):
            self._linger_after_413(flow.client_conn)

    def _linger_after_413(self, client: connection.Client) -> None:
        """mitmproxy answers 413 and closes next: make that close a lingering one."""
        assert self.settings is not None
        streams = mitm_compat.client_streams(client)
        if streams is None:
            return
        reader, writer = streams
        inner = reader.inner if isinstance(reader, WatchedReader) else reader
        max_bytes = 2 * self.settings.max_body_size
        lingering = LingeringWriter(
            writer, inner, self, max_bytes, LINGER_SECONDS, client_id=client.id
        )
        mitm_compat.replace_client_streams(client, writer=lingering)

    # --- timeouts ----------------------------------------------------------------

    def expired(self, conn: Conn) -> None:
        assert self.settings is not None
        conn.timer = None
        if conn.phase == BUSY or self.conns.get(conn.client.id) is not conn:
            return
        streams = mitm_compat.client_streams(conn.client)
        if streams is None:
            return
        if conn.phase == BODY:
            self._body_expired(conn)
            return
        if conn.phase == IDLE:
            transport = getattr(streams[1], "transport", None)
            if transport is not None and transport.get_write_buffer_size():
                conn.arm(self.settings.idle_timeout)  # the client is still reading a response
                return
            mitm_compat.close_client(conn.client)
            return
        timeout = self.settings.client_header_timeout
        last_words = b""
        if conn.partial:
            reply = errors.error_response(
                408,
                f"The request headers did not arrive within {timeout:g} seconds "
                "(CLIENT_HEADER_TIMEOUT)",
                "request_timeout",
                {"connection": "close"},
            )
            last_words = http1.assemble_response(reply)
        conn.answered = True
        mitm_compat.close_client(conn.client, last_words)
        self.rate_log(
            logging.INFO,
            "header timeout",
            "closed a connection without complete request headers after %gs "
            "(CLIENT_HEADER_TIMEOUT)",
            timeout,
        )

    def _body_expired(self, conn: Conn) -> None:
        assert self.settings is not None
        timeout = self.settings.client_body_timeout
        left = conn.last_read + timeout - asyncio.get_running_loop().time()
        if left > 0:  # bytes came since the timer was set: wait for the rest of the gap
            conn.arm(left)
            return
        reply = errors.error_response(
            408,
            f"The request body paused for more than {timeout:g} seconds (CLIENT_BODY_TIMEOUT)",
            "request_timeout",
            {"connection": "close"},
        )
        conn.release()
        self.close_unread(conn.client, http1.assemble_response(reply))
        self.rate_log(
            logging.INFO,
            "body timeout",
            "closed a connection whose request body paused for more than %gs (CLIENT_BODY_TIMEOUT)",
            timeout,
        )

    def track_linger(self, task: asyncio.Task[None], refused: bool, client_id: str) -> None:
        """Count a lingering close once against MAX_CONNECTIONS: in `lingering` only once
        mitmproxy no longer holds the connection (it is in `conns` until then)."""
        self._lingering_ids.add(client_id)
        if client_id not in self.conns:
            self.lingering += 1
        self.refused_lingering += refused
        self._linger_tasks.add(task)

        def finished(task: asyncio.Task[None]) -> None:
            if client_id in self._lingering_ids:
                self._lingering_ids.discard(client_id)
                if client_id not in self.conns:
                    self.lingering -= 1
            self.refused_lingering -= refused
            self._linger_tasks.discard(task)

        task.add_done_callback(finished)


class Conn:
    """What the policy knows about one client connection."""

    __slots__ = (
        "answered", "body_total", "busy", "client", "early_bytes", "head_bytes", "head_done",
        "held", "last_read", "partial", "phase", "policy", "tail", "timer", "unauthenticated",
    )  # fmt: skip

    def __init__(self, policy: ConnectionPolicy, client: connection.Client) -> None:
        self.policy, self.client = policy, client
        #: The proxy has written its last words (431, 408, 413, a refusal) and is closing:
        #: nothing more may be written, or the client would read a second response.
        self.answered = False
        self.busy = 0  # requests between their headers and the end of their response
        self.timer: asyncio.TimerHandle | None = None
        self.last_read = 0.0  # loop time of the last body bytes
        self.unauthenticated = False
        self.held = 0  # body bytes counted in the policy's unauthenticated_bytes
        self.body_total = 0  # body bytes read on this connection, for the memory trim
        self.expect_headers(partial=False)

    def expect_headers(self, partial: bool) -> None:
        self.phase = HEADERS
        self.partial = partial  # bytes of a request arrived in this phase
        self.head_bytes = 0  # bytes read before the end of the request head
        self.head_done = False
        self.tail = b""  # the last bytes read, to find an end of head split across reads
        self.early_bytes = 0  # bytes read after the head, before its requestheaders hook

    def hold(self, size: int) -> bool:
        """Count `size` more unauthenticated body bytes; past the budget, 413 and close
        (then False)."""
        policy = self.policy
        self.held += size
        policy.unauthenticated_bytes += size
        assert policy.settings is not None
        if policy.unauthenticated_bytes > policy.settings.unauthenticated_body_buffer:
            policy.over_budget(self)
            return False
        return True

    def release(self) -> None:
        self.policy.unauthenticated_bytes -= self.held
        self.held = 0

    def arm(self, seconds: float) -> None:
        self.cancel_timer()
        callback = mitm_compat.logged(self.policy.expired, "client timeout")
        self.timer = asyncio.get_running_loop().call_later(seconds, callback, self)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def received(self, data: bytes) -> None:
        if self.phase == BODY:
            self.last_read = asyncio.get_running_loop().time()
            self.body_total += len(data)
            if self.unauthenticated:
                self.hold(len(data))
            return
        if self.phase == BUSY:  # a pipelined request: not ours to time
            return
        if self.phase == IDLE:
            # A new request begins: its headers are due within CLIENT_HEADER_TIMEOUT.
            assert self.policy.settings is not None
            self.expect_headers(partial=True)
            self.arm(self.policy.settings.client_header_timeout)
        self.partial = True
        if self.head_done:
            self.early_bytes += len(data)
            self.body_total += len(data)
            return
        # mitmproxy buffers a request head without bound (and rescans it on every read).
        edge = self.tail + data[:3]
        if b"\n\n" in data or b"\n\r\n" in data or b"\n\n" in edge or b"\n\r\n" in edge:
            self.head_done = True
            return
        self.head_bytes += len(data)
        self.tail = data[-3:]
        if self.head_bytes > MAX_HEADER_BYTES:
            self.head_done = True
            self.policy.headers_too_large(self)

    def request_done(self) -> None:
        self.release()
        self.busy = max(0, self.busy - 1)
        if self.busy == 0 and self.phase in (BODY, BUSY):
            assert self.policy.settings is not None
            self.phase, self.partial = IDLE, False
            self.arm(self.policy.settings.idle_timeout)


class WatchedReader:
    """The client's stream reader, telling its connection when bytes arrive."""

    __slots__ = ("conn", "inner")

    def __init__(self, inner: Any, conn: Conn) -> None:
        self.inner, self.conn = inner, conn

    async def read(self, n: int = -1) -> bytes:
        data = await self.inner.read(n)
        if data:
            self.conn.received(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class LingeringWriter:
    """The client's stream writer, whose close sends what is queued and a FIN, then reads
    and discards what the client still sends (up to `max_bytes` or `seconds`) before
    closing the socket. Closing with unread data would reset the connection, and the
    client, still writing its body, would never read the answer."""

    def __init__(
        self,
        inner: Any,
        reader: Any,
        policy: ConnectionPolicy,
        max_bytes: int,
        seconds: float,
        refused: bool = False,
        client_id: str = "",
    ) -> None:
        self.inner, self.reader, self.policy = inner, reader, policy
        self.max_bytes, self.seconds, self.refused = max_bytes, seconds, refused
        self.client_id = client_id
        self._closing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def is_closing(self) -> bool:
        return self._closing or self.inner.is_closing()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        task = asyncio.get_running_loop().create_task(self._linger(), name="apipod linger")
        self.policy.track_linger(task, self.refused, self.client_id)

    async def _linger(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        discarded = 0
        try:
            if self.inner.can_write_eof():
                self.inner.write_eof()  # sent once what is queued is out
            while discarded < self.max_bytes and (left := deadline - loop.time()) > 0:
                async with asyncio.timeout(left):
                    data = await self.reader.read(65536)
                if not data:
                    break
                discarded += len(data)
        except (OSError, TimeoutError):
            pass
        finally:
            self.inner.close()

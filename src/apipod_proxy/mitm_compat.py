"""Everything that relies on mitmproxy internals (not its public addon API), in one place.

mitmproxy's addon hooks cannot answer its own failures in JSON, answer a request on the
upstream's behalf, close a client connection, or tell why a flow failed other than by the
wording of its messages. This module does those things with mitmproxy's internals:

- the HTTP/1 error renderer (`_http1.make_error_response`), replaced for JSON pages;
- a client connection's handler (`proxyserver.connections`), its transports, and
  `server_event`/`close_connection`, for the upstream timeout and connection policy;
- the default addons that a gateway unloads;
- the wording of mitmproxy's error messages (`WORDING`).

`check()` runs when the addon loads: if mitmproxy moved any of these, startup stops with
one line naming what moved. tests/unit/test_mitmproxy_contract.py asserts the same, so
raising the `mitmproxy<13` pin means running that one test file.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import importlib
import inspect
import logging
from collections.abc import Callable, Coroutine, Iterable
from http import HTTPStatus
from typing import Any

from mitmproxy import connection, ctx, http, optmanager
from mitmproxy.net.http import http1

from . import errors

log = logging.getLogger("apipod")

PIN = "mitmproxy>=12,<13"


# --- the wording of mitmproxy's error messages -------------------------------------------

#: Lower-case words of mitmproxy's messages (flow.error.msg, error page messages) that the
#: proxy tells apart. errors.py (what a client reads) and logs.py (the status logged) both
#: use this one table; the contract test finds each phrase in mitmproxy's source.
WORDING = {
    "client_disconnected": "client disconnected",
    "killed": "killed",
    "request_too_large": "request body exceeds mitmproxy's body_size_limit",
    "response_too_large": "response body exceeds mitmproxy's body_size_limit",
    "smuggling": "request smuggling",
    "server_closed": "server closed connection",
    "protocol_error": "protocol error",
    "bad_response": "cannot parse http response",
    "unexpected_response": "unexpected server response",
    "refused_response": "from server, refusing",
}

#: (status of mitmproxy's error page, words in its message, our code); the first match wins.
FAILURES: list[tuple[int, str, str]] = [
    (413, "", "request_too_large"),
    (400, WORDING["smuggling"], "invalid_request_headers"),
    (400, "", "malformed_request"),
    (502, WORDING["server_closed"], "upstream_closed"),
    (502, WORDING["protocol_error"], "upstream_invalid_response"),
    (502, WORDING["bad_response"], "upstream_invalid_response"),
    (502, WORDING["unexpected_response"], "upstream_invalid_response"),
    (502, WORDING["refused_response"], "upstream_invalid_response"),
    (502, WORDING["response_too_large"], "upstream_response_too_large"),
    (502, "", "upstream_unreachable"),
]


def says(message: str | None, what: str) -> bool:
    """True when one of mitmproxy's messages says `WORDING[what]`."""
    return bool(message) and WORDING[what] in message.lower()  # type: ignore[union-attr]


def describe_proxy_failure(status: int, message: str) -> tuple[str, str]:
    """Client-facing (message, code) for one of mitmproxy's own error responses.

    mitmproxy's messages can quote upstream bytes, so they are logged, never echoed.
    """
    lowered = message.lower()
    for known_status, needle, code in FAILURES:
        if known_status == status and needle in lowered:
            return errors.PROXY_MESSAGES[code], code
    try:
        return HTTPStatus(status).phrase, "proxy_error"
    except ValueError:
        return "Error", "proxy_error"


def render_proxy_failure(status: int, message: str = "") -> bytes:
    """A complete HTTP/1 response, in place of mitmproxy's HTML error page."""
    text, code = describe_proxy_failure(status, message)
    response = errors.error_response(status, text, code, {"connection": "close"})
    return http1.assemble_response(response)


# --- the contract ---------------------------------------------------------------------------


class IncompatibleMitmproxy(RuntimeError):
    """mitmproxy moved something this module relies on; the message names it."""


#: (module, attribute path, parameter names that must lead its signature, or None).
CONTRACT: list[tuple[str, str, tuple[str, ...] | None]] = [
    ("mitmproxy.proxy.layers.http._http1", "make_error_response", ("status_code", "message")),
    ("mitmproxy.addons.proxyserver", "Proxyserver.__init__", None),
    ("mitmproxy.proxy.server", "ConnectionHandler.server_event", ("self", "event")),
    (
        "mitmproxy.proxy.server",
        "ConnectionHandler.close_connection",
        ("self", "connection", "half_close"),
    ),
    ("mitmproxy.proxy.server", "ConnectionHandler.handle_connection", ("self", "connection")),
    ("mitmproxy.proxy.server", "ConnectionIO", ("handler", "reader", "writer")),
    ("mitmproxy.proxy.events", "DataReceived", ("connection", "data")),
    ("mitmproxy.addonmanager", "AddonManager.get", ("self", "name")),
    ("mitmproxy.addonmanager", "AddonManager.remove", ("self", "addon")),
    ("mitmproxy.addons.proxyserver", "Proxyserver.setup_servers", ("self",)),
    ("mitmproxy.addons.proxyserver", "Proxyserver.listen_addrs", ("self",)),
    ("mitmproxy.optmanager", "unset", None),
]
#: Instance attributes, declared as class annotations: (module, class, attribute).
ANNOTATED: list[tuple[str, str, str]] = [
    ("mitmproxy.addons.proxyserver", "Proxyserver", "connections"),
    ("mitmproxy.proxy.server", "ConnectionHandler", "transports"),
    ("mitmproxy.proxy.server", "ConnectionHandler", "client"),
    ("mitmproxy.connection", "Connection", "error"),
]


def _resolve(module: str, path: str) -> Any:
    target: Any = importlib.import_module(module)
    for part in path.split("."):
        target = getattr(target, part)
    return target


def check() -> None:
    """Raise IncompatibleMitmproxy, naming the first thing mitmproxy moved."""
    for module, path, params in CONTRACT:
        where = f"{module}.{path}"
        try:
            target = _resolve(module, path)
        except (ImportError, AttributeError):
            raise IncompatibleMitmproxy(f"{where} is gone") from None
        if params is not None:
            names = tuple(inspect.signature(target).parameters)
            if names[: len(params)] != params:
                raise IncompatibleMitmproxy(
                    f"{where} takes ({', '.join(names)}), expected ({', '.join(params)})"
                )
    for module, cls, attribute in ANNOTATED:
        try:
            annotations = inspect.get_annotations(_resolve(module, cls))
        except (ImportError, AttributeError):
            raise IncompatibleMitmproxy(f"{module}.{cls} is gone") from None
        if attribute not in annotations:
            raise IncompatibleMitmproxy(f"{module}.{cls}.{attribute} is gone")


def incompatibility() -> str | None:
    """One line for the startup error when mitmproxy moved something, else None."""
    try:
        check()
    except IncompatibleMitmproxy as exc:
        from mitmproxy import version

        return (
            f"mitmproxy {version.VERSION} is not compatible ({exc}); "
            f"install {PIN} or update apipod_proxy/mitm_compat.py"
        )
    return None


# --- JSON error pages ----------------------------------------------------------------------

_original_renderer: Callable[..., bytes] | None = None


def install_json_error_pages() -> None:
    """Make mitmproxy answer its own failures in JSON.

    mitmproxy has no hook for these responses (mitmproxy#4854); its HTTP/1 server
    layer builds them with a module-level function, which is replaced here. Clients
    reach the proxy over HTTP/1.1 (TLS ends at the front proxy), so this covers them.
    """
    global _original_renderer
    from mitmproxy.proxy.layers.http import _http1

    if _http1.make_error_response is not render_proxy_failure:
        _original_renderer = _http1.make_error_response
    _http1.make_error_response = render_proxy_failure


def restore_error_pages() -> None:
    """Put mitmproxy's own renderer back (on `done`, so the process is left as found)."""
    global _original_renderer
    from mitmproxy.proxy.layers.http import _http1

    if _original_renderer is not None:
        _http1.make_error_response = _original_renderer
        _original_renderer = None


# --- connections ---------------------------------------------------------------------------


def _handler(client: connection.Client) -> Any:
    """mitmproxy's handler of a live client connection, or None once it is gone."""
    proxyserver = ctx.master.addons.get("proxyserver")
    return None if proxyserver is None else proxyserver.connections.get(client.id)


def _spawn(coro: Coroutine[Any, Any, Any], name: str) -> None:
    """Run `coro` as a task whose failure is logged, not left to asyncio's default handler."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _tasks.add(task)
    task.add_done_callback(_task_done)


_tasks: set[asyncio.Task[Any]] = set()


def _task_done(task: asyncio.Task[Any]) -> None:
    _tasks.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s failed", task.get_name(), exc_info=exc)


def logged(callback: Callable[..., None], what: str) -> Callable[..., None]:
    """`callback` for `loop.call_later`, logging what it raises under `what`."""

    def run(*args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("%s failed", what)

    return run


def answer_for_upstream(flow: http.HTTPFlow, reply: http.Response) -> None:
    """Answer `flow` with `reply` as if the upstream had sent it, and drop the upstream.

    The reply takes the normal response path (hooks, logs); its `connection: close`
    makes mitmproxy close the upstream socket. Bytes cannot be injected under TLS or
    before the upstream connection is up: then the connection is closed instead, and
    mitmproxy answers with its (JSON) 502.
    """
    from mitmproxy.proxy import events

    handler = _handler(flow.client_conn)
    if handler is None:
        return
    server = flow.server_conn
    if server.connected and not server.tls:
        event = events.DataReceived(server, http1.assemble_response(reply))
        _spawn(handler.server_event(event), "apipod upstream timeout")
    elif server in handler.transports:
        handler.close_connection(server)


def client_streams(client: connection.Client) -> tuple[Any, Any] | None:
    """(reader, writer) of a client connection, or None once it is gone."""
    handler = _handler(client)
    if handler is None or client not in handler.transports:
        return None
    io = handler.transports[client]
    return io.reader, io.writer


def replace_client_streams(
    client: connection.Client, reader: Any | None = None, writer: Any | None = None
) -> bool:
    """Put wrappers in place of a client's reader or writer; False if it is gone.

    The reader must be replaced in `client_connected`: mitmproxy starts reading
    right after that hook. The writer is looked up on every write and on close.
    """
    handler = _handler(client)
    if handler is None or client not in handler.transports:
        return False
    io = handler.transports[client]
    if reader is not None:
        io.reader = reader
    if writer is not None:
        io.writer = writer
    return True


def close_client(client: connection.Client, last_words: bytes = b"") -> None:
    """Send `last_words` (if any) and close a client connection, as mitmproxy would."""
    handler = _handler(client)
    if handler is None or client not in handler.transports:
        return
    io = handler.transports[client]
    if last_words and io.writer is not None and not io.writer.is_closing():
        io.writer.write(last_words)
    if io.handler is not None:
        handler.close_connection(client)  # cancels the reader; mitmproxy closes the writer
    elif io.writer is not None:
        io.writer.close()


def close_forgotten_client(client: connection.Client) -> bool:
    """Close a client socket that mitmproxy left open; True if there was one.

    When mitmproxy closes a client connection while that connection's reader task waits
    to hand it data (as on a 413 for a body over body_size_limit), the task is cancelled
    before it closes the socket, and the socket stays open, unread, until garbage
    collection: the client, still writing its body, hangs until its write timeout.
    Called from `client_disconnected`, when mitmproxy is done with the connection.
    """
    handler = _handler(client)
    if handler is None or client not in handler.transports:
        return False
    writer = handler.transports[client].writer
    if writer is None or writer.is_closing():
        return False
    writer.close()
    return True


def trim_memory() -> bool:
    """Give freed heap back to the system (glibc's `malloc_trim`); False where there is
    none. Not mitmproxy's, but like the rest here it reaches below the public API.

    mitmproxy holds a request body in several copies while reading it; once freed, glibc
    keeps most of those pages. Run on a thread: ctypes releases the GIL for the call."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim is False:
        return False
    _malloc_trim(0)
    return True


_malloc_trim: Any = None


# --- default addons ------------------------------------------------------------------------

#: mitmproxy's default addons that a reverse-proxy gateway never uses. mitmproxy offers
#: every event to every addon, so each costs time on every request (TRIM_ADDONS).
#: Kept: termlog, core, disableh2c, proxyserver, scriptloader, nextlayer, tlsconfig,
#: errorcheck.
UNUSED_ADDONS = (
    "browser", "block", "stripdnshttpsrecords", "blocklist", "anticache", "anticomp",
    "clientplayback", "commandhistory", "comment", "cut", "export", "onboarding",
    "proxyauth", "dnsresolver", "serverplayback", "mapremote", "maplocal", "modifybody",
    "modifyheaders", "stickyauth", "stickycookie", "save", "savehar", "upstreamauth",
    "updatealtsvc", "dumper", "keepserving", "readfilestdin",
)  # fmt: skip


def trim_addons(names: Iterable[str] = UNUSED_ADDONS) -> int:
    """Unload the named default addons; returns how many were unloaded."""
    manager = ctx.master.addons
    unused = [
        addon
        for name in names
        if (addon := manager.get(name)) is not None
        # remove() calls `done` synchronously; one with an async `done` must stay.
        and not inspect.iscoroutinefunction(getattr(addon, "done", None))
    ]
    for addon in unused:
        manager.remove(addon)
    return len(unused)


# --- options and listeners -------------------------------------------------------------


class HeldErrors(logging.Filter):
    """Hold back mitmproxy's server errors while the listener moves to PORT.

    Without --listen-port, mitmdump binds its default port (8080, often the upstream's
    own) while it loads the addon; the addon then moves the listener to PORT. A failure
    on the default port (or in stopping that never-started server) is logged as an
    ERROR, which would stop start-up, so such records are held until the move is done:
    dropped if PORT is served, replayed if not."""

    #: The logger of mitmproxy.addons.proxyserver (it logs under its module name).
    LOGGER = "mitmproxy.addons.proxyserver"

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    @classmethod
    def install(cls) -> HeldErrors:
        held = cls()
        logging.getLogger(cls.LOGGER).addFilter(held)
        return held

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        self.records.append(record)
        return False

    def release(self, replay: bool) -> None:
        logger = logging.getLogger(self.LOGGER)
        logger.removeFilter(self)
        for record in self.records if replay else ():
            logger.handle(record)


def user_set(options: Any, name: str) -> bool:
    """True when `name` was given a value (`--set`, config.yaml), even its default.

    mitmproxy internals (an option's `value` is `optmanager.unset` until set); with no
    such attribute, fall back to the public "differs from the default"."""
    try:
        return options._options[name].value is not optmanager.unset
    except (AttributeError, KeyError):
        return options.has_changed(name)


async def restart_servers() -> bool:
    """Re-bind mitmproxy's listeners after a mode change; False when one failed."""
    return await ctx.master.addons.get("proxyserver").setup_servers()

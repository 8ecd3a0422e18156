"""What apipod relies on in mitmproxy beyond its public addon API (see mitm_compat.py).

Raising the `mitmproxy<13` pin means running this file: each test names one thing
that mitm_compat.py uses, and fails when mitmproxy moved or reworded it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from pathlib import Path

import mitmproxy
import pytest
from mitmproxy import connection
from mitmproxy.addons import default_addons, dumper, keepserving, proxyserver, readfile
from mitmproxy.proxy import events, server
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.test import taddons

from apipod_proxy import mitm_compat
from apipod_proxy.addon import Apipod
from apipod_proxy.config import Settings
from tests.support.gateway import make_settings, mitm_context

MITMPROXY_SOURCE = "\n".join(
    path.read_text() for path in Path(mitmproxy.__file__).parent.rglob("*.py")
).lower()


def test_check_passes_on_the_installed_mitmproxy() -> None:
    mitm_compat.check()
    assert mitm_compat.incompatibility() is None


@pytest.mark.parametrize(("module", "path", "params"), mitm_compat.CONTRACT)
def test_attribute_and_signature(module: str, path: str, params: tuple[str, ...] | None) -> None:
    target = mitm_compat._resolve(module, path)
    if params is not None:
        assert tuple(inspect.signature(target).parameters)[: len(params)] == params


@pytest.mark.parametrize(("module", "cls", "attribute"), mitm_compat.ANNOTATED)
def test_instance_attribute(module: str, cls: str, attribute: str) -> None:
    assert attribute in inspect.get_annotations(mitm_compat._resolve(module, cls))


def test_a_moved_attribute_stops_startup_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(server.ConnectionHandler, "close_connection")
    problem = mitm_compat.incompatibility()
    assert problem is not None
    assert "\n" not in problem
    assert "mitmproxy.proxy.server.ConnectionHandler.close_connection is gone" in problem
    assert mitm_compat.PIN in problem


def test_a_changed_signature_stops_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_http1, "make_error_response", lambda code, text="": b"")
    problem = mitm_compat.incompatibility()
    assert problem is not None
    assert "make_error_response takes (code, text)" in problem


def test_the_error_renderer_is_looked_up_at_call_time() -> None:
    # The patch works because Http1Server looks the function up as a module global
    # at call time; if mitmproxy renames or inlines it, the JSON pages silently vanish.
    assert "make_error_response" in _http1.Http1Server.send.__code__.co_names
    assert "make_error_response" in _http1.Http1Server.read_headers.__code__.co_names


def test_the_client_reader_is_read_only_after_client_connected() -> None:
    # connections.py swaps the client's reader in `client_connected`; mitmproxy must look
    # it up after that hook, when the connection handler starts.
    source = inspect.getsource(server.ConnectionHandler.handle_client)
    assert source.index("ClientConnectedHook") < source.index("handle_connection")
    assert "self.transports[connection].reader" in inspect.getsource(
        server.ConnectionHandler.handle_connection
    )


def test_a_refused_client_is_closed_through_its_writer() -> None:
    # Setting `client.error` in `client_connected` refuses the connection; mitmproxy then
    # closes the (replaceable) writer, which lets connections.py linger.
    source = inspect.getsource(server.ConnectionHandler.handle_client)
    assert "if self.client.error:" in source
    assert ".writer" in source and "writer.close()" in source


def test_connection_io_and_events_have_the_fields_used() -> None:
    io = server.ConnectionIO()
    assert (io.handler, io.reader, io.writer) == (None, None, None)
    client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2))
    event = events.DataReceived(client, b"x")
    assert (event.connection, event.data) == (client, b"x")
    assert proxyserver.Proxyserver().connections == {}


@pytest.mark.parametrize("key", sorted(mitm_compat.WORDING))
def test_wording_appears_in_mitmproxy(key: str) -> None:
    phrase = mitm_compat.WORDING[key]
    if key in ("request_too_large", "response_too_large"):
        # Built as f"{'Request' if request else 'Response'} body exceeds ..."
        phrase = phrase.split(" ", 1)[1]
    assert phrase in MITMPROXY_SOURCE, f"mitmproxy no longer says {phrase!r}"


def test_body_size_messages_are_built_as_expected() -> None:
    from mitmproxy.proxy.layers.http import HttpStream

    source = inspect.getsource(HttpStream.check_body_size)
    assert "{'Request' if request else 'Response'} body exceeds mitmproxy's body_size_limit." in (
        source
    )


def test_unused_addons_are_default_addons() -> None:
    # mitmdump adds its own (dumper, keepserving, readfilestdin) to the defaults.
    addons = [*default_addons(), dumper.Dumper(), keepserving.KeepServing()]
    names = {type(addon).__name__.lower() for addon in addons} | {"readfilestdin"}
    assert readfile.ReadFileStdin.__name__.lower() == "readfilestdin"
    missing = [name for name in mitm_compat.UNUSED_ADDONS if name not in names]
    assert missing == []


# --- what the addon does with the contract ---------------------------------------------------


def addon_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, admin_secret=None, max_body_size=1024, upstream_api="auto")


@pytest.fixture
def quiet_apipod_logger() -> Iterator[None]:
    """Undo `logs.setup` (a stdout handler, propagate off), so caplog sees the records."""
    logger = logging.getLogger("apipod")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def test_an_incompatible_mitmproxy_stops_the_addon_with_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    quiet_apipod_logger: None,
) -> None:
    monkeypatch.delattr(server.ConnectionHandler, "close_connection")
    addon = Apipod(settings=addon_settings(tmp_path))
    with (
        caplog.at_level(logging.ERROR),
        mitm_context() as tctx,
    ):
        tctx.master.addons.add(addon)
    assert addon.gateway is None  # nothing was set up
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert line.startswith("apipod: mitmproxy ")
    assert "ConnectionHandler.close_connection is gone" in line


def test_done_restores_mitmproxys_error_renderer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet_apipod_logger: None
) -> None:
    original = _http1.make_error_response
    monkeypatch.setattr(_http1, "make_error_response", original)
    addon = Apipod(settings=addon_settings(tmp_path))
    with mitm_context() as tctx:
        tctx.master.addons.add(addon)
        assert _http1.make_error_response is mitm_compat.render_proxy_failure
        addon.lifecycle.done()
    assert _http1.make_error_response is original


def test_user_set_tells_an_explicit_default_from_no_value() -> None:
    with taddons.context() as tctx:
        options = tctx.options
        assert not mitm_compat.user_set(options, "tcp_timeout")
        options.update(tcp_timeout=options.tcp_timeout)  # the default, said explicitly
        assert mitm_compat.user_set(options, "tcp_timeout")


def test_held_errors_filter_the_proxyserver_logger() -> None:
    assert proxyserver.logger.name == mitm_compat.HeldErrors.LOGGER
    held = mitm_compat.HeldErrors.install()
    try:
        proxyserver.logger.error("port in use")
        assert [r.getMessage() for r in held.records] == ["port in use"]
    finally:
        held.release(replay=False)
    assert held not in proxyserver.logger.filters


def test_an_absolute_form_target_sets_the_authority() -> None:
    """forwarding.is_absolute_form tells `GET http://host/x` from `GET /x` by
    `Request.authority`, which mitmproxy fills from the request line (HTTP/1)."""
    from mitmproxy.net.http.http1 import read_request_head

    from apipod_proxy.policy.forwarding import is_absolute_form

    absolute = read_request_head([b"GET http://internal.example/v1/x HTTP/1.1\r\n", b"Host: a\r\n"])
    assert (absolute.authority, absolute.path) == ("internal.example", "/v1/x")
    assert is_absolute_form(absolute)
    origin = read_request_head([b"GET /v1/x HTTP/1.1\r\n", b"Host: internal.example\r\n"])
    assert origin.authority == ""
    assert not is_absolute_form(origin)


def test_freed_memory_can_be_handed_back() -> None:
    """glibc's malloc_trim, which connections.py calls after large bodies (Linux only)."""
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    assert mitm_compat.trim_memory() is True

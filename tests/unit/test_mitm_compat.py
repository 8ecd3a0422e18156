"""Unit tests for apipod_proxy.mitm_compat: mitmproxy's failures in JSON, the timeout guard.

What mitmproxy itself must still offer is asserted in test_mitmproxy_contract.py.
"""

from __future__ import annotations

import json
import logging

import pytest
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1

from apipod_proxy import mitm_compat
from apipod_proxy.errors import error_type
from apipod_proxy.mitm_compat import (
    describe_proxy_failure,
    install_json_error_pages,
    render_proxy_failure,
    restore_error_pages,
)

# --- describe_proxy_failure ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "code"),
    [
        (502, "[Errno 111] Connect call failed ('127.0.0.1', 8080)", "upstream_unreachable"),
        (502, "[Errno -2] Name or service not known", "upstream_unreachable"),
        (502, "", "upstream_unreachable"),
        (502, "server closed connection", "upstream_closed"),
        (502, "Server Closed Connection", "upstream_closed"),
        (502, "HTTP/1 protocol error: illegal chunk header", "upstream_invalid_response"),
        (502, "unexpected server response: b'garbage'", "upstream_invalid_response"),
        (
            502,
            "Received invalid Content-Length header from server, refusing to prevent "
            "request smuggling attacks. Disable the validate_inbound_headers option.",
            "upstream_invalid_response",
        ),
        (
            502,
            "Response body exceeds mitmproxy's body_size_limit.",
            "upstream_response_too_large",
        ),
        (413, "Request body exceeds mitmproxy's body_size_limit.", "request_too_large"),
        (413, "", "request_too_large"),
        (
            400,
            "Received both a Transfer-Encoding and a Content-Length header from client, "
            "refusing to prevent request smuggling attacks. Disable the "
            "validate_inbound_headers option to skip this security check.",
            "invalid_request_headers",
        ),
        (400, "Bad HTTP request line: b'GARBAGE'", "malformed_request"),
        (400, "HTTP/1 protocol error: illegal chunk header", "malformed_request"),
    ],
)
def test_describe_proxy_failure_codes(status: int, message: str, code: str) -> None:
    text, got = describe_proxy_failure(status, message)
    assert got == code
    assert text
    assert text != message


def test_describe_proxy_failure_unknown_status_uses_the_reason_phrase() -> None:
    assert describe_proxy_failure(504, "whatever") == ("Gateway Timeout", "proxy_error")
    assert describe_proxy_failure(431, "") == ("Request Header Fields Too Large", "proxy_error")


def test_describe_proxy_failure_nonstandard_status() -> None:
    assert describe_proxy_failure(599, "odd") == ("Error", "proxy_error")


def test_describe_proxy_failure_status_must_match_the_rule() -> None:
    # The same words under another status do not borrow the 502 rule.
    assert describe_proxy_failure(400, "server closed connection")[1] == "malformed_request"


# --- render_proxy_failure ---------------------------------------------------------------


def parse_http1(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, "no end of headers"
    response = http1.read_response_head([line + b"\r\n" for line in head.split(b"\r\n")])
    return response.status_code, dict(response.headers.items()), body


@pytest.mark.parametrize(
    ("status", "message", "code"),
    [
        (502, "[Errno 111] Connect call failed ('127.0.0.1', 8080)", "upstream_unreachable"),
        (502, "server closed connection", "upstream_closed"),
        (413, "Request body exceeds mitmproxy's body_size_limit.", "request_too_large"),
        (400, "Bad HTTP request line", "malformed_request"),
    ],
)
def test_render_proxy_failure_is_a_parseable_json_http1_response(
    status: int, message: str, code: str
) -> None:
    data = render_proxy_failure(status, message)
    assert data.startswith(f"HTTP/1.1 {status} ".encode())
    got_status, headers, body = parse_http1(data)
    assert got_status == status
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered["content-type"] == "application/json"
    assert lowered["connection"] == "close"
    assert int(lowered["content-length"]) == len(body)
    payload = json.loads(body)
    assert payload["error"]["code"] == code
    assert payload["error"]["type"] == error_type(status)
    assert set(payload["error"]) == {"message", "type", "param", "code"}


def test_render_proxy_failure_without_message() -> None:
    _, _, body = parse_http1(render_proxy_failure(502))
    assert json.loads(body)["error"]["code"] == "upstream_unreachable"


def test_render_proxy_failure_never_echoes_the_raw_message() -> None:
    message = (
        "unexpected server response: b'HTTP/1.1 200 OK\\r\\nx-api-key: apk_secret123\\r\\n"
        "<script>alert(1)</script>'"
    )
    data = render_proxy_failure(502, message)
    assert b"apk_secret" not in data
    assert b"<script>" not in data
    assert b"unexpected server response" not in data
    _, _, body = parse_http1(data)
    assert json.loads(body)["error"]["code"] == "upstream_invalid_response"


def test_render_proxy_failure_does_not_echo_connect_details() -> None:
    data = render_proxy_failure(502, "[Errno 111] Connect call failed ('10.1.2.3', 8080)")
    assert b"10.1.2.3" not in data
    assert b"Errno" not in data


def test_render_proxy_failure_is_not_html() -> None:
    assert b"<html" not in render_proxy_failure(502, "x").lower()


# --- install_json_error_pages -------------------------------------------------------------


def test_install_json_error_pages_replaces_mitmproxys_renderer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def html_page(status: int, message: str = "") -> bytes:
        return b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\n\r\n<html></html>"

    # monkeypatch puts mitmproxy's own function back after the test.
    monkeypatch.setattr(_http1, "make_error_response", html_page)

    install_json_error_pages()

    assert _http1.make_error_response is render_proxy_failure
    data = _http1.make_error_response(502, "server closed connection")
    _, headers, body = parse_http1(data)
    assert {k.lower(): v for k, v in headers.items()}["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "upstream_closed"


def test_install_json_error_pages_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_http1, "make_error_response", _http1.make_error_response)
    install_json_error_pages()
    install_json_error_pages()
    assert _http1.make_error_response is mitm_compat.render_proxy_failure


def test_restore_error_pages_puts_mitmproxys_renderer_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def html_page(status: int, message: str = "") -> bytes:
        return b"HTTP/1.1 502 Bad Gateway\r\n\r\n"

    monkeypatch.setattr(_http1, "make_error_response", html_page)
    install_json_error_pages()
    install_json_error_pages()  # a second install must not lose the original
    restore_error_pages()
    assert _http1.make_error_response is html_page
    restore_error_pages()  # nothing installed: nothing to do
    assert _http1.make_error_response is html_page


# --- the timeout callback guard -----------------------------------------------------------


def test_logged_logs_what_a_callback_raises(caplog: pytest.LogCaptureFixture) -> None:
    def broken(value: int) -> None:
        raise RuntimeError(f"bug {value}")

    logger = logging.getLogger("apipod")
    logger.addHandler(caplog.handler)
    try:
        mitm_compat.logged(broken, "upstream timeout")(7)
    finally:
        logger.removeHandler(caplog.handler)
    record = next(r for r in caplog.records if r.name == "apipod")
    assert record.getMessage() == "upstream timeout failed"
    assert record.exc_info is not None and "bug 7" in str(record.exc_info[1])


def test_says_matches_mitmproxys_wording_case_blind() -> None:
    assert mitm_compat.says(
        "Request body exceeds mitmproxy's body_size_limit.", "request_too_large"
    )
    assert not mitm_compat.says(
        "Response body exceeds mitmproxy's body_size_limit.", "request_too_large"
    )
    assert not mitm_compat.says(None, "killed")

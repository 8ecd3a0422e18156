"""Unit tests for apipod_proxy.errors: the OpenAI error shape and mitmproxy's own failures."""

from __future__ import annotations

import json

import pytest
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1

from apipod_proxy import errors
from apipod_proxy.bodies import json_bytes
from apipod_proxy.errors import (
    describe_proxy_failure,
    error_payload,
    error_response,
    error_type,
    install_json_error_pages,
    json_response,
    render_proxy_failure,
)

# --- payload shape -----------------------------------------------------------------------


def test_error_payload_has_the_openai_shape() -> None:
    payload = error_payload(403, "Invalid API key", "invalid_api_key")
    assert payload == {
        "error": {
            "message": "Invalid API key",
            "type": "permission_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (405, "invalid_request_error"),
        (413, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (502, "upstream_error"),
        (503, "service_unavailable"),
        (504, "upstream_error"),
        (599, "server_error"),
    ],
)
def test_error_type_per_status(status: int, kind: str) -> None:
    assert error_type(status) == kind
    assert error_payload(status, "m", "c")["error"]["type"] == kind


def test_json_bytes_is_compact_utf8() -> None:
    assert json_bytes({"a": [1, 2], "b": "ключ"}) == '{"a":[1,2],"b":"ключ"}'.encode()


# --- responses -------------------------------------------------------------------------


def test_error_response_is_json_with_status() -> None:
    response = error_response(401, "Missing API key", "missing_api_key")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.content) == error_payload(401, "Missing API key", "missing_api_key")


def test_error_response_sets_content_length() -> None:
    response = error_response(400, "bad", "bad")
    assert int(response.headers["content-length"]) == len(response.content)


def test_error_response_adds_extra_headers() -> None:
    response = error_response(405, "nope", "method_not_allowed", {"allow": "POST"})
    assert response.headers["allow"] == "POST"
    assert response.headers["content-type"] == "application/json"


def test_error_response_extra_headers_can_override_content_type() -> None:
    response = json_response(200, {}, {"content-type": "application/problem+json"})
    assert response.headers.get_all("content-type") == ["application/problem+json"]


def test_error_response_keeps_non_ascii_messages() -> None:
    response = error_response(400, "имя обязательно", "invalid_field")
    assert "имя обязательно".encode() in response.content
    assert json.loads(response.content)["error"]["message"] == "имя обязательно"


def test_json_response_serialises_any_payload() -> None:
    response = json_response(201, {"id": 7})
    assert response.status_code == 201
    assert json.loads(response.content) == {"id": 7}


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
    assert _http1.make_error_response is errors.render_proxy_failure


def test_mitmproxy_still_has_the_function_that_is_replaced() -> None:
    # The patch works because Http1Server looks the function up as a module global
    # at call time; if mitmproxy renames or inlines it, the JSON pages silently vanish.
    assert "make_error_response" in _http1.Http1Server.send.__code__.co_names
    assert "make_error_response" in _http1.Http1Server.read_headers.__code__.co_names

"""Every error the proxy itself produces, as OpenAI-style JSON.

`{"error": {"message", "type", "param", "code"}}` is what the OpenAI SDKs parse (they
surface `error.message`). mitmproxy renders its own failures (upstream down, request
too large, smuggling attempts) as HTML pages; `install_json_error_pages` replaces that
renderer so those reach clients in the same JSON shape.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from mitmproxy import http
from mitmproxy.net.http import http1

from .bodies import json_bytes

log = logging.getLogger("apipod")

_TYPES: dict[int, str] = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "upstream_error",
}


def error_type(status: int) -> str:
    if status in _TYPES:
        return _TYPES[status]
    return "invalid_request_error" if status < 500 else "server_error"


def error_payload(status: int, message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type(status), "param": None, "code": code}}


def json_response(
    status: int, payload: Any, headers: dict[str, str] | None = None
) -> http.Response:
    return http.Response.make(
        status, json_bytes(payload), {"content-type": "application/json", **(headers or {})}
    )


def error_response(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> http.Response:
    return json_response(status, error_payload(status, message, code), headers)


def is_anthropic_path(path: str) -> bool:
    return path.startswith("/v1/messages")


def anthropic_shape(body: bytes) -> bytes:
    """Add Anthropic's `"type": "error"` to one of our error bodies.

    Clients of `/v1/messages` read `{"type": "error", "error": {"type", "message"}}`;
    the OpenAI fields stay, so either kind of client understands the answer.
    """
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    if not isinstance(payload, dict) or "error" not in payload:
        return body
    return json_bytes({"type": "error", **payload})


# --- mitmproxy's own failures ------------------------------------------------------

#: (status, substring of mitmproxy's message) -> (client-facing message, code).
#: mitmproxy's messages can quote upstream bytes, so they are logged, never echoed.
_PROXY_MESSAGES = {
    "request_too_large": "Request body is larger than the proxy accepts (MAX_BODY_SIZE)",
    "invalid_request_headers": "Invalid or ambiguous request headers",
    "malformed_request": "Malformed HTTP request",
    "upstream_closed": "The upstream closed the connection without answering",
    "upstream_invalid_response": "The upstream sent an invalid HTTP response",
    "upstream_response_too_large": "The upstream response is larger than the proxy accepts",
    "upstream_unreachable": "The upstream is unreachable",
}
#: (status, words in mitmproxy's message, our code); the first match wins.
_PROXY_FAILURES: list[tuple[int, str, str]] = [
    (413, "", "request_too_large"),
    (400, "request smuggling", "invalid_request_headers"),
    (400, "", "malformed_request"),
    (502, "server closed connection", "upstream_closed"),
    (502, "protocol error", "upstream_invalid_response"),
    (502, "cannot parse http response", "upstream_invalid_response"),
    (502, "unexpected server response", "upstream_invalid_response"),
    (502, "from server, refusing", "upstream_invalid_response"),
    (502, "exceeds", "upstream_response_too_large"),
    (502, "", "upstream_unreachable"),
]


def describe_proxy_failure(status: int, message: str) -> tuple[str, str]:
    """Client-facing (message, code) for one of mitmproxy's own error responses."""
    lowered = message.lower()
    for known_status, needle, code in _PROXY_FAILURES:
        if known_status == status and needle in lowered:
            return _PROXY_MESSAGES[code], code
    try:
        return HTTPStatus(status).phrase, "proxy_error"
    except ValueError:
        return "Error", "proxy_error"


def render_proxy_failure(status: int, message: str = "") -> bytes:
    """A complete HTTP/1 response, in place of mitmproxy's HTML error page."""
    text, code = describe_proxy_failure(status, message)
    response = error_response(status, text, code, {"connection": "close"})
    return http1.assemble_response(response)


def install_json_error_pages() -> None:
    """Make mitmproxy answer its own failures in JSON.

    mitmproxy has no hook for these responses (mitmproxy#4854); its HTTP/1 server
    layer builds them with a module-level function, which is replaced here. Clients
    reach the proxy over HTTP/1.1 (TLS ends at the front proxy), so this covers them.
    """
    from mitmproxy.proxy.layers.http import _http1

    _http1.make_error_response = render_proxy_failure

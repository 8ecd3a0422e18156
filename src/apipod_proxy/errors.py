"""Every error the proxy itself produces, as OpenAI-style JSON.

`{"error": {"message", "type", "param", "code"}}` is what the OpenAI SDKs parse (they
surface `error.message`). mitmproxy renders its own failures (upstream down, request
too large, smuggling attempts) as HTML pages; mitm_compat.py replaces that renderer so
those reach clients in the same JSON shape, with the messages of `PROXY_MESSAGES`.
"""

from __future__ import annotations

import json
from typing import Any

from mitmproxy import http

from .jsonenc import json_bytes

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

#: Our code -> the client-facing message for one of mitmproxy's own failures; which
#: failure is which is read from mitmproxy's wording in mitm_compat.py.
PROXY_MESSAGES = {
    "request_too_large": "Request body is larger than the proxy accepts (MAX_BODY_SIZE)",
    "invalid_request_headers": "Invalid or ambiguous request headers",
    "malformed_request": "Malformed HTTP request",
    "upstream_closed": "The upstream closed the connection without answering",
    "upstream_invalid_response": "The upstream sent an invalid HTTP response",
    "upstream_response_too_large": "The upstream response is larger than the proxy accepts",
    "upstream_unreachable": "The upstream is unreachable",
}

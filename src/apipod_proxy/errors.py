"""Every error the proxy itself produces, as OpenAI-style JSON, and the table of their codes.

`{"error": {"message", "type", "param", "code"}}` is what the OpenAI SDKs parse (they
surface `error.message`). mitmproxy renders its own failures (upstream down, request
too large, smuggling attempts) as HTML pages; mitm_compat.py replaces that renderer so
those reach clients in the same JSON shape, with the messages of `PROXY_MESSAGES`.

`CODES` lists every `code` the proxy answers with, its status and what it means; it
generates the README's error table (`python -m apipod_proxy.errors --write`), and
tests/unit/test_docs.py checks that the source uses exactly the codes it lists.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http

from .config import DOCS_PAGE, ROOT, between_markers
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


@dataclass(frozen=True, slots=True)
class Refusal:
    """An error the proxy answers itself, before it is put in the caller's shape
    (clientapi.ClientApi.refuse): the policy and admission checks return these."""

    status: int
    message: str
    code: str
    headers: Mapping[str, str] = field(default_factory=dict)
    #: The error's type where it is not the status's (`error_type`).
    kind: str | None = None

    def payload(self) -> dict[str, Any]:
        """The OpenAI-shaped body (`ClientApi` adds Anthropic's envelope)."""
        payload = error_payload(self.status, self.message, self.code)
        if self.kind is not None:
            payload["error"]["type"] = self.kind
        return payload


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


# --- the table of codes --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """One `code` the proxy answers with: the HTTP status it comes with (None: mitmproxy's
    own, whatever it is), and one line on when it happens and what the client can do."""

    code: str
    status: int | None
    meaning: str


#: Every code the proxy itself produces, in the order the README shows them. An upstream's
#: own errors keep the upstream's codes and are not listed.
CODES: tuple[ErrorCode, ...] = (
    ErrorCode(
        "invalid_json",
        400,
        "The body is not strict JSON (or names a key twice, or holds a number out of range), "
        "or is not the JSON object a model endpoint or the admin API needs",
    ),
    ErrorCode(
        "invalid_encoding",
        400,
        "A `Content-Encoding` other than gzip, deflate, br or zstd, or a body that is not "
        "valid in it",
    ),
    ErrorCode(
        "malformed_request",
        400,
        "Broken HTTP that cannot be parsed; the connection is closed",
    ),
    ErrorCode(
        "invalid_request_headers",
        400,
        "Ambiguous headers (request smuggling) or CR, LF or NUL in a header value",
    ),
    ErrorCode(
        "invalid_request_target",
        400,
        "The target is not a plain path: absolute-form (`GET http://host/x`), percent "
        "escapes, `//`, `.` or `..` segments (see docs/security.md)",
    ),
    ErrorCode(
        "invalid_model",
        400,
        "A body to a model endpoint whose `model` is missing, not one string, or not a model "
        "id (over 128 characters, other characters than letters, digits and `._:/@+-`, or "
        "key-shaped)",
    ),
    ErrorCode(
        "invalid_stream",
        400,
        "A body to a model endpoint whose `stream` is not `true`/`false`, or whose "
        "`stream_options` is not an object",
    ),
    ErrorCode(
        "missing_messages",
        400,
        "A `/v1/chat/completions` body in neither accepted shape: it has no `messages` "
        "(Chat Completions) and no `input` (a Responses-style body, as Cursor's Agent mode "
        "sends)",
    ),
    ErrorCode(
        "unsupported_content_type",
        400,
        "A `Content-Type` other than JSON on a model endpoint (see docs/security.md)",
    ),
    ErrorCode(
        "unsupported_by_upstream",
        400,
        "The request uses something the upstream's API cannot express (OpenAI's `n` > 1, "
        "logprobs, JSON modes over an Anthropic-only upstream; see `docs/translation.md`); "
        "`param` names the field",
    ),
    ErrorCode(
        "unsupported_parameter",
        400,
        "`POST /v1/responses`: `previous_response_id`, `conversation` or an `item_reference` "
        "input, which need stored responses; the proxy stores none, so send the whole "
        "conversation in `input` each turn",
    ),
    ErrorCode(
        "invalid_field",
        400,
        "Admin API and dashboard: a field with a wrong value (a missing `name`, `expires_in` "
        "of `soon`, `bucket=week`)",
    ),
    ErrorCode(
        "unknown_field",
        400,
        'Admin API: a field the endpoint does not take (`{"nam": "x"}`), named in the message',
    ),
    ErrorCode(
        "invalid_date",
        400,
        "`start_date` or `end_date` of `/v1/dashboard/billing/usage` is not a date like "
        "`2026-01-31`, or the end is before the start",
    ),
    ErrorCode(
        "missing_api_key",
        401,
        "No key: send it as `Authorization: Bearer apk_...` or `x-api-key`",
    ),
    ErrorCode(
        "invalid_admin_secret",
        401,
        "Wrong or missing admin secret (`x-admin-secret` or `Authorization: Bearer`)",
    ),
    ErrorCode("invalid_api_key", 403, "Key refused: no such key"),
    ErrorCode("inactive_api_key", 403, "Key refused: it has been deactivated"),
    ErrorCode("expired_api_key", 403, "Key refused: it has expired"),
    ErrorCode(
        "model_not_allowed",
        403,
        "The model is not on the key's allow-list (the message lists the allowed ones)",
    ),
    ErrorCode(
        "model_not_priced",
        403,
        "A key with a budget (its own or its tier's) asks for a routed model that has no "
        "price, neither under `[prices]` by its exact name nor by `[default_price]`",
    ),
    ErrorCode(
        "not_found",
        404,
        "A path neither the proxy nor the forwarding table serves (see docs/security.md)",
    ),
    ErrorCode("key_not_found", 404, "Admin API: no key with that id"),
    ErrorCode(
        "method_not_allowed",
        405,
        "Wrong method on an endpoint the proxy serves itself (`/health`, `/metrics`, "
        "`/admin/*`, `/account`, ...) or on a forwarded one (see `Allow`)",
    ),
    ErrorCode(
        "request_timeout",
        408,
        "Request headers incomplete after `CLIENT_HEADER_TIMEOUT`, or a pause in the body "
        "longer than `CLIENT_BODY_TIMEOUT`; the connection is closed",
    ),
    ErrorCode(
        "request_too_large",
        413,
        "Body over `MAX_BODY_SIZE`, on the wire or once decoded; a body without a customer "
        "key past `UNAUTHENTICATED_BODY_BUFFER`",
    ),
    ErrorCode(
        "rate_limit_exceeded",
        429,
        "The key's requests per minute are used up (see `Retry-After`)",
    ),
    ErrorCode(
        "admin_auth_throttled",
        429,
        "Too many wrong admin secrets from this address (`ADMIN_AUTH_LIMIT`, see `Retry-After`)",
    ),
    ErrorCode(
        "insufficient_quota",
        429,
        "The key's budget is spent, or what is left of it is held by its requests in "
        'progress (see docs/routing.md, "Plans and budgets"); the message says when it resets (see '
        "`Retry-After`)",
    ),
    ErrorCode(
        "upstream_quota_exhausted",
        429,
        "The upstream's quota for the model ran out, or every target of the alias is "
        'cooling down (see docs/routing.md, "Upstreams", and `Retry-After`); also the `code` of '
        "the error chunk when it happens inside a stream",
    ),
    ErrorCode(
        "request_headers_too_large",
        431,
        "Request line and headers over 128 KiB; the connection is closed",
    ),
    ErrorCode(
        "internal_error",
        500,
        "A bug in the proxy; the request is never forwarded half-processed",
    ),
    ErrorCode("upstream_unreachable", 502, "The upstream is down: no connection"),
    ErrorCode("upstream_closed", 502, "The upstream hung up without answering"),
    ErrorCode("upstream_invalid_response", 502, "The upstream did not answer in valid HTTP"),
    ErrorCode(
        "upstream_response_too_large",
        502,
        "The upstream answered with more than the proxy accepts",
    ),
    ErrorCode(
        "database_unavailable",
        503,
        "The key database (SQLite or PostgreSQL) is unavailable; retry shortly",
    ),
    ErrorCode("admin_disabled", 503, "The admin API is off (`ADMIN_SECRET` is not set)"),
    ErrorCode(
        "overloaded",
        503,
        "`MAX_CONNECTIONS` reached; the connection is closed (see `Retry-After`)",
    ),
    ErrorCode("upstream_timeout", 504, "No response headers within `UPSTREAM_TIMEOUT`"),
    ErrorCode(
        "upstream_stream_incomplete",
        200,
        "Inside a translated stream (an OpenAI client's): the upstream ended it before the "
        "answer was complete; the `code` of the last chunk, an error",
    ),
    ErrorCode(
        "proxy_error",
        None,
        "One of mitmproxy's own failures that the codes above do not name, with "
        "mitmproxy's status; report it",
    ),
)

#: The README's error table sits between these lines (`python -m apipod_proxy.errors --write`).
README_START = "<!-- error table: generated by `python -m apipod_proxy.errors --write` -->"
README_END = "<!-- end of error table -->"


def readme_table(codes: tuple[ErrorCode, ...] = CODES) -> str:
    """The error table as the README shows it, one row a code."""
    rows = ["| Status | `code` | When |", "| --- | --- | --- |"]
    for row in codes:
        status = "200 (stream)" if row.status == 200 else row.status or "mitmproxy's"
        rows.append(f"| {status} | `{row.code}` | {row.meaning} |")
    return "\n".join(rows)


def with_readme_table(readme: str) -> str:
    """`readme` with the text between the error-table markers replaced by `readme_table()`.

    A blank line ends the table before the closing marker, as Markdown needs."""
    table = readme_table() + "\n"
    return between_markers(readme, README_START, README_END, table, "error table")


def main(argv: list[str]) -> int:
    """`--write`: regenerate the README's error table from CODES; otherwise print it."""
    if argv != ["--write"]:
        print(readme_table())
        return 0
    readme = ROOT / DOCS_PAGE
    readme.write_text(with_readme_table(readme.read_text()))
    print(f"wrote {readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Who is calling and with what: the client's key, the refusal reasons, the credential swap."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import keys
from .errors import Refusal

if TYPE_CHECKING:
    from mitmproxy import http

    from .storage.records import KeyRecord

#: Client credentials that must never reach the upstream (the admin secret included).
CLIENT_CREDENTIAL_HEADERS = (
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "x-goog-api-key",
    "x-admin-secret",
    "api-key",  # Azure OpenAI's header
    "cookie",
)
#: Whole families: `Proxy-Authorization` and whatever else a client meant for a proxy.
CLIENT_CREDENTIAL_PREFIXES = ("proxy-",)


def bearer_token(headers: http.Headers) -> str | None:
    """The token from `Authorization: Bearer <token>`, or None when there is none."""
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def client_key(headers: http.Headers) -> str | None:
    """The caller's key: `Authorization: Bearer` (OpenAI clients, curl) or `x-api-key`
    (the Anthropic SDK, Claude Code)."""
    return bearer_token(headers) or headers.get("x-api-key", "").strip() or None


def refusal(key: str | None, record: KeyRecord | None, now: str) -> tuple[str, Refusal] | None:
    """None when the key may pass, else (reason, the 401/403 refusal).

    `record` is what the database holds for the key (None: unknown); `now` is a
    `clock.format_time` timestamp for the expiry check.
    """
    if key is None:
        message = (
            "Missing API key: send it as 'Authorization: Bearer apk_...' or 'x-api-key: apk_...'"
        )
        return "missing", Refusal(401, message, "missing_api_key")
    if record is None:
        return "unknown", Refusal(403, "Invalid API key", "invalid_api_key")
    if not record.active:
        message = "This API key has been deactivated"
        return "inactive", Refusal(403, message, "inactive_api_key")
    if not record.is_usable(now):
        return "expired", Refusal(403, "This API key has expired", "expired_api_key")
    return None


def needs_lookup(key: str) -> bool:
    """Only well-formed keys are worth a database query."""
    return keys.looks_like_key(key)


#: The user-agent of the requests the proxy makes on its own (endpoint probe, model list),
#: so that upstream logs (and the tests' stand-ins) tell them from clients' requests.
PROXY_USER_AGENT = "apipod-proxy"


def upstream_credentials(upstream_key: str) -> dict[str, str]:
    """The upstream key as both Anthropic-style and OpenAI-style servers read it.

    antigravity-claude-proxy reads `Authorization: Bearer` first, then `x-api-key`, and
    compares one key, so sending both is safe; OpenAI-only gateways read only Bearer.
    """
    return {"x-api-key": upstream_key, "authorization": f"Bearer {upstream_key}"}


def swap_credentials(headers: http.Headers, upstream_key: str) -> None:
    """Drop every client credential, then add the upstream key (never the client's)."""
    for name in CLIENT_CREDENTIAL_HEADERS:
        headers.pop(name, None)
    for name in {name.lower() for name in headers}:
        if name.startswith(CLIENT_CREDENTIAL_PREFIXES):
            del headers[name]
    headers.update(upstream_credentials(upstream_key))

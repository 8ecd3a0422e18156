"""Unit tests for credentials: reading the client's key, refusals, credential swap."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from mitmproxy import http

from apipod_proxy import keys
from apipod_proxy.clientapi import ClientApi
from apipod_proxy.credentials import (
    CLIENT_CREDENTIAL_HEADERS,
    bearer_token,
    client_key,
    needs_lookup,
    swap_credentials,
)
from apipod_proxy.credentials import refusal as auth_refusal
from apipod_proxy.storage.records import KeyRecord

UPSTREAM_KEY = "upstream-key-for-auth-tests"
NOW = "2024-06-01T12:00:00Z"


def refusal(key: str | None, record: KeyRecord | None, now: str) -> tuple[str, Any] | None:
    """auth.refusal, its refusal as an OpenAI client gets it."""
    found = auth_refusal(key, record, now)
    return None if found is None else (found[0], ClientApi.OPENAI.refuse(found[1]))


def headers(*pairs: tuple[str, str]) -> http.Headers:
    return http.Headers([(name.encode(), value.encode()) for name, value in pairs])


def record(**overrides: Any) -> KeyRecord:
    base = KeyRecord(
        id=1,
        name="alice",
        tier="elite",
        active=True,
        created_at="2024-01-01T00:00:00Z",
        expires_at=None,
        prefix="apk_abcdef",
    )
    return replace(base, **overrides)


def error_of(response: http.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    return json.loads(response.content)["error"]


# --- bearer_token ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "Bearer tok-123",
        "bearer tok-123",
        "BEARER tok-123",
        "BeArEr tok-123",
        "Bearer    tok-123",
        "  Bearer tok-123  ",
    ],
)
def test_bearer_token_reads_the_token(value: str) -> None:
    assert bearer_token(headers(("Authorization", value))) == "tok-123"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Basic dXNlcjpwYXNz",
        "Token tok-123",
        "tok-123",
    ],
)
def test_bearer_token_is_none_without_a_bearer_token(value: str) -> None:
    assert bearer_token(headers(("Authorization", value))) is None


def test_bearer_token_is_none_without_the_header() -> None:
    assert bearer_token(headers(("x-api-key", "tok-123"))) is None


def test_bearer_token_header_name_is_case_insensitive() -> None:
    assert bearer_token(headers(("AUTHORIZATION", "Bearer tok-123"))) == "tok-123"


# --- client_key ---------------------------------------------------------------------------


def test_client_key_prefers_the_bearer_token() -> None:
    found = client_key(headers(("x-api-key", "from-x-api-key"), ("authorization", "Bearer b")))
    assert found == "b"


def test_client_key_falls_back_to_x_api_key() -> None:
    assert client_key(headers(("X-Api-Key", "  key-1  "))) == "key-1"


def test_client_key_uses_x_api_key_when_authorization_is_not_bearer() -> None:
    found = client_key(headers(("authorization", "Basic abc"), ("x-api-key", "key-2")))
    assert found == "key-2"


@pytest.mark.parametrize(
    "pairs",
    [(), (("x-api-key", ""),), (("x-api-key", "   "),), (("authorization", "Bearer "),)],
)
def test_client_key_is_none_without_a_credential(pairs: tuple[tuple[str, str], ...]) -> None:
    assert client_key(headers(*pairs)) is None


# --- refusal ---------------------------------------------------------------------------


def test_missing_key_is_401_missing_api_key() -> None:
    result = refusal(None, None, NOW)
    assert result is not None
    reason, response = result
    assert reason == "missing"
    assert response.status_code == 401
    error = error_of(response)
    assert error["code"] == "missing_api_key"
    assert "Authorization: Bearer" in error["message"]
    assert "x-api-key" in error["message"]


def test_unknown_key_is_403_invalid_api_key() -> None:
    result = refusal("apk_unknown", None, NOW)
    assert result is not None
    reason, response = result
    assert (reason, response.status_code) == ("unknown", 403)
    assert error_of(response)["code"] == "invalid_api_key"


def test_inactive_key_is_403_inactive_api_key() -> None:
    result = refusal("apk_x", record(active=False), NOW)
    assert result is not None
    reason, response = result
    assert (reason, response.status_code) == ("inactive", 403)
    assert error_of(response)["code"] == "inactive_api_key"


@pytest.mark.parametrize("expires_at", ["2024-06-01T11:59:59Z", NOW, "2020-01-01T00:00:00Z"])
def test_expired_key_is_403_expired_api_key(expires_at: str) -> None:
    result = refusal("apk_x", record(expires_at=expires_at), NOW)
    assert result is not None
    reason, response = result
    assert (reason, response.status_code) == ("expired", 403)
    assert error_of(response)["code"] == "expired_api_key"


def test_a_revoked_and_expired_key_is_reported_as_inactive() -> None:
    result = refusal("apk_x", record(active=False, expires_at="2020-01-01T00:00:00Z"), NOW)
    assert result is not None
    assert result[0] == "inactive"


@pytest.mark.parametrize("expires_at", [None, "2024-06-01T12:00:01Z", "2099-01-01T00:00:00Z"])
def test_a_usable_key_passes(expires_at: str | None) -> None:
    assert refusal("apk_x", record(expires_at=expires_at), NOW) is None


def test_refusals_never_echo_the_key() -> None:
    key = keys.generate_key()
    for rec in (None, record(active=False), record(expires_at="2020-01-01T00:00:00Z")):
        result = refusal(key, rec, NOW)
        assert result is not None
        assert key.encode() not in result[1].content


# --- needs_lookup ----------------------------------------------------------------------------


def test_needs_lookup_only_for_well_formed_keys() -> None:
    key = keys.generate_key()
    assert needs_lookup(key)
    assert not needs_lookup(key[:-1])
    assert not needs_lookup("sk-" + key[3:])


# --- swap_credentials ------------------------------------------------------------------------


def test_swap_removes_every_client_credential_and_sets_the_upstream_key() -> None:
    request_headers = headers(
        ("Authorization", "Bearer apk_client"),
        ("authorization", "Bearer apk_second"),
        ("Proxy-Authorization", "Basic abc"),
        ("X-API-KEY", "apk_client"),
        ("x-api-key", "apk_again"),
        ("X-Goog-Api-Key", "goog"),
        ("content-type", "application/json"),
        ("anthropic-version", "2023-06-01"),
    )
    swap_credentials(request_headers, UPSTREAM_KEY)
    assert request_headers.get_all("x-api-key") == [UPSTREAM_KEY]
    # OpenAI-only gateways read Bearer; antigravity-claude-proxy compares either to one key.
    assert request_headers.get_all("authorization") == [f"Bearer {UPSTREAM_KEY}"]
    for name in ("proxy-authorization", "x-goog-api-key"):
        assert request_headers.get_all(name) == []
    assert request_headers["content-type"] == "application/json"
    assert request_headers["anthropic-version"] == "2023-06-01"
    assert b"apk_" not in bytes(request_headers)


@pytest.mark.parametrize("name", CLIENT_CREDENTIAL_HEADERS)
@pytest.mark.parametrize("spelling", [str.lower, str.upper, str.title])
def test_swap_removes_each_credential_header_in_any_case(name: str, spelling: Any) -> None:
    request_headers = headers((spelling(name), "secret-client-value"), ("accept", "*/*"))
    swap_credentials(request_headers, UPSTREAM_KEY)
    assert "secret-client-value" not in request_headers.values()
    assert request_headers.get_all("x-api-key") == [UPSTREAM_KEY]
    assert request_headers["accept"] == "*/*"


def test_swap_without_client_credentials_still_sets_the_upstream_key() -> None:
    request_headers = headers(("accept", "*/*"))
    swap_credentials(request_headers, UPSTREAM_KEY)
    assert request_headers.get_all("x-api-key") == [UPSTREAM_KEY]
    assert request_headers.get_all("authorization") == [f"Bearer {UPSTREAM_KEY}"]
    assert len(request_headers.fields) == 3

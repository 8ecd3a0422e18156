"""Unit tests for apipod_proxy.errors: the OpenAI error shape and mitmproxy's own failures."""

from __future__ import annotations

import json

import pytest

from apipod_proxy.errors import (
    error_payload,
    error_response,
    error_type,
    json_response,
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

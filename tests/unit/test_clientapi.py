"""Unit tests for clientapi.py: the API a client speaks, read once from its request, and
what it owns: the shape of the proxy's own errors, the cooling answer, the refusal of
what cannot be translated, upstream errors in the client's shape, and which translation
a request needs under each UPSTREAM_API."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mitmproxy import http

from apipod_proxy.clientapi import ClientApi
from apipod_proxy.errors import Refusal
from apipod_proxy.translate import Direction, TranslationError

OPENAI, ANTHROPIC = ClientApi.OPENAI, ClientApi.ANTHROPIC
QUOTA = "You have exhausted your capacity on gemini-3-flash. Quota will reset after 1m30s."


def headers(*pairs: tuple[str, str]) -> http.Headers:
    return http.Headers([(name.encode(), value.encode()) for name, value in pairs])


def body_of(response: http.Response) -> Any:
    assert response.headers["content-type"] == "application/json"
    return json.loads(response.content or b"")


# --- ClientApi.of ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/v1/chat/completions", OPENAI),
        ("/v1/chat/completions?stream=1", OPENAI),
        ("/v1/completions", OPENAI),
        ("/v1/messages", ANTHROPIC),
        ("/v1/messages?beta=true", ANTHROPIC),
        ("/v1/messages/count_tokens", ANTHROPIC),
        ("/v1/messages/batches", ANTHROPIC),
        ("/api/config", OPENAI),
        ("/v1/models", OPENAI),
        ("/", OPENAI),
    ],
)
def test_of_reads_the_api_from_the_path(path: str, api: ClientApi) -> None:
    assert ClientApi.of(path, headers()) is api


@pytest.mark.parametrize("path", ["/api/config", "/v1/models", "/health", "/"])
@pytest.mark.parametrize("name", ["anthropic-version", "Anthropic-Version"])
def test_elsewhere_anthropic_version_means_an_anthropic_client(path: str, name: str) -> None:
    """The Anthropic SDKs send it on every request; header names have no case."""
    assert ClientApi.of(path, headers((name, "2023-06-01"))) is ANTHROPIC


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_an_openai_path_is_openai_whatever_the_headers(path: str) -> None:
    assert ClientApi.of(path, headers(("anthropic-version", "2023-06-01"))) is OPENAI


def test_of_takes_any_mapping_of_headers() -> None:
    assert ClientApi.of("/x", {"anthropic-version": "2023-06-01"}) is ANTHROPIC
    assert ClientApi.of("/x", {}) is OPENAI


# --- the proxy's own errors --------------------------------------------------------------


REFUSAL = Refusal(403, "Invalid API key", "invalid_api_key")


def test_an_openai_client_gets_openais_error_object() -> None:
    assert OPENAI.payload(REFUSAL) == {
        "error": {
            "message": "Invalid API key",
            "type": "permission_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


def test_an_anthropic_client_gets_type_error_and_the_same_fields() -> None:
    payload = ANTHROPIC.payload(REFUSAL)
    assert payload == {"type": "error", **OPENAI.payload(REFUSAL)}
    assert list(payload) == ["type", "error"]


@pytest.mark.parametrize("api", [OPENAI, ANTHROPIC])
def test_refuse_keeps_the_status_the_headers_and_the_kind(api: ClientApi) -> None:
    refusal = Refusal(
        429, "Budget used up", "insufficient_quota", {"retry-after": "7"}, "insufficient_quota"
    )
    response = api.refuse(refusal)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    payload = body_of(response)
    assert payload["error"]["type"] == "insufficient_quota"  # the kind, not the status's type
    assert payload["error"]["code"] == "insufficient_quota"
    assert ("type" in payload) is (api is ANTHROPIC)


@pytest.mark.parametrize("api", [OPENAI, ANTHROPIC])
def test_error_is_refuse_of_a_refusal_made_on_the_spot(api: ClientApi) -> None:
    response = api.error(503, "The key database is unavailable", "database_unavailable")
    assert response.status_code == 503
    assert body_of(response) == api.payload(
        Refusal(503, "The key database is unavailable", "database_unavailable")
    )
    with_headers = api.error(405, "no", "method_not_allowed", {"allow": "POST"})
    assert with_headers.headers["allow"] == "POST"


# --- cooling and untranslatable ----------------------------------------------------------


def test_cooling_answers_an_openai_client_429_with_a_retry_after() -> None:
    response = OPENAI.cooling("cursor-pro-sonnet", 29.2)
    assert response.status_code == 429 and response.headers["retry-after"] == "30"
    error = body_of(response)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("rate_limit_error", "upstream_quota_exhausted")
    assert "cursor-pro-sonnet" in error["message"]


def test_cooling_answers_an_anthropic_client_in_its_shape() -> None:
    response = ANTHROPIC.cooling("cursor-pro-sonnet", 29.2)
    assert response.status_code == 429 and response.headers["retry-after"] == "30"
    payload = body_of(response)
    assert payload["type"] == "error"
    assert (payload["error"]["type"], payload["error"]["code"]) == (
        "rate_limit_error",
        "upstream_quota_exhausted",
    )
    assert "cursor-pro-sonnet" in payload["error"]["message"]


def test_untranslatable_is_400_unsupported_by_upstream_naming_the_field() -> None:
    exc = TranslationError("n > 1 cannot be sent to this upstream", "n")
    openai = OPENAI.untranslatable(exc)
    assert openai.status_code == 400
    assert body_of(openai)["error"] == {
        "message": "n > 1 cannot be sent to this upstream",
        "type": "invalid_request_error",
        "param": "n",
        "code": "unsupported_by_upstream",
    }
    anthropic = ANTHROPIC.untranslatable(exc)
    assert anthropic.status_code == 400
    assert body_of(anthropic) == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "n > 1 cannot be sent to this upstream (n)",
        },
    }


# --- upstream errors ---------------------------------------------------------------------


def anthropic_error(message: str, kind: str = "invalid_request_error") -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


def test_an_upstream_error_keeps_its_status_and_message_in_the_clients_shape() -> None:
    openai = OPENAI.upstream_error(400, anthropic_error("bad"), "m")
    assert openai.status == 400 and openai.quota is None
    assert openai.payload == {
        "error": {
            "message": "bad",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_request_error",
        }
    }
    anthropic = ANTHROPIC.upstream_error(400, json.dumps(openai.payload).encode(), "m")
    assert anthropic.status == 400 and anthropic.quota is None
    assert anthropic.payload == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "bad"},
    }


@pytest.mark.parametrize("api", [OPENAI, ANTHROPIC])
def test_an_upstream_quota_answer_becomes_429(api: ClientApi) -> None:
    answer = api.upstream_error(400, anthropic_error(QUOTA), "gemini-3-flash")
    assert answer.status == 429 and answer.headers == {"retry-after": "90"}
    assert answer.quota is not None and answer.quota.reset_seconds == 90
    error = answer.payload["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "upstream_quota_exhausted")
    assert ("type" in answer.payload) is (api is ANTHROPIC)


@pytest.mark.parametrize("api", [OPENAI, ANTHROPIC])
def test_a_quota_answers_cooldown_is_capped(api: ClientApi) -> None:
    answer = api.upstream_error(400, anthropic_error(QUOTA), "gemini-3-flash", 60.0, 45.0)
    assert answer.headers == {"retry-after": "45"}


@pytest.mark.parametrize("api", [OPENAI, ANTHROPIC])
def test_an_upstream_message_with_a_lone_surrogate_is_still_written(api: ClientApi) -> None:
    """A truncated emoji ("\\ud83d") cannot be UTF-8: written as a \\u escape (issue 18)."""
    answer = api.upstream_error(400, b'{"error": {"message": "cut \\ud83d"}}', None)
    assert json.loads(answer.content)["error"]["message"] == "cut \ud83d"


# --- the translation a request needs -----------------------------------------------------


@pytest.mark.parametrize(
    ("api", "path", "upstream_api", "direction"),
    [
        (OPENAI, "/v1/chat/completions", "anthropic", Direction.OPENAI_TO_ANTHROPIC),
        (OPENAI, "/v1/chat/completions/", "anthropic", Direction.OPENAI_TO_ANTHROPIC),
        (OPENAI, "/v1/chat/completions?x=1", "anthropic", Direction.OPENAI_TO_ANTHROPIC),
        (OPENAI, "/v1/chat/completions", "openai", None),
        (OPENAI, "/v1/chat/completions", "both", None),
        (OPENAI, "/v1/completions", "anthropic", None),
        (ANTHROPIC, "/v1/messages", "openai", Direction.ANTHROPIC_TO_OPENAI),
        (ANTHROPIC, "/v1/messages", "anthropic", None),
        (ANTHROPIC, "/v1/messages", "both", None),
        (ANTHROPIC, "/v1/messages/count_tokens", "openai", None),
        # A direction the client's API does not start from is never taken.
        (ANTHROPIC, "/v1/chat/completions", "anthropic", None),
        (OPENAI, "/v1/messages", "openai", None),
    ],
)
def test_translation_per_upstream_api(
    api: ClientApi, path: str, upstream_api: str, direction: Direction | None
) -> None:
    assert api.translation("POST", path, upstream_api) is direction


@pytest.mark.parametrize("api", [OPENAI, ANTHROPIC])
def test_only_a_post_is_translated(api: ClientApi) -> None:
    for path, upstream_api in [("/v1/chat/completions", "anthropic"), ("/v1/messages", "openai")]:
        assert api.translation("GET", path, upstream_api) is None

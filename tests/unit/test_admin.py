"""Unit tests for apipod_proxy.endpoints.admin: /health and /admin/create-key, called directly."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from apipod_proxy import clock, keys
from apipod_proxy.endpoints import ENDPOINTS, Endpoints
from apipod_proxy.storage.sqlite import KeyStore
from tests.support.endpoints import answer
from tests.support.gateway import ADMIN_SECRET, make_settings

SECRET = ADMIN_SECRET


#: Tests taking `store` run on SQLite and on PostgreSQL: the admin API behaves the same.
BOTH_BACKENDS = True


@pytest.fixture
def api(tmp_path: Path, store: KeyStore) -> Endpoints:
    return Endpoints(make_settings(tmp_path), store)


def request(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> http.Request:
    return tutils.treq(
        method=method.encode(),
        path=path.encode(),
        headers=http.Headers(headers or []),
        content=body if body is not None else b"",
    )


def create(
    api: Endpoints, body: Any, secret: str | None = SECRET, raw: bytes | None = None
) -> http.Response:
    headers = [] if secret is None else [(b"x-admin-secret", secret.encode())]
    headers.append((b"content-type", b"application/json"))
    content = raw if raw is not None else json.dumps(body).encode()
    return answer(api, request("POST", "/admin/create-key", content, headers))


def error_of(response: http.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    payload = json.loads(response.content)
    assert set(payload) == {"error"}
    return payload["error"]


def count_keys(store: KeyStore) -> int:
    return store.connection().execute("SELECT count(*) FROM users").fetchone()[0]


# --- is_internal -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/admin", "/admin/", "/admin/create-key", "/admin/x"])
def test_internal_paths(path: str) -> None:
    assert ENDPOINTS.before_auth(path)


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/models", "/healthz", "/administrator", "/", "/v1/admin/"]
)
def test_other_paths_are_not_internal(path: str) -> None:
    assert not ENDPOINTS.before_auth(path)


# --- /health -------------------------------------------------------------------------


def test_health_is_ok_with_a_working_database(api: Endpoints) -> None:
    response = answer(api, request("GET", "/health"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.content) == {"status": "ok", "database": "ok", "admin": True}


def test_health_reports_admin_disabled(tmp_path: Path, store: KeyStore) -> None:
    api = Endpoints(make_settings(tmp_path, admin_secret=None), store)
    assert json.loads(answer(api, request("GET", "/health")).content)["admin"] is False


def test_health_ignores_the_query_string(api: Endpoints) -> None:
    assert answer(api, request("GET", "/health?verbose=1")).status_code == 200


def test_health_needs_no_secret(api: Endpoints) -> None:
    response = answer(api, request("GET", "/health", headers=[(b"x-admin-secret", b"wrong")]))
    assert response.status_code == 200


def test_health_is_503_degraded_when_the_database_cannot_open(tmp_path: Path) -> None:
    unopenable = tmp_path / "is-a-directory"
    unopenable.mkdir()
    api = Endpoints(make_settings(tmp_path), KeyStore(unopenable))
    response = answer(api, request("GET", "/health"))
    # 503 so that a load balancer takes the replica out of rotation.
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.content) == {
        "status": "degraded",
        "database": "unavailable",
        "admin": True,
    }


# --- routing and methods ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/admin", "/admin/", "/admin/list-keys", "/admin/create-key/"])
def test_unknown_admin_path_is_404_json(api: Endpoints, path: str) -> None:
    response = answer(api, request("POST", path, b"{}", [(b"x-admin-secret", SECRET.encode())]))
    assert response.status_code == 404
    error = error_of(response)
    assert error["code"] == "not_found"
    assert error["type"] == "not_found_error"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_create_key_with_wrong_method_is_405(api: Endpoints, store: KeyStore, method: str) -> None:
    response = answer(
        api,
        request(
            method, "/admin/create-key", b'{"name":"a"}', [(b"x-admin-secret", SECRET.encode())]
        ),
    )
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert error_of(response)["code"] == "method_not_allowed"
    assert count_keys(store) == 0


def test_health_with_wrong_method_is_405(api: Endpoints) -> None:
    response = answer(api, request("POST", "/health"))
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"


# --- the admin secret -------------------------------------------------------------------


def test_create_key_without_secret_is_401(api: Endpoints, store: KeyStore) -> None:
    response = create(api, {"name": "alice"}, secret=None)
    assert response.status_code == 401
    error = error_of(response)
    assert error["code"] == "invalid_admin_secret"
    assert error["type"] == "authentication_error"
    assert count_keys(store) == 0


@pytest.mark.parametrize(
    "secret", ["", "wrong", SECRET[:-1], SECRET + "x", SECRET.upper(), " " + SECRET]
)
def test_create_key_with_wrong_secret_is_401(api: Endpoints, store: KeyStore, secret: str) -> None:
    response = create(api, {"name": "alice"}, secret=secret)
    assert response.status_code == 401
    assert count_keys(store) == 0


@pytest.mark.parametrize(
    "headers",
    [[], [(b"x-admin-secret", b"wrong")], [(b"authorization", b"Bearer wrong-secret")]],
    ids=["none", "x-admin-secret", "bearer"],
)
def test_a_refused_secret_names_both_ways_to_send_it(
    api: Endpoints, headers: list[tuple[bytes, bytes]]
) -> None:
    response = answer(api, request("GET", "/admin/keys", None, headers))
    assert response.status_code == 401
    message = error_of(response)["message"]
    assert "x-admin-secret" in message and "Authorization: Bearer" in message


def test_wrong_secret_is_not_echoed(api: Endpoints) -> None:
    response = create(api, {"name": "alice"}, secret="guess-123456789")
    assert b"guess-123456789" not in response.content


def test_secret_with_undecodable_bytes_is_401_not_a_crash(api: Endpoints) -> None:
    headers = [(b"x-admin-secret", b"\xff\xfe" * 10)]
    response = answer(api, request("POST", "/admin/create-key", b'{"name":"a"}', headers))
    assert response.status_code == 401


def test_secret_is_checked_before_the_body(api: Endpoints) -> None:
    response = create(api, None, secret="wrong", raw=b"not json")
    assert response.status_code == 401


def test_admin_disabled_is_503(tmp_path: Path, store: KeyStore) -> None:
    api = Endpoints(make_settings(tmp_path, admin_secret=None), store)
    for secret in (None, "", "anything-at-all-long"):
        response = create(api, {"name": "alice"}, secret=secret)
        assert response.status_code == 503
        error = error_of(response)
        assert error["code"] == "admin_disabled"
        assert error["type"] == "service_unavailable"
    assert count_keys(store) == 0


# --- bad bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"{", b'{"name": NaN}', b'{"name": "\xff"}', b"[" * 100_000],
)
def test_create_key_rejects_non_json(api: Endpoints, store: KeyStore, raw: bytes) -> None:
    response = create(api, None, raw=raw)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_json"
    assert count_keys(store) == 0


@pytest.mark.parametrize("body", [[], ["alice"], "alice", 42, None, True])
def test_create_key_rejects_non_objects(api: Endpoints, store: KeyStore, body: Any) -> None:
    response = create(api, body)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_json"
    assert count_keys(store) == 0


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "   "},
        {"name": None},
        {"name": 5},
        {"tier": "pro"},
        {"name": "n" * 201},
        {"name": "alice", "tier": ""},
        {"name": "alice", "tier": 3},
        {"name": "alice", "tier": "t" * 65},
    ],
)
def test_create_key_rejects_bad_name_or_tier(
    api: Endpoints, store: KeyStore, body: dict[str, Any]
) -> None:
    response = create(api, body)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_field"
    assert count_keys(store) == 0


def test_create_key_rejects_unknown_fields_and_names_them(api: Endpoints, store: KeyStore) -> None:
    response = create(api, {"name": "alice", "zeta": 1, "active": False})
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert "active, zeta" in error["message"]
    assert error["code"] == "unknown_field"
    assert count_keys(store) == 0


def test_a_misspelt_field_is_a_field_error_not_invalid_json(api: Endpoints) -> None:
    """`{"nam": "x"}` is valid JSON: the error says which field is wrong and which exist."""
    error = error_of(create(api, {"nam": "x"}))
    assert error["code"] == "unknown_field"
    assert error["message"].startswith("Unknown fields: nam ")
    assert "name" in error["message"]


def test_revoke_with_an_unknown_field_is_a_field_error(api: Endpoints) -> None:
    headers = [(b"x-admin-secret", SECRET.encode())]
    response = answer(api, request("POST", "/admin/revoke-key", b'{"id": 1, "x": 2}', headers))
    assert response.status_code == 400
    assert error_of(response)["code"] == "unknown_field"


@pytest.mark.parametrize(
    "expires_in", [0, -5, "0s", "soon", "1.5h", 1.5, True, "36501d", [60], {"s": 1}]
)
def test_create_key_rejects_bad_expires_in(
    api: Endpoints, store: KeyStore, expires_in: Any
) -> None:
    response = create(api, {"name": "alice", "expires_in": expires_in})
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_field"
    assert "expires_in" in error["message"]
    assert count_keys(store) == 0


# --- a good body ---------------------------------------------------------------------------


def test_create_key_returns_201_with_the_new_key(api: Endpoints) -> None:
    response = create(api, {"name": "alice"})
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    body = json.loads(response.content)
    assert set(body) == {"api_key", "id", "name", "tier", "created_at", "expires_at"}
    assert keys.looks_like_key(body["api_key"])
    assert body["name"] == "alice"
    assert body["tier"] == "elite"
    assert body["expires_at"] is None
    assert isinstance(body["id"], int)


def test_created_key_authenticates(api: Endpoints, store: KeyStore) -> None:
    body = json.loads(create(api, {"name": "alice", "tier": "pro"}).content)
    found = store.find(keys.hash_key(body["api_key"]))
    assert found is not None
    assert found.id == body["id"]
    assert found.name == "alice"
    assert found.tier == "pro"
    assert found.is_usable(clock.format_time(clock.utcnow()))


def test_created_key_with_expires_in(api: Endpoints) -> None:
    body = json.loads(create(api, {"name": "alice", "expires_in": "1h"}).content)
    created = datetime.strptime(body["created_at"], "%Y-%m-%dT%H:%M:%SZ")
    expires = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert expires - created == timedelta(hours=1)


def test_created_key_with_integer_expires_in(api: Endpoints) -> None:
    body = json.loads(create(api, {"name": "alice", "expires_in": 90}).content)
    created = datetime.strptime(body["created_at"], "%Y-%m-%dT%H:%M:%SZ")
    expires = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert expires - created == timedelta(seconds=90)


def test_create_key_strips_the_name(api: Endpoints) -> None:
    assert json.loads(create(api, {"name": "  alice  "}).content)["name"] == "alice"


def test_create_key_accepts_non_ascii_names(api: Endpoints, store: KeyStore) -> None:
    body = json.loads(create(api, {"name": "Алиса 🌸"}).content)
    assert body["name"] == "Алиса 🌸"
    found = store.find(keys.hash_key(body["api_key"]))
    assert found is not None
    assert found.name == "Алиса 🌸"


def test_create_key_accepts_a_bom(api: Endpoints) -> None:
    response = create(api, None, raw=b'\xef\xbb\xbf{"name": "alice"}')
    assert response.status_code == 201


def test_create_key_ignores_the_query_string(api: Endpoints) -> None:
    response = answer(
        api,
        request(
            "POST",
            "/admin/create-key?x=1",
            b'{"name": "alice"}',
            [(b"x-admin-secret", SECRET.encode())],
        ),
    )
    assert response.status_code == 201


def test_each_created_key_is_different(api: Endpoints) -> None:
    first = json.loads(create(api, {"name": "alice"}).content)
    second = json.loads(create(api, {"name": "alice"}).content)
    assert first["api_key"] != second["api_key"]
    assert first["id"] != second["id"]


def test_create_key_on_a_broken_database_is_503(tmp_path: Path) -> None:
    unopenable = tmp_path / "is-a-directory"
    unopenable.mkdir()
    api = Endpoints(make_settings(tmp_path), KeyStore(unopenable))
    response = create(api, {"name": "alice"})
    assert response.status_code == 503
    assert error_of(response)["code"] == "database_unavailable"


@pytest.mark.parametrize("body", [b'{"name": "\\ud800"}', b'{"name": "a", "tier": "\\udfff"}'])
def test_create_key_rejects_lone_surrogates(api: Endpoints, store: KeyStore, body: bytes) -> None:
    response = create(api, None, raw=body)
    assert response.status_code == 400
    assert count_keys(store) == 0


# --- admin secret guesses (ADMIN_AUTH_LIMIT) -----------------------------------------------


def keys_as(api: Endpoints, secret: str, client: str) -> http.Response:
    return answer(
        api, request("GET", "/admin/keys", None, [(b"x-admin-secret", secret.encode())]), client
    )


def test_guesses_are_throttled_per_address(
    tmp_path: Path, store: KeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    api = Endpoints(make_settings(tmp_path, admin_auth_limit=3), store)
    statuses = [keys_as(api, f"guess-{n}-abcdefghij", "198.51.100.7").status_code for n in range(6)]
    assert statuses == [401, 401, 401, 429, 429, 429]
    throttled = keys_as(api, ADMIN_SECRET, "198.51.100.7")  # right, but from the guesser
    assert throttled.status_code == 429
    assert error_of(throttled)["code"] == "admin_auth_throttled"
    assert 1 <= int(throttled.headers["retry-after"]) <= 20  # one try per 60/3 s
    assert keys_as(api, ADMIN_SECRET, "203.0.113.9").status_code == 200  # another address
    assert "guess-" not in caplog.text
    assert caplog.text.count("wrong or missing admin secret from 198.51.100.7") == 2
    assert "198.51.100.7 used up its 3 failed admin authentications" in caplog.text


def test_right_secrets_are_never_counted(tmp_path: Path, store: KeyStore) -> None:
    api = Endpoints(make_settings(tmp_path, admin_auth_limit=2), store)
    assert {keys_as(api, ADMIN_SECRET, "198.51.100.7").status_code for _ in range(20)} == {200}


def test_limit_zero_turns_the_throttle_off(tmp_path: Path, store: KeyStore) -> None:
    api = Endpoints(make_settings(tmp_path, admin_auth_limit=0), store)
    assert {
        keys_as(api, "wrong-secret-0123456", "198.51.100.7").status_code for _ in range(50)
    } == {401}

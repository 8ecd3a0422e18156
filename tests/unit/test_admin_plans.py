"""Unit tests for the admin endpoints of plans: create-key with a plan, update-key,
rotate-key and the request log, called directly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from apipod_proxy import clock, keys
from apipod_proxy.endpoints import Endpoints
from apipod_proxy.policy.pricing import Plans, PriceTable, Tier
from apipod_proxy.storage.sqlite import KeyStore
from tests.support.endpoints import answer
from tests.support.gateway import ADMIN_SECRET, make_settings
from tests.support.harness import KEY_OBJECT_FIELDS as KEY_FIELDS

SECRET = ADMIN_SECRET
HEADERS = [(b"x-admin-secret", SECRET.encode())]
PLANS = Plans(PriceTable(tiers={"trial": Tier(budget=1.0, budget_period="day", models=("a",))}))


@pytest.fixture
def api(tmp_path: Path, store: KeyStore) -> Endpoints:
    return Endpoints(make_settings(tmp_path), store, plans=PLANS)


def call(api: Endpoints, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = tutils.treq(
        method=method.encode(),
        path=path.encode(),
        headers=http.Headers(HEADERS),
        content=b"" if body is None else json.dumps(body).encode(),
    )
    response = answer(api, request)
    return response.status_code, json.loads(response.content or b"null")


def test_create_key_takes_a_plan(api: Endpoints, store: KeyStore) -> None:
    status, created = call(
        api,
        "POST",
        "/admin/create-key",
        {"name": "a", "budget": 20, "budget_period": "month", "models": ["x", "y"]},
    )
    assert status == 201
    record = store.find_by_id(created["id"])
    assert record is not None
    assert (record.budget, record.budget_period, record.models) == (20.0, "month", ("x", "y"))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"budget": -1}, "budget must be between 0"),
        ({"budget_period": "week"}, "budget_period must be one of"),
        ({"models": "a"}, None),  # a comma-separated string is accepted
        ({"models": [1]}, "models must be a list"),
    ],
)
def test_create_key_validates_the_plan(api: Endpoints, body: dict, message: str | None) -> None:
    status, answer = call(api, "POST", "/admin/create-key", {"name": "a", **body})
    if message is None:
        assert status == 201
    else:
        assert (status, answer["error"]["code"]) == (400, "invalid_field")
        assert message in answer["error"]["message"]


def test_update_key_changes_fields_and_answers_the_key_object(
    api: Endpoints, store: KeyStore
) -> None:
    _, record = store.create("alice", "elite", None, rpm=5)
    status, key = call(
        api,
        "POST",
        "/admin/update-key",
        {"id": record.id, "tier": "trial", "rpm": None, "name": "al", "expires_in": "30d"},
    )
    assert status == 200
    assert list(key) == KEY_FIELDS
    assert (key["name"], key["tier"], key["rpm"]) == ("al", "trial", None)
    # What applies now: the trial tier's plan.
    assert (key["budget"], key["budget_period"], key["models"]) == (1.0, "day", ["a"])
    assert key["expires_at"] > clock.ago(-29 * 86400)
    status, key = call(
        api,
        "POST",
        "/admin/update-key",
        {"id": record.id, "budget": 3, "models": None, "expires_in": None},
    )
    assert (key["budget"], key["budget_period"], key["expires_at"]) == (3.0, "day", None)
    assert key["models"] == ["a"]  # the key has no own list: the tier's applies


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"id": 999}, 404, "key_not_found"),
        ({"id": "1"}, 400, "invalid_field"),
        ({"name": "x"}, 400, "invalid_field"),
        ({"id": 1, "tier": None}, 400, "invalid_field"),
        ({"id": 1, "name": ""}, 400, "invalid_field"),
        ({"id": 1, "rpm": -1}, 400, "invalid_field"),
        ({"id": 1, "expires_in": "soon"}, 400, "invalid_field"),
        ({"id": 1, "key_hash": "x"}, 400, "unknown_field"),
    ],
)
def test_update_key_refusals(
    api: Endpoints, store: KeyStore, body: dict, status: int, code: str
) -> None:
    store.create("alice", "elite", None)
    answer_status, answer = call(api, "POST", "/admin/update-key", body)
    assert (answer_status, answer["error"]["code"]) == (status, code)


def test_rotate_key_answers_a_new_secret_for_the_same_record(
    api: Endpoints, store: KeyStore
) -> None:
    old, record = store.create("alice", "elite", None)
    status, rotated = call(api, "POST", "/admin/rotate-key", {"id": record.id})
    assert status == 200
    assert list(rotated)[:3] == ["api_key", "id", "name"]
    assert (rotated["id"], rotated["name"]) == (record.id, "alice")
    assert store.find(keys.hash_key(old)) is None
    assert store.find(keys.hash_key(rotated["api_key"])) is not None
    assert call(api, "POST", "/admin/rotate-key", {"id": 77})[0] == 404
    assert call(api, "POST", "/admin/rotate-key", {"id": True})[0] == 400
    assert call(api, "GET", "/admin/rotate-key")[0] == 405


def test_requests_endpoint_filters_and_validates(api: Endpoints, store: KeyStore) -> None:
    _, a = store.create("a", "t", None)
    now = clock.now_text()
    rows = [(now, f"r{i}", a.id, "m", "m", 200, 1, 1, 0, 1, 0.0, 0, False, False) for i in range(3)]
    store.record_usage({}, {}, rows)
    status, answer = call(api, "GET", f"/admin/requests?key_id={a.id}&since=1h&limit=2")
    assert status == 200
    assert [r["request_id"] for r in answer["data"]] == ["r2", "r1"]
    assert call(api, "GET", "/admin/requests")[1]["data"][0]["request_id"] == "r2"
    assert call(api, "GET", "/admin/requests?key_id=99")[1] == {"data": []}
    for query in ("key_id=x", "key_id=0", "since=soon", "limit=0", "limit=x", "limit=10001"):
        status, answer = call(api, "GET", f"/admin/requests?{query}")
        assert (status, answer["error"]["code"]) == (400, "invalid_field"), query


def test_key_list_shows_plan_fields(api: Endpoints, store: KeyStore) -> None:
    store.create("a", "trial", None)
    status, answer = call(api, "GET", "/admin/keys")
    assert status == 200
    (key,) = answer["data"]
    assert (key["budget"], key["budget_period"], key["spend"], key["models"]) == (
        1.0,
        "day",
        0,
        ["a"],
    )

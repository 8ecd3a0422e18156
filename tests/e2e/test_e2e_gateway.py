"""End to end: real clients -> real mitmdump with the addon -> the stand-in upstream."""

from __future__ import annotations

import itertools
import json
import math
import socket
import statistics
import time
from collections import Counter

import httpx
import openai
import pytest

from tests.support.harness import ADMIN_SECRET, UPSTREAM_KEY, Proxy, bearer, free_port
from tests.support.standin import StandIn


def chat_body(model: str = "gemini-3-flash", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def assert_openai_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["message"]


# --- health and auth ---------------------------------------------------------------


@pytest.mark.both_backends
def test_health_needs_no_key_and_reports_database(proxy: Proxy, upstream: StandIn) -> None:
    response = httpx.get(f"{proxy.url}/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": "ok",
        "admin": True,
        # tests/support/standin.py serves both APIs, and lists every routing target.
        "upstream_api": "both",
        "upstream_api_setting": "auto",
        "upstream_checks": "done",
        "unlisted_models": [],
        "cooldowns": [],
    }
    assert upstream.received == []


@pytest.mark.both_backends
def test_missing_key_is_401_and_never_reaches_upstream(proxy: Proxy, upstream: StandIn) -> None:
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=chat_body())
    assert_openai_error(response, 401, "missing_api_key")
    response = httpx.get(f"{proxy.url}/v1/models", headers={"authorization": "Basic eDp5"})
    assert_openai_error(response, 401, "missing_api_key")
    assert upstream.received == []


@pytest.mark.parametrize(
    "key",
    [
        "apk_" + "A" * 43,  # right shape, unknown
        "sk-not-ours",
        "apk_' OR '1'='1' --",
        "apk_" + "x" * 100_000,
        "apk_ünïcødé-key",
    ],
    ids=["unknown", "foreign", "sql", "huge", "non-ascii"],
)
def test_unknown_keys_of_any_shape_get_a_clean_403(
    proxy: Proxy, upstream: StandIn, key: str
) -> None:
    raw = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\n{}"
    )
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(raw)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403"), reply[:300]
    assert json.loads(body)["error"]["code"] == "invalid_api_key"
    assert upstream.received == []


@pytest.mark.both_backends
def test_inactive_and_expired_keys_are_403(proxy: Proxy, upstream: StandIn) -> None:
    inactive, expired = proxy.create_key("inactive"), proxy.create_key("expired", expires_in=3600)
    proxy.execute_sql("UPDATE users SET active = 0 WHERE name = 'inactive'")
    proxy.execute_sql("UPDATE users SET expires_at = '2020-01-01T00:00:00Z' WHERE name = 'expired'")
    # SQLite: seen at once (data_version); PostgreSQL: within a second (NOTIFY).
    deadline = time.monotonic() + (1.0 if "DATABASE_URL" in proxy.env else 0.0)
    while httpx.get(f"{proxy.url}/v1/models", headers=bearer(expired)).status_code != 403:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    response = httpx.get(f"{proxy.url}/v1/models", headers=bearer(inactive))
    assert_openai_error(response, 403, "inactive_api_key")
    response = httpx.get(f"{proxy.url}/v1/models", headers=bearer(expired))
    assert_openai_error(response, 403, "expired_api_key")
    assert upstream.received == []


# --- forwarding: the OpenAI SDK -----------------------------------------------------


def test_openai_sdk_chat_reaches_upstream_with_swapped_credentials(
    proxy: Proxy, upstream: StandIn, api_key: str
) -> None:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=api_key, max_retries=0)
    completion = client.chat.completions.create(
        model="gemini-3-flash",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={
            "x-custom-trace": "kept",
            "x-api-key": api_key,
            "x-admin-secret": ADMIN_SECRET,
        },
    )
    assert completion.choices[0].message.content == "hello from gemini-3-flash"
    assert completion.usage is not None and completion.usage.total_tokens == 16
    [seen] = upstream.received
    headers = {k.lower(): v for k, v in seen.headers.items()}
    assert headers["x-api-key"] == UPSTREAM_KEY
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"  # ours, never the client's
    assert "x-admin-secret" not in headers
    assert headers["x-custom-trace"] == "kept"
    assert api_key not in json.dumps(headers)
    assert seen.json()["model"] == "gemini-3-flash"


def test_openai_sdk_streaming(proxy: Proxy, upstream: StandIn, api_key: str) -> None:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=api_key, max_retries=0)
    stream = client.chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"x-standin-chunks": "5"},
    )
    contents = [
        c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert [text.split("@")[0] for text in contents] == ["0", "1", "2", "3", "4"]


def test_upstream_key_never_reaches_the_client(proxy: Proxy, api_key: str) -> None:
    for path in ("/v1/models", "/health"):
        response = httpx.get(f"{proxy.url}{path}", headers=bearer(api_key))
        assert UPSTREAM_KEY not in response.text
        assert UPSTREAM_KEY not in str(response.headers)


def test_non_streaming_response_is_forwarded_unchanged(
    proxy: Proxy, standin: StandIn, api_key: str
) -> None:
    # (The stand-in's /v1/completions echoes; a model that is no alias: nothing rewritten.)
    direct = httpx.post(
        f"{standin.url}/v1/completions", json={"model": "gemini-3-flash", "prompt": "hi"}
    )
    proxied = httpx.post(
        f"{proxy.url}/v1/completions",
        json={"model": "gemini-3-flash", "prompt": "hi"},
        headers=bearer(api_key),
    )
    assert proxied.status_code == 200
    assert proxied.content == direct.content


# --- routing -----------------------------------------------------------------------


def test_alias_split_matches_20_80_over_1200_requests(
    proxy: Proxy, upstream: StandIn, api_key: str
) -> None:
    n = 1200
    with httpx.Client(base_url=proxy.url, headers=bearer(api_key)) as client:
        served = Counter(
            client.post("/v1/chat/completions", json=chat_body("cursor-pro-sonnet")).json()["model"]
            for _ in range(n)
        )
    assert set(served) == {"claude-sonnet-4-5", "gemini-3-flash"}
    assert Counter(r.json()["model"] for r in upstream.received) == served
    share = served["claude-sonnet-4-5"] / n
    sigma = math.sqrt(0.2 * 0.8 / n)
    print(f"claude share {share:.3f} over {n} requests (expected 0.200 +- {6 * sigma:.3f})")
    assert abs(share - 0.2) < 6 * sigma
    assert "model=cursor-pro-sonnet->claude-sonnet-4-5" in proxy.log()
    assert "model=cursor-pro-sonnet->gemini-3-flash" in proxy.log()


def test_other_models_pass_through_byte_for_byte(
    proxy: Proxy, upstream: StandIn, api_key: str
) -> None:
    body = b'{"model": "gemini-3-pro-high",  "messages": [], "temperature": 0.70}'
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        headers={**bearer(api_key), "content-type": "application/json"},
        content=body,
    )
    assert response.status_code == 200
    assert upstream.received[0].body == body


def test_malformed_json_is_400_and_not_forwarded(
    proxy: Proxy, upstream: StandIn, api_key: str
) -> None:
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        headers={**bearer(api_key), "content-type": "application/json"},
        content=b'{"model": "cursor-pro-sonnet",',
    )
    assert_openai_error(response, 400, "invalid_json")
    assert upstream.received == []


# --- streaming ---------------------------------------------------------------------


def test_sse_chunks_arrive_as_they_are_sent(proxy: Proxy, api_key: str) -> None:
    """Chunks sent 100 ms apart arrive about 100 ms apart, not in one burst at the end."""
    lags, arrivals = [], []
    headers = {**bearer(api_key), "x-standin-chunks": "8", "x-standin-interval": "0.1"}
    with httpx.stream(
        "POST",
        f"{proxy.url}/v1/chat/completions",
        headers=headers,
        json=chat_body(stream=True),
    ) as response:
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["x-accel-buffering"] == "no"
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            content = json.loads(line[6:])["choices"][0]["delta"].get("content")
            if content:
                now = time.time()
                arrivals.append(now)
                lags.append(now - float(content.split("@")[1]))
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    print(f"chunk gaps ms: {[round(g * 1000) for g in gaps]}")
    print(f"chunk lag ms: p50 {statistics.median(lags) * 1000:.1f} max {max(lags) * 1000:.1f}")
    assert len(arrivals) == 8
    assert all(0.05 < gap < 0.5 for gap in gaps), gaps
    assert statistics.median(lags) < 0.05


# --- errors ------------------------------------------------------------------------


def test_upstream_errors_pass_through_with_status_and_body(
    proxy: Proxy, upstream: StandIn, api_key: str
) -> None:
    for status in (400, 429, 500, 503):
        response = httpx.post(
            f"{proxy.url}/v1/chat/completions",
            headers={**bearer(api_key), "x-standin-status": str(status)},
            json=chat_body(),
        )
        assert response.status_code == status
        assert response.json()["error"]["code"] == f"standin_{status}"
        assert response.headers["retry-after"] == "7"


def test_openai_sdk_surfaces_proxy_errors(proxy: Proxy) -> None:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="apk_" + "B" * 43, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as raised:
        client.models.list()
    assert raised.value.status_code == 403
    assert "Invalid API key" in str(raised.value)


def test_down_upstream_is_a_fast_502_json(make_proxy) -> None:
    closed_port = free_port()
    down = make_proxy(f"http://127.0.0.1:{closed_port}")
    key = down.create_key()
    started = time.monotonic()
    response = httpx.post(f"{down.url}/v1/chat/completions", headers=bearer(key), json=chat_body())
    assert_openai_error(response, 502, "upstream_unreachable")
    assert time.monotonic() - started < 2
    # The connection was answered, and the next request is served just the same.
    response = httpx.post(
        f"{down.url}/v1/completions",
        headers=bearer(key),
        json={"model": "gemini-3-flash", "prompt": "x"},
    )
    assert_openai_error(response, 502, "upstream_unreachable")


def test_slow_upstream_is_504_but_a_flowing_stream_is_never_cut(
    make_proxy, standin: StandIn
) -> None:
    slow = make_proxy(standin.url, UPSTREAM_TIMEOUT="1")
    key = slow.create_key()
    started = time.monotonic()
    response = httpx.post(
        f"{slow.url}/v1/chat/completions",
        headers={**bearer(key), "x-standin-delay": "3"},
        json=chat_body(),
        timeout=10,
    )
    assert_openai_error(response, 504, "upstream_timeout")
    assert 0.9 < time.monotonic() - started < 2.5
    # A stream that lasts 2.5 s in all, but starts at once, outlives the 1 s limit.
    headers = {**bearer(key), "x-standin-chunks": "6", "x-standin-interval": "0.5"}
    response = httpx.post(
        f"{slow.url}/v1/chat/completions", headers=headers, json=chat_body(stream=True), timeout=10
    )
    assert response.status_code == 200
    assert response.text.rstrip().endswith("data: [DONE]")
    assert response.text.count('"content"') == 6
    assert " 504 " in slow.log()


def test_oversized_body_is_413_json_and_not_forwarded(make_proxy, standin: StandIn) -> None:
    small = make_proxy(standin.url, MAX_BODY_SIZE="4k")
    key = small.create_key()
    standin.reset()
    big = chat_body(padding="x" * 8192)
    response = httpx.post(f"{small.url}/v1/chat/completions", headers=bearer(key), json=big)
    assert_openai_error(response, 413, "request_too_large")
    assert standin.received == []


# --- admin -------------------------------------------------------------------------


@pytest.mark.both_backends
def test_admin_create_key_returns_a_working_key(proxy: Proxy, upstream: StandIn) -> None:
    response = httpx.post(
        f"{proxy.url}/admin/create-key",
        headers={"x-admin-secret": ADMIN_SECRET},
        json={"name": "dana", "tier": "pro", "expires_in": "12h"},
    )
    assert response.status_code == 201
    created = response.json()
    assert set(created) == {"api_key", "id", "name", "tier", "created_at", "expires_at"}
    assert (created["name"], created["tier"]) == ("dana", "pro")
    assert created["expires_at"] > created["created_at"]
    answer = httpx.post(
        f"{proxy.url}/v1/completions",
        json={"model": "gemini-3-flash", "prompt": "hi"},
        headers=bearer(created["api_key"]),
    )
    assert answer.status_code == 200
    assert [r.path for r in upstream.received] == ["/v1/completions"]


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({}, {"name": "x"}, 401, "invalid_admin_secret"),
        (
            {"x-admin-secret": "wrong-secret-wrong-secret"},
            {"name": "x"},
            401,
            "invalid_admin_secret",
        ),
        ({"x-admin-secret": ADMIN_SECRET}, {"tier": "pro"}, 400, "invalid_field"),
        (
            {"x-admin-secret": ADMIN_SECRET},
            {"name": "x", "expires_in": "soon"},
            400,
            "invalid_field",
        ),
        ({"x-admin-secret": ADMIN_SECRET}, ["name"], 400, "invalid_json"),
        ({"x-admin-secret": ADMIN_SECRET}, {"nam": "x"}, 400, "unknown_field"),
        (
            {"authorization": "Bearer wrong-secret-wrong"},
            {"name": "x"},
            401,
            "invalid_admin_secret",
        ),
    ],
    ids=[
        "no-secret",
        "wrong-secret",
        "no-name",
        "bad-expiry",
        "not-an-object",
        "misspelt-field",
        "wrong-bearer",
    ],
)
@pytest.mark.both_backends
def test_admin_refusals(
    proxy: Proxy, upstream: StandIn, headers: dict[str, str], body: object, status: int, code: str
) -> None:
    response = httpx.post(f"{proxy.url}/admin/create-key", headers=headers, json=body)
    assert_openai_error(response, status, code)
    assert upstream.received == []
    if status == 401:  # says how to send the secret, whichever way it was sent
        assert "x-admin-secret" in response.json()["error"]["message"]
        assert "Authorization: Bearer" in response.json()["error"]["message"]


def test_admin_is_disabled_without_a_secret(make_proxy, standin: StandIn) -> None:
    no_admin = make_proxy(standin.url, ADMIN_SECRET="")
    response = httpx.post(
        f"{no_admin.url}/admin/create-key", headers={"x-admin-secret": ""}, json={"name": "x"}
    )
    assert_openai_error(response, 503, "admin_disabled")
    assert "admin API is disabled" in no_admin.log()


# --- logs --------------------------------------------------------------------------


def test_access_log_names_the_key_but_never_contains_one(proxy: Proxy) -> None:
    created = httpx.post(
        f"{proxy.url}/admin/create-key",
        headers={"x-admin-secret": ADMIN_SECRET},
        json={"name": "logprobe"},
    ).json()
    proxy.keys.append(created["api_key"])
    httpx.post(
        f"{proxy.url}/v1/chat/completions",
        headers=bearer(created["api_key"]),
        json=chat_body("cursor-pro-sonnet"),
    )
    httpx.get(f"{proxy.url}/v1/models", headers=bearer("apk_" + "C" * 43))
    time.sleep(0.2)
    lines = proxy.log().splitlines()
    [served] = [line for line in lines if f"key={created['id']}:logprobe" in line]
    assert "POST /v1/chat/completions 200" in served
    assert "model=cursor-pro-sonnet->" in served
    assert any("GET /v1/models 403" in line and "key=-" in line for line in lines)
    log = "\n".join(lines)
    for secret in [*proxy.keys, UPSTREAM_KEY, ADMIN_SECRET, "apk_" + "C" * 43]:
        assert secret not in log

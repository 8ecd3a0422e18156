"""End to end: running it as a business. Usage, revocation, rate limits, metrics,
graceful shutdown and request ids, through real mitmdump processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from tests.support.harness import (
    ADMIN_SECRET,
    KEY_OBJECT_FIELDS,
    ROOT,
    USAGE_ROW_FIELDS,
    Proxy,
    bearer,
)
from tests.support.services import fresh_database
from tests.support.standin import StandIn

ADMIN = {"x-admin-secret": ADMIN_SECRET}
FLUSH_WAIT = 1.6  # usage is written about once a second
#: The tests on the shared `proxy` run on SQLite and on PostgreSQL (DATABASE_URL).
BOTH_BACKENDS = True
#: How soon a key change made through one process reaches another (PostgreSQL: NOTIFY).
KEY_CHANGE_SECONDS = 1.0


def eventually(check, within: float = KEY_CHANGE_SECONDS) -> float:
    """Call `check` until it returns true or `within` seconds pass; the time it took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, f"not true within {within} s"
        time.sleep(0.02)
    return time.monotonic() - started


def usage_rows(proxy: Proxy, key_id: int) -> dict[str, dict[str, object]]:
    response = httpx.get(f"{proxy.url}/admin/usage", headers=ADMIN)
    assert response.status_code == 200
    return {row["model"]: row for row in response.json()["data"] if row["key_id"] == key_id}


def sse_events(text: str) -> list[dict[str, object]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


# --- usage -------------------------------------------------------------------------


def test_non_streaming_usage_is_counted_per_key_and_model(proxy: Proxy) -> None:
    key_id, key = proxy.new_key("usage-plain")
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)
    for model in ("gemini-3-flash", "gemini-3-flash", "claude-sonnet-4-5"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    time.sleep(FLUSH_WAIT)
    rows = usage_rows(proxy, key_id)
    assert rows["gemini-3-flash"] == {
        "key_id": key_id,
        "name": "usage-plain",
        "model": "gemini-3-flash",
        "requests": 2,
        "errors": 0,
        "prompt_tokens": 22,
        "completion_tokens": 10,
        "cost": 0,  # the built-in table has no prices
        "reasoning_tokens": 0,
        "estimated_reasoning_tokens": 0,
        "estimated_requests": 0,
    }
    assert rows["claude-sonnet-4-5"]["requests"] == 1
    [listed] = [
        k
        for k in httpx.get(f"{proxy.url}/admin/keys", headers=ADMIN).json()["data"]
        if k["id"] == key_id
    ]
    assert (listed["requests"], listed["prompt_tokens"], listed["completion_tokens"]) == (3, 33, 15)
    assert listed["last_used_at"] is not None
    assert list(listed) == KEY_OBJECT_FIELDS
    assert not any(key in json.dumps(listed) for key in proxy.keys)


def test_stream_usage_is_counted_and_its_chunk_hidden_from_a_client_that_did_not_ask(
    proxy: Proxy, upstream: StandIn
) -> None:
    key_id, key = proxy.new_key("usage-stream")
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        headers={**bearer(key), "x-standin-chunks": "7"},
        json={"model": "gemini-3-flash", "stream": True, "messages": []},
    )
    events = sse_events(response.text)
    assert response.text.rstrip().endswith("data: [DONE]")
    assert all(event["choices"] for event in events), "the usage-only chunk leaked"
    assert upstream.received[0].json()["stream_options"] == {"include_usage": True}
    time.sleep(FLUSH_WAIT)
    row = usage_rows(proxy, key_id)["gemini-3-flash"]
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (1, 11, 7)


def test_a_client_that_asks_for_stream_usage_gets_it(proxy: Proxy) -> None:
    key_id, key = proxy.new_key("usage-asked")
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="gemini-3-flash",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    time.sleep(FLUSH_WAIT)
    assert usage_rows(proxy, key_id)["gemini-3-flash"]["completion_tokens"] == 3


def test_anthropic_usage_is_counted_streaming_and_not(proxy: Proxy) -> None:
    key_id, key = proxy.new_key("usage-anthropic")
    body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": []}
    plain = httpx.post(f"{proxy.url}/v1/messages", headers=bearer(key), json=body)
    assert plain.json()["usage"] == {"input_tokens": 21, "output_tokens": 4}
    streamed = httpx.post(
        f"{proxy.url}/v1/messages",
        headers={**bearer(key), "x-standin-chunks": "5"},
        json={**body, "stream": True},
    )
    assert "event: message_stop" in streamed.text
    time.sleep(FLUSH_WAIT)
    row = usage_rows(proxy, key_id)["claude-sonnet-4-5"]
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (2, 42, 9)


def test_usage_since_filters_by_time(proxy: Proxy) -> None:
    response = httpx.get(f"{proxy.url}/admin/usage?since=1h", headers=ADMIN)
    assert response.status_code == 200
    response = httpx.get(f"{proxy.url}/admin/usage?since=yesterday", headers=ADMIN)
    assert response.status_code == 400


# --- key lifecycle -----------------------------------------------------------------


def test_revocation_is_immediate_in_another_process_sharing_the_database(
    proxy: Proxy, make_proxy, standin: StandIn
) -> None:
    other = make_proxy(standin.url, **proxy.database_env())
    key_id, key = proxy.new_key("revoked-elsewhere")
    assert httpx.get(f"{other.url}/v1/models", headers=bearer(key)).status_code == 200
    revoked = httpx.post(f"{proxy.url}/admin/revoke-key", headers=ADMIN, json={"id": key_id})
    assert revoked.json() == {"id": key_id, "active": False}
    # The process that made the change refuses the key at once; another one on SQLite
    # at once too (data_version), on PostgreSQL within a second (NOTIFY).
    response = httpx.get(f"{proxy.url}/v1/models", headers=bearer(key))
    assert response.status_code == 403
    eventually(lambda: httpx.get(f"{other.url}/v1/models", headers=bearer(key)).status_code == 403)
    response = httpx.get(f"{other.url}/v1/models", headers=bearer(key))
    assert response.json()["error"]["code"] == "inactive_api_key"
    httpx.post(f"{other.url}/admin/activate-key", headers=ADMIN, json={"id": key_id})
    assert httpx.get(f"{other.url}/v1/models", headers=bearer(key)).status_code == 200
    eventually(lambda: httpx.get(f"{proxy.url}/v1/models", headers=bearer(key)).status_code == 200)


def test_unknown_key_ids_are_404(proxy: Proxy) -> None:
    for path in ("/admin/revoke-key", "/admin/activate-key"):
        response = httpx.post(f"{proxy.url}{path}", headers=ADMIN, json={"id": 987654})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "key_not_found"
    response = httpx.post(f"{proxy.url}/admin/revoke-key", headers=ADMIN, json={"id": "1"})
    assert response.status_code == 400


def test_keys_cli_lists_revokes_and_reports(proxy: Proxy) -> None:
    def keys_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "keys.py"), *args],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=proxy.workdir,
            env={**os.environ, **proxy.database_env()},
        )

    created = json.loads(keys_cli("create", "--name", "cli", "--rpm", "5", "--json").stdout)
    proxy.keys.append(created["api_key"])
    listed = json.loads(keys_cli("list", "--json").stdout)
    [mine] = [k for k in listed if k["id"] == created["id"]]
    assert (mine["name"], mine["rpm"], mine["active"]) == ("cli", 5, True)
    table = keys_cli("list").stdout.splitlines()
    assert table[0].split()[:4] == ["id", "name", "tier", "active"]
    assert any(line.split()[:2] == [str(created["id"]), "cli"] for line in table)
    assert created["api_key"] not in keys_cli("list").stdout
    assert keys_cli("revoke", str(created["id"])).returncode == 0
    revoked = bearer(created["api_key"])
    eventually(lambda: httpx.get(f"{proxy.url}/v1/models", headers=revoked).status_code == 403)
    missing = keys_cli("revoke", "999999")
    assert missing.returncode == 1 and "no key has id 999999" in missing.stderr
    report = json.loads(keys_cli("usage", "--since", "24h", "--json").stdout)
    assert all(list(row) == USAGE_ROW_FIELDS for row in report)


# --- rate limits ---------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after_and_does_not_forward(
    proxy: Proxy, upstream: StandIn
) -> None:
    _, key = proxy.new_key("limited", rpm=3)

    def call() -> httpx.Response:  # a forwarded request (the stand-in echoes it)
        return httpx.post(
            f"{proxy.url}/v1/completions",
            json={"model": "gemini-3-flash", "prompt": "x"},
            headers=bearer(key),
        )

    statuses = [call().status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    response = call()
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(response.headers["retry-after"]) <= 20
    assert len(upstream.received) == 3


def test_tier_default_rate_limit_comes_from_config(make_proxy, standin: StandIn) -> None:
    limited = make_proxy(standin.url, DEFAULT_RPM="100", TIER_RPM="trial=2")
    _, trial = limited.new_key("trial-user", tier="trial")
    _, elite = limited.new_key("elite-user")
    codes = [
        httpx.get(f"{limited.url}/v1/models", headers=bearer(trial)).status_code for _ in range(3)
    ]
    assert codes == [200, 200, 429]
    assert httpx.get(f"{limited.url}/v1/models", headers=bearer(elite)).status_code == 200


# --- metrics -------------------------------------------------------------------------


def test_metrics_need_the_admin_secret_and_count_requests(proxy: Proxy) -> None:
    assert httpx.get(f"{proxy.url}/metrics").status_code == 401
    _, key = proxy.new_key("metered")
    httpx.post(
        f"{proxy.url}/v1/chat/completions",
        headers=bearer(key),
        json={"model": "gemini-3-pro-high", "messages": []},
    )
    httpx.get(f"{proxy.url}/v1/models", headers=bearer("apk_" + "D" * 43))
    response = httpx.get(f"{proxy.url}/metrics", headers=bearer(ADMIN_SECRET))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'apipod_requests_total{model="gemini-3-pro-high",status="200"}' in text
    assert 'apipod_auth_failures_total{reason="unknown"}' in text
    assert 'apipod_tokens_total{kind="prompt",model="gemini-3-pro-high"}' in text
    # Refused without forwarding: counted by the proxy's own code; the database answered.
    assert 'apipod_refusals_total{code="invalid_api_key"}' in text
    assert "apipod_database_up 1.0" in text
    for name in (
        "apipod_request_duration_seconds_bucket",
        "apipod_upstream_ttfb_seconds_count",
        "apipod_active_streams",
        "apipod_rate_limited_total",
    ):
        assert name in text
    assert httpx.get(f"{proxy.url}/metrics", headers=ADMIN).status_code == 200


# --- backup and restore ----------------------------------------------------------------


def test_a_backup_taken_while_serving_restores_keys_that_still_authenticate(
    proxy: Proxy, upstream: StandIn, make_proxy, backend: str, tmp_path
) -> None:
    _, key = proxy.new_key("backed-up")
    revoked_id, revoked = proxy.new_key("revoked-before-backup")
    proxy_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_PATH", "DATABASE_URL")}

    def keys_py(*argv: str, settings: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "keys.py"), *argv],
            cwd=tmp_path,  # not the checkout: the settings alone name the database
            env={**proxy_env, **settings},
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert keys_py("revoke", str(revoked_id), settings=proxy.database_env()).returncode == 0
    statuses: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                answer = client.post(
                    f"{proxy.url}/v1/chat/completions",
                    headers=bearer(key),
                    json={"model": "gemini-3-flash", "messages": []},
                )
                statuses.append(answer.status_code)

    traffic = threading.Thread(target=serve)
    traffic.start()
    try:
        eventually(lambda: len(statuses) >= 5, within=30)
        saved = keys_py("backup", "live.db", settings=proxy.database_env())
        served = len(statuses)
        eventually(lambda: len(statuses) >= served + 5, within=30)  # still serving
    finally:
        stop.set()
        traffic.join()
    assert saved.returncode == 0, saved.stderr
    assert set(statuses) == {200}

    with contextlib.ExitStack() as stack:
        fresh = {"DATABASE_PATH": str(tmp_path / "fresh" / "proxy.db")}
        if backend == "postgresql":
            fresh["DATABASE_URL"] = stack.enter_context(fresh_database())
        loaded = keys_py("restore", "live.db", settings=fresh)
        assert loaded.returncode == 0, loaded.stderr
        restored = make_proxy(upstream.url, **fresh)
        answer = httpx.post(
            f"{restored.url}/v1/chat/completions",
            headers=bearer(key),
            json={"model": "gemini-3-flash", "messages": []},
        )
        assert answer.status_code == 200, answer.text
        refused = httpx.get(f"{restored.url}/v1/models", headers=bearer(revoked))
        assert refused.json()["error"]["code"] == "inactive_api_key"
        restored.stop()


# --- request ids and logs --------------------------------------------------------------


def test_request_id_is_kept_or_generated_and_seen_by_both_sides(
    proxy: Proxy, upstream: StandIn
) -> None:
    _, key = proxy.new_key("traced")
    given = httpx.post(
        f"{proxy.url}/v1/completions",
        json={"model": "gemini-3-flash", "prompt": "x"},
        headers={**bearer(key), "x-request-id": "trace-abc-123"},
    )
    assert given.headers["x-request-id"] == "trace-abc-123"
    made = httpx.post(
        f"{proxy.url}/v1/completions",
        json={"model": "gemini-3-flash", "prompt": "x"},
        headers=bearer(key),
    )
    generated = made.headers["x-request-id"]
    assert generated.startswith("req_") and generated != "trace-abc-123"
    assert [r.headers["x-request-id"] for r in upstream.received] == ["trace-abc-123", generated]
    time.sleep(0.2)
    assert "id=trace-abc-123" in proxy.log() and f"id={generated}" in proxy.log()


def test_json_logs(make_proxy, standin: StandIn) -> None:
    proxy = make_proxy(standin.url, LOG_FORMAT="json")
    _, key = proxy.new_key("json-logged")
    httpx.post(
        f"{proxy.url}/v1/chat/completions",
        headers=bearer(key),
        json={"model": "cursor-pro-sonnet", "messages": []},
    )
    time.sleep(0.2)
    lines = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
    [access] = [line for line in lines if line.get("path") == "/v1/chat/completions"]
    assert access["status"] == 200 and access["key_name"] == "json-logged"
    assert access["model"] == "cursor-pro-sonnet"
    assert access["routed_model"] in ("claude-sonnet-4-5", "gemini-3-flash")
    assert access["request_id"].startswith("req_")


# --- graceful shutdown ---------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_drains_a_stream_in_flight_then_flushes_and_exits_0(
    make_proxy, standin: StandIn, signum: int
) -> None:
    proxy = make_proxy(standin.url)
    key_id, key = proxy.new_key("draining")
    result: dict[str, object] = {}

    def stream() -> None:
        response = httpx.post(
            f"{proxy.url}/v1/chat/completions",
            headers={**bearer(key), "x-standin-chunks": "15", "x-standin-interval": "0.1"},
            json={"model": "gemini-3-flash", "stream": True, "messages": []},
            timeout=30,
        )
        result["text"] = response.text

    client = threading.Thread(target=stream)
    client.start()
    time.sleep(0.5)
    proxy.process.send_signal(signum)
    time.sleep(0.3)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{proxy.url}/health", timeout=2)  # no new connections while draining
    client.join(30)
    assert proxy.process.wait(15) == 0
    text = str(result["text"])
    assert text.rstrip().endswith("data: [DONE]")
    assert [e["choices"][0]["delta"].get("content", "").split("@")[0] for e in sse_events(text)][
        :15
    ] == [str(i) for i in range(15)]
    # What was counted before the exit is in the database.
    rows = proxy.usage_from_cli()
    [row] = [r for r in rows if r["key_id"] == key_id]
    assert (row["requests"], row["completion_tokens"]) == (1, 15)
    assert "draining 1 in-flight" in proxy.log()


def test_drain_timeout_bounds_the_wait(make_proxy, standin: StandIn) -> None:
    proxy = make_proxy(standin.url, DRAIN_TIMEOUT="1")
    _, key = proxy.new_key("cut")
    outcome: list[str] = []

    def endless_stream() -> None:
        try:
            httpx.post(
                f"{proxy.url}/v1/chat/completions",
                headers={**bearer(key), "x-standin-chunks": "100", "x-standin-interval": "0.1"},
                json={"model": "gemini-3-flash", "stream": True, "messages": []},
                timeout=30,
            )
            outcome.append("completed")
        except httpx.RemoteProtocolError:
            outcome.append("cut")

    client = threading.Thread(target=endless_stream)
    client.start()
    time.sleep(0.5)
    started = time.monotonic()
    proxy.process.send_signal(signal.SIGTERM)
    assert proxy.process.wait(15) == 0
    assert time.monotonic() - started < 4
    client.join(30)
    assert outcome == ["cut"]
    assert "drain timeout: 1 requests still in flight are cut" in proxy.log()

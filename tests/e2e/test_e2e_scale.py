"""End to end: PostgreSQL and Redis faults, through real mitmdump processes.

The proxies reach the services through a `TcpGate`, which a test closes to make the
service unreachable (connections cut, new ones refused) and opens again, while the
machine's PostgreSQL and Redis stay up for everything else.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.support.harness import ADMIN_SECRET, Proxy, bearer
from tests.support.services import RedisSpace
from tests.support.standin import StandIn
from tests.support.tcpgate import TcpGate

ADMIN = {"x-admin-secret": ADMIN_SECRET}


def chat(proxy: Proxy, key: str, timeout: float = 30) -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/v1/chat/completions",
        headers=bearer(key),
        json={"model": "gemini-3-flash", "messages": [{"role": "user", "content": "hi"}]},
        timeout=timeout,
    )


def through(gate: TcpGate, url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{gate.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


@pytest.fixture
def pg_gate(pg_url: str) -> Iterator[tuple[TcpGate, str]]:
    parts = urlsplit(pg_url)
    gate = TcpGate(parts.hostname or "127.0.0.1", parts.port or 5432)
    yield gate, through(gate, pg_url)
    gate.stop()


@pytest.fixture
def redis_gate(redis_space: RedisSpace) -> Iterator[tuple[TcpGate, str]]:
    parts = urlsplit(redis_space.url)
    gate = TcpGate(parts.hostname or "127.0.0.1", parts.port or 6379)
    yield gate, through(gate, redis_space.url)
    gate.stop()


def total_requests(proxy: Proxy, key_id: int) -> int:
    response = httpx.get(f"{proxy.url}/admin/usage", headers=ADMIN, timeout=10)
    if response.status_code != 200:  # the database may still be reconnecting
        return -1
    rows = response.json()["data"]
    return sum(row["requests"] for row in rows if row["key_id"] == key_id)


# --- PostgreSQL unreachable -------------------------------------------------------------


def test_postgres_outage_known_keys_work_unknown_503_health_degraded_usage_kept(
    make_proxy, standin: StandIn, pg_gate: tuple[TcpGate, str]
) -> None:
    gate, url = pg_gate
    proxy = make_proxy(standin.url, DATABASE_URL=url)
    created = httpx.post(
        f"{proxy.url}/admin/create-key", headers=ADMIN, json={"name": "known"}
    ).json()
    known, key_id = created["api_key"], created["id"]
    unknown = httpx.post(
        f"{proxy.url}/admin/create-key", headers=ADMIN, json={"name": "never-used"}
    ).json()["api_key"]
    assert chat(proxy, known).status_code == 200  # now in the proxy's memory
    assert httpx.get(f"{proxy.url}/health").json()["database"] == "ok"

    gate.close()
    served = sum(chat(proxy, known).status_code == 200 for _ in range(20))
    assert served == 20
    response = chat(proxy, unknown)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
    started = time.monotonic()
    health = httpx.get(f"{proxy.url}/health", timeout=15)
    assert time.monotonic() - started < 2.5  # well within a load balancer's check timeout
    assert health.status_code == 200
    assert health.json()["status"] == "degraded" and health.json()["database"] == "degraded"
    deadline = time.monotonic() + 15  # flushes fail meanwhile; the counts are kept
    while "usage flush failed, will retry" not in proxy.log():
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.2)

    gate.open()
    deadline = time.monotonic() + 15
    while total_requests(proxy, key_id) != 21 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert total_requests(proxy, key_id) == 21
    assert chat(proxy, unknown).status_code == 200
    assert httpx.get(f"{proxy.url}/health").json()["database"] == "ok"
    log = proxy.log()
    assert known not in log and unknown not in log


@pytest.mark.slow
def test_postgres_restart_under_load_loses_no_usage(
    make_proxy, standin: StandIn, pg_gate: tuple[TcpGate, str]
) -> None:
    gate, url = pg_gate
    proxy = make_proxy(standin.url, DATABASE_URL=url)
    created = httpx.post(f"{proxy.url}/admin/create-key", headers=ADMIN, json={"name": "l"}).json()
    key, key_id = created["api_key"], created["id"]
    assert chat(proxy, key).status_code == 200
    served = [1]
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(
                    f"{proxy.url}/v1/chat/completions",
                    headers=bearer(key),
                    json={"model": "gemini-3-flash", "messages": []},
                )
                served[0] += response.status_code == 200

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(1.5)
    gate.close()  # PostgreSQL "restarts": every connection cut, none accepted for 2 s
    time.sleep(2.0)
    gate.open()
    time.sleep(1.5)
    stop.set()
    for worker in workers:
        worker.join()
    deadline = time.monotonic() + 15
    while total_requests(proxy, key_id) != served[0] and time.monotonic() < deadline:
        time.sleep(0.3)
    assert served[0] > 20
    assert total_requests(proxy, key_id) == served[0]


# --- Redis ------------------------------------------------------------------------------


def test_two_proxies_share_one_rate_limit_through_redis(
    make_proxy, standin: StandIn, redis_space: RedisSpace, tmp_path
) -> None:
    shared = {
        "REDIS_URL": redis_space.url,
        "REDIS_PREFIX": redis_space.prefix,
        "DATABASE_PATH": str(tmp_path / "shared.db"),
    }
    a, b = make_proxy(standin.url, **shared), make_proxy(standin.url, **shared)
    key = a.create_key("shared", rpm=6)
    statuses = [chat(p, key).status_code for p in (a, b) * 6]
    assert statuses.count(200) == 6
    refused = chat(b, key)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 10
    assert "rate limits shared (REDIS_URL)" in a.log()


def test_redis_outage_falls_back_per_process_with_one_warning_then_shares_again(
    make_proxy, standin: StandIn, redis_space: RedisSpace, redis_gate: tuple[TcpGate, str]
) -> None:
    gate, url = redis_gate
    proxy = make_proxy(standin.url, REDIS_URL=url, REDIS_PREFIX=redis_space.prefix)
    key = proxy.create_key("limited", rpm=3)
    assert [chat(proxy, key).status_code for _ in range(4)] == [200, 200, 200, 429]

    gate.close()
    started = time.monotonic()
    # Per process now: this process's own bucket for the key is full, and requests flow.
    statuses = [chat(proxy, key).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert time.monotonic() - started < 5
    time.sleep(1.2)  # past the retry pause: Redis is tried (and fails) again
    assert chat(proxy, key).status_code == 429
    warnings = [line for line in proxy.log().splitlines() if "Redis unreachable" in line]
    assert len(warnings) == 1, warnings
    assert "per process" in warnings[0]

    gate.open()
    time.sleep(1.2)
    deadline = time.monotonic() + 5
    while "shared between replicas" not in proxy.log() and time.monotonic() < deadline:
        chat(proxy, key)
        time.sleep(0.2)
    assert "Redis is reachable again" in proxy.log()
    assert redis_space.keys(), "the shared bucket is in use again"

"""End to end: three apipod replicas behind HAProxy (round robin), sharing one
PostgreSQL database and one Redis, as docker-compose.scale.yml runs them.

HAProxy comes from Debian's package (`make test` installs it when missing; without
it these tests are skipped). It names the replica that served each answer in an
`x-served-by` header, so the clients can count per replica.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.harness import ADMIN_SECRET, Proxy, bearer, free_port, healthy, wait_ready
from tests.support.services import RedisSpace, in_ci
from tests.support.standin import StandIn

pytestmark = pytest.mark.slow
ADMIN = {"x-admin-secret": ADMIN_SECRET}
REPLICAS = 3
#: The stand-in's plain answer is 11 prompt and 5 completion tokens: $0.0031 at these prices.
PRICES = """
[prices."gemini-3-flash"]
input = 100.0
output = 400.0
"""
ANSWER_COST = 0.0031

HAPROXY_CONFIG = """\
global
    maxconn 1024
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 2
    option redispatch
    http-reuse never
frontend apipod
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    http-response set-header x-served-by %s
{servers}
"""


@dataclass
class Cluster:
    replicas: list[Proxy]
    url: str

    def create_key(self, **fields: object) -> tuple[int, str]:
        response = httpx.post(
            f"{self.url}/admin/create-key", headers=ADMIN, json={"name": "r", **fields}
        )
        assert response.status_code == 201, response.text
        return response.json()["id"], response.json()["api_key"]

    def usage_total(self, key_id: int) -> int:
        rows = httpx.get(f"{self.url}/admin/usage", headers=ADMIN, timeout=10).json()["data"]
        return sum(row["requests"] for row in rows if row["key_id"] == key_id)


def chat(client: httpx.Client, url: str, key: str, **extra: object) -> httpx.Response:
    return client.post(
        f"{url}/v1/chat/completions",
        headers=bearer(key),
        json={"model": "gemini-3-flash", "messages": [{"role": "user", "content": "hi"}], **extra},
    )


@pytest.fixture
def cluster(
    make_proxy, standin: StandIn, pg_url: str, redis_space: RedisSpace, tmp_path: Path
) -> Iterator[Cluster]:
    if shutil.which("haproxy") is None:
        if in_ci():
            pytest.fail("CI=true: haproxy is not installed (apt-get install haproxy)")
        pytest.skip("haproxy is not installed; `apt-get install haproxy` (make test does)")
    routes = tmp_path / "routes.toml"
    routes.write_text(PRICES)
    shared = {
        "DATABASE_URL": pg_url,
        "REDIS_URL": redis_space.url,
        "REDIS_PREFIX": redis_space.prefix,
        "ROUTES_FILE": str(routes),
    }
    replicas = [make_proxy(standin.url, **shared) for _ in range(REPLICAS)]
    port = free_port()
    servers = "\n".join(
        f"    server r{i} 127.0.0.1:{r.port} check inter 300ms fall 1 rise 2"
        for i, r in enumerate(replicas)
    )
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(port=port, servers=servers))
    with open(tmp_path / "haproxy.log", "wb") as log:
        haproxy = subprocess.Popen(
            ["haproxy", "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(haproxy, healthy(url), (tmp_path / "haproxy.log").read_text, seconds=15)
        time.sleep(1)  # every replica's first health checks pass
        yield Cluster(replicas, url)
    finally:
        haproxy.terminate()
        haproxy.wait(10)


def test_a_key_gets_its_rpm_across_all_replicas_not_three_times_it(cluster: Cluster) -> None:
    _, key = cluster.create_key(rpm=30)
    served: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    started = time.monotonic()
    with httpx.Client(timeout=30) as client:
        for _ in range(120):
            response = chat(client, cluster.url, key)
            statuses[response.status_code] += 1
            if response.status_code == 200:
                served[response.headers["x-served-by"]] += 1
    elapsed = time.monotonic() - started
    # A full bucket of 30, plus what refills at 30/min while the clients hammer.
    expected = 30 + elapsed * 30 / 60
    print(f"rpm=30 over {elapsed:.1f} s: {dict(statuses)}, per replica {dict(served)}")
    assert set(statuses) == {200, 429}
    assert abs(statuses[200] - expected) <= 1.5, (statuses, elapsed)
    assert len(served) == REPLICAS  # round robin: every replica served some


def test_revoking_through_one_replica_is_refused_by_the_others_within_a_second(
    cluster: Cluster,
) -> None:
    a, b, c = cluster.replicas
    key_id, key = cluster.create_key()
    with httpx.Client(timeout=10) as client:
        for replica in (b, c):  # both know the key (it is in their memory)
            assert chat(client, replica.url, key).status_code == 200
        revoked = client.post(f"{a.url}/admin/revoke-key", headers=ADMIN, json={"id": key_id})
        assert revoked.status_code == 200
        started = time.monotonic()
        pending = {b.url, c.url}
        seen: dict[str, float] = {}
        while pending:
            for url in list(pending):
                if chat(client, url, key).status_code == 403:
                    seen[url] = time.monotonic() - started
                    pending.discard(url)
            assert time.monotonic() - started < 1.0, f"still accepted by {pending}"
    print(f"revocation seen by B and C after {sorted(round(s, 3) for s in seen.values())} s")


def test_usage_totals_equal_the_answers_and_a_killed_replica_loses_only_its_in_flight(
    cluster: Cluster,
) -> None:
    key_id, key = cluster.create_key(rpm=0)
    victim = cluster.replicas[2]
    served: Counter[str] = Counter()
    failed = Counter[str]()
    stop = threading.Event()
    lock = threading.Lock()

    def client_loop() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    response = chat(client, cluster.url, key)
                except httpx.TransportError as exc:
                    with lock:
                        failed[type(exc).__name__] += 1
                    continue
                with lock:
                    if response.status_code == 200:
                        served[response.headers["x-served-by"]] += 1
                    else:
                        failed[str(response.status_code)] += 1

    clients = [threading.Thread(target=client_loop) for _ in range(6)]
    for thread in clients:
        thread.start()
    time.sleep(3)
    with lock:
        before_kill = dict(served)
    os.kill(victim.process.pid, signal.SIGKILL)
    time.sleep(3)
    stop.set()
    for thread in clients:
        thread.join()
    total = sum(served.values())
    survivors = served["r0"] + served["r1"]
    print(f"served {dict(served)} (before the kill {before_kill}), failed {dict(failed)}")
    assert all(before_kill.get(f"r{i}", 0) > 0 for i in range(REPLICAS))
    # Only requests in flight on the killed replica fail (at most one per client): the
    # rest are sent to it on new connections, refused, and redispatched.
    assert sum(failed.values()) <= len(clients)
    assert served["r0"] > before_kill["r0"] and served["r1"] > before_kill["r1"]
    # The survivors' counts are exact; the killed replica's last second may be lost.
    deadline = time.monotonic() + 10
    while cluster.usage_total(key_id) < survivors and time.monotonic() < deadline:
        time.sleep(0.3)
    time.sleep(1.5)
    counted = cluster.usage_total(key_id)
    print(f"counted {counted}, served {total}, by survivors {survivors}, by victim {served['r2']}")
    assert survivors <= counted <= total


def test_usage_totals_equal_the_answers(cluster: Cluster) -> None:
    key_id, key = cluster.create_key(rpm=0)
    ok = 0
    with httpx.Client(timeout=30) as client:
        for _ in range(150):
            ok += chat(client, cluster.url, key).status_code == 200
    assert ok == 150
    deadline = time.monotonic() + 10
    while cluster.usage_total(key_id) != ok and time.monotonic() < deadline:
        time.sleep(0.3)
    assert cluster.usage_total(key_id) == ok


def test_a_budget_is_shared_spend_stops_at_it_give_or_take_the_requests_in_flight(
    cluster: Cluster,
) -> None:
    budget_requests, clients = 20, 3
    key_id, key = cluster.create_key(budget=round(budget_requests * ANSWER_COST, 6),
                                     budget_period="total")  # fmt: skip
    served: Counter[str] = Counter()
    refused = Counter[str]()
    lock = threading.Lock()

    def client_loop() -> None:
        with httpx.Client(timeout=30) as client:
            for _ in range(40):
                # max_tokens 5: a hold ($0.0022) under the cost ($0.0031), so requests
                # run side by side rather than one at a time (budgets.py).
                response = chat(client, cluster.url, key, max_tokens=5)
                with lock:
                    if response.status_code == 200:
                        served[response.headers["x-served-by"]] += 1
                    else:
                        refused[response.json()["error"]["code"]] += 1

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = sum(served.values())
    print(f"budget of {budget_requests} answers: served {dict(served)}, refused {dict(refused)}")
    assert set(refused) == {"insufficient_quota"}
    assert len(served) == REPLICAS  # every replica served some: the budget is theirs together
    # Admission holds each request's estimate against every replica's spend and holds
    # (one Lua script in Redis). A request costs more than its hold here, so each client's
    # request in flight may take the spend past the budget by the difference: at most
    # `clients` answers over.
    assert budget_requests <= total <= budget_requests + clients
    deadline = time.monotonic() + 10
    while cluster.usage_total(key_id) != total and time.monotonic() < deadline:
        time.sleep(0.3)
    assert cluster.usage_total(key_id) == total


# --- make replicas: one ready line, and quiet ----------------------------------------------


def test_make_replicas_prints_one_ready_line_and_no_haproxy_alerts(
    standin: StandIn, tmp_path: Path
) -> None:
    """`scripts/replicas.sh 2` (what `make replicas N=2` runs): HAProxy starts once both
    replicas answer, so none of its checks sees one down; one line says it is ready."""
    if shutil.which("haproxy") is None:
        if in_ci():
            pytest.fail("HAProxy is required under CI=true (make test installs it)")
        pytest.skip("HAProxy is not installed")
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PORT": str(port),
        "ANTIGRAVITY_URL": standin.url,
        "ANTIGRAVITY_KEY": "upstream-key",
        "ADMIN_SECRET": ADMIN_SECRET,
        "DATABASE_PATH": str(tmp_path / "proxy.db"),
    }
    env.pop("DATABASE_URL", None), env.pop("REDIS_URL", None)
    log = tmp_path / "replicas.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", str(root / "scripts" / "replicas.sh"), "2"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while "replicas.sh: ready:" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        time.sleep(2.5)  # one more round of HAProxy's checks (inter 2s)
        text = log.read_text()
        assert text.count("replicas.sh: ready:") == 1, text
        assert "ALERT" not in text and " is DOWN" not in text, text
        assert text.count("apipod ready") == 2, text  # each replica's own ready line
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)

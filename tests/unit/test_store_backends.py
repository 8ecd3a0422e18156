"""The store on both backends (SQLite, PostgreSQL), and what only PostgreSQL does:
the dialect rewrites, the schema version table, key changes reaching other
processes, outages, and `keys.py migrate-to`."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from apipod_proxy import cli, clock, keys
from apipod_proxy.storage import migrations
from apipod_proxy.storage.backend import DB_ERRORS, describe, key_cache_for, open_store
from apipod_proxy.storage.copy_to_postgres import copy_database
from apipod_proxy.storage.keycache import MISS
from apipod_proxy.storage.postgres import PING_WAIT, KeyVersionWatcher, PgKeyStore, translate
from apipod_proxy.storage.records import UsageCounts
from apipod_proxy.storage.sqlite import KeyStore
from tests.support.tcpgate import TcpGate

BOTH_BACKENDS = True


@pytest.fixture
def key_store(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Iterator[KeyStore]:
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    opened = open_store(tmp_path / "proxy.db", url)
    opened.open()
    yield opened
    opened.close()


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[PgKeyStore]:
    opened = PgKeyStore(pg_url)
    opened.open()
    yield opened
    opened.close()


# --- both backends ------------------------------------------------------------------


def test_create_find_revoke(key_store: KeyStore) -> None:
    plaintext, record = key_store.create("alice", "basic", 3600, rpm=30)
    found = key_store.find(keys.hash_key(plaintext))
    assert found == record
    assert (found.name, found.tier, found.rpm, found.active) == ("alice", "basic", 30, True)
    assert key_store.find(keys.hash_key(plaintext + "x")) is None
    assert key_store.set_active(record.id, False)
    assert key_store.find(keys.hash_key(plaintext)).active is False
    assert not key_store.set_active(record.id + 100, False)


def test_ids_count_up_from_one(key_store: KeyStore) -> None:
    ids = [key_store.create(f"k{i}", "elite", None)[1].id for i in range(3)]
    assert ids == [1, 2, 3]


def test_usage_adds_up_across_flushes_and_reports_plain_numbers(key_store: KeyStore) -> None:
    _, alice = key_store.create("alice", "elite", None)
    _, bob = key_store.create("bob", "elite", None)
    hour = clock.hour_of(clock.now_text())
    for _ in range(3):
        key_store.record_usage(
            {
                (alice.id, "m1", hour): UsageCounts(
                    2,
                    1,
                    1,
                    0,
                    10,
                    20,
                    cost=0.5,
                    reasoning_tokens=4,
                    estimated_reasoning_tokens=1,
                    estimated_requests=1,
                ),
                (bob.id, "m2", hour): UsageCounts(1, 0, 0, 1, 0, 0),
            },
            {alice.id: clock.now_text()},
        )
    rows = key_store.usage()
    assert rows == [
        {"key_id": alice.id, "name": "alice", "model": "m1", "requests": 6, "errors": 3,
         "prompt_tokens": 30, "completion_tokens": 60, "cost": 1.5, "reasoning_tokens": 12,
         "estimated_reasoning_tokens": 3, "estimated_requests": 3},
        {"key_id": bob.id, "name": "bob", "model": "m2", "requests": 3, "errors": 3,
         "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0, "reasoning_tokens": 0,
         "estimated_reasoning_tokens": 0, "estimated_requests": 0},
    ]  # fmt: skip
    # Plain ints (PostgreSQL's sum() is numeric), so JSON output is identical.
    assert json.dumps(rows)
    listed = {row["name"]: row for row in key_store.list_keys()}
    assert listed["alice"]["requests"] == 6 and type(listed["alice"]["requests"]) is int
    assert listed["alice"]["last_used_at"] is not None
    assert listed["bob"]["last_used_at"] is None


def test_spend_request_log_and_rotation(key_store: KeyStore) -> None:
    """Issue 11's tables on both backends: spend per period, the request log, rotation."""
    old_key, alice = key_store.create("alice", "elite", None)
    now = clock.now_text()
    hour = clock.hour_of(now)
    row = (now, "req_1", alice.id, "m", "m", 200, 12, 10, 0, 20, 0.25, 0, False, False)
    spend = key_store.record_usage(
        {(alice.id, "m", hour): UsageCounts(1, 1, cost=0.25)}, {alice.id: now}, [row]
    )
    spend = key_store.record_usage({(alice.id, "m", hour): UsageCounts(1, 1, cost=0.5)}, {})
    assert spend[(alice.id, "month", now[:7])] == pytest.approx(0.75)
    assert spend[(alice.id, "total", "")] == pytest.approx(0.75)
    assert key_store.current_spend() == spend
    [logged] = key_store.requests(alice.id)
    assert (logged["request_id"], logged["status"], logged["cost"]) == ("req_1", 200, 0.25)
    assert key_store.prune_requests("9999") == 1
    assert key_store.cost_between(alice.id, now[:10], "9999") == pytest.approx(0.75)
    rotated = key_store.rotate(alice.id)
    assert rotated is not None
    new_key, record = rotated
    assert key_store.find(keys.hash_key(old_key)) is None
    assert key_store.find(keys.hash_key(new_key)) == record


def test_last_used_never_moves_back(key_store: KeyStore) -> None:
    _, alice = key_store.create("alice", "elite", None)
    key_store.record_usage({}, {alice.id: "2030-01-01T00:00:00Z"})
    key_store.record_usage({}, {alice.id: "2029-01-01T00:00:00Z"})
    assert key_store.list_keys()[0]["last_used_at"] == "2030-01-01T00:00:00Z"


def test_usage_since_starts_at_the_hour(key_store: KeyStore) -> None:
    _, alice = key_store.create("alice", "elite", None)
    key_store.record_usage(
        {
            (alice.id, "m", "2020-01-01T00"): UsageCounts(5),
            (alice.id, "m", "2030-01-01T05"): UsageCounts(1),
        },
        {},
    )
    assert [r["requests"] for r in key_store.usage("2030-01-01T05:59:00Z")] == [1]
    assert [r["requests"] for r in key_store.usage()] == [6]


def test_a_failed_usage_batch_leaves_nothing_behind(key_store: KeyStore) -> None:
    _, alice = key_store.create("alice", "elite", None)
    batch = {
        (alice.id, "m", "2030-01-01T00"): UsageCounts(1),
        (alice.id, None, "2030-01-01T00"): UsageCounts(1),  # NOT NULL: the batch fails
    }
    with pytest.raises(DB_ERRORS):
        key_store.record_usage(batch, {})  # type: ignore[arg-type]
    key_store.record_usage({(alice.id, "m", "2030-01-01T00"): UsageCounts(1)}, {})
    assert [r["requests"] for r in key_store.usage()] == [1]


def test_many_threads_at_once(key_store: KeyStore) -> None:
    _, alice = key_store.create("alice", "elite", None)

    def work(i: int) -> None:
        key_store.record_usage({(alice.id, "m", "2030-01-01T00"): UsageCounts(1, 1)}, {})
        key_store.find(keys.hash_key(f"nope{i}"))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(40)))
    assert key_store.usage()[0]["requests"] == 40


def test_key_cache_serves_from_memory_until_a_key_changes(key_store: KeyStore) -> None:
    cache = key_cache_for(key_store)
    plaintext, record = key_store.create("alice", "elite", None)
    key_hash = keys.hash_key(plaintext)
    version = cache.version()
    assert version is not None
    assert cache.get(key_hash, version) is MISS
    cache.put(key_hash, record, version)
    assert cache.get(key_hash, cache.version()) == record
    key_store.set_active(record.id, False)  # by this process: visible at once
    assert cache.get(key_hash, cache.version()) is MISS


# --- PostgreSQL only ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sqlite", "postgresql"),
    [
        ("SELECT a FROM t WHERE b = ? AND c = ?", "SELECT a FROM t WHERE b = %s AND c = %s"),
        ("id INTEGER PRIMARY KEY,", "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"),
        ("n INTEGER NOT NULL", "n BIGINT NOT NULL"),
        ("cost REAL", "cost DOUBLE PRECISION"),
        ("CREATE TABLE t (a TEXT) WITHOUT ROWID", "CREATE TABLE t (a TEXT)"),
        ("BEGIN IMMEDIATE", "BEGIN"),
        ("SET x = max(coalesce(x, ''), ?)", "SET x = GREATEST(coalesce(x, ''), %s)"),
        ("SELECT max(x), min(f(a, b)) FROM t", "SELECT max(x), min(f(a, b)) FROM t"),
        ("SELECT min(a, b)", "SELECT LEAST(a, b)"),
        ("WHERE name LIKE 'a%' AND id = ?", "WHERE name LIKE 'a%%' AND id = %s"),
    ],
)
def test_dialect_rewrites(sqlite: str, postgresql: str) -> None:
    assert translate(sqlite) == postgresql


def test_a_hung_database_fails_the_health_ping_within_its_wait(pg_url: str) -> None:
    """A server that keeps its connections but never answers would hold a psycopg call
    for ever: /health's ping gives up after PING_WAIT, and so does the next one."""
    parts = urlsplit(pg_url)
    gate = TcpGate(parts.hostname or "127.0.0.1", parts.port or 5432)
    netloc = f"{parts.username + '@' if parts.username else ''}127.0.0.1:{gate.port}"
    hung = PgKeyStore(urlunsplit(parts._replace(netloc=netloc)))
    try:
        hung.open()
        hung.ping()
        gate.hang()
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError, match="did not answer"):
                hung.ping()
            assert time.monotonic() - started < PING_WAIT + 1
    finally:
        gate.stop()
        hung.pool.close(timeout=0.1)


def test_schema_version_is_kept_in_a_table(pg_store: PgKeyStore, pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM apipod_schema").fetchall() == [
            (migrations.SCHEMA_VERSION,)
        ]
        conn.execute("UPDATE apipod_schema SET version = version + 1")
    newer = PgKeyStore(pg_url)
    try:
        with pytest.raises(RuntimeError, match="newer than this code"):
            newer.open()
    finally:
        newer.close()


def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    stores = [PgKeyStore(pg_url, max_size=2) for _ in range(4)]
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda s: s.open(), stores))
        stores[0].create("alice", "elite", None)
        assert all(len(s.list_keys()) == 1 for s in stores)
    finally:
        for s in stores:
            s.close()


def test_key_changes_reach_another_process_within_a_second(pg_store: PgKeyStore) -> None:
    other = PgKeyStore(pg_store.url)
    watcher = KeyVersionWatcher(other).start()
    try:
        _, record = pg_store.create("alice", "elite", None)
        deadline = time.monotonic() + 5
        while other.key_version != pg_store.key_version and time.monotonic() < deadline:
            time.sleep(0.01)
        before = other.key_version
        assert before == pg_store.key_version
        started = time.monotonic()
        pg_store.set_active(record.id, False)
        while other.key_version == before:
            assert time.monotonic() - started < 1.0, "revocation not seen within 1 s"
            time.sleep(0.005)
        # A usage flush touches last_used_at only: not a key change, caches stay.
        version = other.key_version
        pg_store.record_usage({}, {record.id: clock.now_text()})
        time.sleep(0.7)
        assert other.key_version == version
    finally:
        watcher.stop()
        other.close()


def test_watcher_polls_when_notifications_are_missed(pg_store: PgKeyStore) -> None:
    other = PgKeyStore(pg_store.url)
    watcher = KeyVersionWatcher(other, poll=0.2).start()
    try:
        time.sleep(0.3)
        before = other.key_version
        with psycopg.connect(pg_store.url, autocommit=True) as conn:  # no NOTIFY
            conn.execute("UPDATE apipod_key_version SET version = version + 1")
        time.sleep(0.6)
        assert other.key_version == before + 1
    finally:
        watcher.stop()
        other.close()


def test_unreachable_database_raises_a_db_error_quickly() -> None:
    gone = PgKeyStore("postgresql://postgres@127.0.0.1:1/none", max_size=1)
    started = time.monotonic()
    try:
        with pytest.raises(DB_ERRORS):
            gone.find("x")
    finally:
        gone.close()
    assert time.monotonic() - started < 10


def test_describe_hides_the_password() -> None:
    url = "postgresql://app:s3cret@db.example:5433/apipod"
    assert describe(Path("x.db"), url) == "postgresql://app@db.example:5433/apipod"
    assert "s3cret" not in describe(Path("x.db"), url)


def test_migrate_to_copies_hashes_usage_and_ids(
    tmp_path: Path,
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = KeyStore(tmp_path / "proxy.db")
    alice_key, alice = source.create("alice", "basic", 3600, rpm=7)
    _, bob = source.create("bob", "elite", None)
    source.set_active(bob.id, False)
    logged = (
        "2030-01-01T00:10:00Z",
        "req_1",
        alice.id,
        "m",
        "m",
        200,
        9,
        11,
        0,
        22,
        0.5,
        0,
        False,
        True,
    )
    source.record_usage(
        {
            (alice.id, "m", "2030-01-01T00"): UsageCounts(
                3, 2, 1, 0, 11, 22, cost=0.5, estimated_reasoning_tokens=4, estimated_requests=1
            )
        },
        {alice.id: "2030-01-01T00:10:00Z"},
        [logged],
    )
    before_keys, before_usage = source.list_keys(), source.usage()
    before_requests = source.requests()
    with sqlite3.connect(tmp_path / "proxy.db") as raw:
        before_spend = sorted(raw.execute("SELECT period, start, key_id, amount FROM spend"))
    source.close()
    monkeypatch.setenv("DATABASE_PATH", str(tmp_path / "proxy.db"))
    monkeypatch.setenv("DATABASE_URL", "postgresql://ignored@127.0.0.1:1/no")  # source is SQLite
    monkeypatch.chdir(tmp_path)
    assert cli.main(["migrate-to", pg_url]) == 0
    out = capsys.readouterr().out
    assert "2 users" in out and "1 usage" in out and "3 spend" in out and "1 request_log" in out
    target = PgKeyStore(pg_url)
    try:
        assert target.list_keys() == before_keys
        assert target.usage() == before_usage
        assert target.requests() == before_requests
        with psycopg.connect(pg_url) as conn:
            spend = sorted(conn.execute("SELECT period, start, key_id, amount FROM spend"))
        assert spend == before_spend
        assert target.find(keys.hash_key(alice_key)) == alice
        with psycopg.connect(pg_url) as conn:
            stored = conn.execute("SELECT * FROM users").fetchall()
        assert alice_key not in repr(stored)
        _, carol = target.create("carol", "elite", None)  # ids go on after the copied ones
        assert carol.id == bob.id + 1
    finally:
        target.close()
    # A second run refuses: the target is no longer empty.
    with pytest.raises(SystemExit) as info:
        cli.main(["migrate-to", pg_url])
    assert info.value.code == 2
    assert "already has keys" in capsys.readouterr().err


def test_migrate_to_needs_an_existing_sqlite_file(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(FileNotFoundError):
        copy_database(tmp_path / "missing.db", PgKeyStore(pg_url))


def test_sqlite_errors_are_db_errors() -> None:
    assert issubclass(sqlite3.OperationalError, DB_ERRORS)
    assert issubclass(psycopg.OperationalError, DB_ERRORS)


def test_pool_is_safe_from_many_threads(pg_store: PgKeyStore) -> None:
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for _ in range(20):
                pg_store.find("nope")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_a_v3_postgresql_schema_upgrades_in_place(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """m004 through pgstore's rewrites: a v3 database keeps its rows, with zeros in the
    new columns, and takes reasoning and estimated counts."""
    with monkeypatch.context() as v3:
        v3.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:3])
        v3.setattr(migrations, "SCHEMA_VERSION", 3)
        old = PgKeyStore(pg_url)
        old.open()
        _, carol = old.create("carol", "elite", None)
        with psycopg.connect(pg_url) as conn:
            conn.execute(
                "INSERT INTO request_log (time, request_id, key_id, status, duration_ms)"
                " VALUES ('2026-11-30T10:00:00Z', 'req_v3', %s, 200, 5)",
                (carol.id,),
            )
        old.close()
    upgraded = PgKeyStore(pg_url)
    upgraded.open()
    try:
        (row,) = upgraded.requests()
        assert (row["request_id"], row["reasoning_tokens"], row["estimated"]) == (
            "req_v3",
            0,
            False,
        )
        hour = clock.hour_of(clock.now_text())
        upgraded.record_usage(
            {(carol.id, "m", hour): UsageCounts(1, 1, reasoning_tokens=4, estimated_requests=1)},
            {},
        )
        (usage,) = upgraded.usage()
        assert (usage["reasoning_tokens"], usage["estimated_requests"]) == (4, 1)
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT version FROM apipod_schema").fetchone() == (
                migrations.SCHEMA_VERSION,
            )
    finally:
        upgraded.close()

"""Unit tests for apipod_proxy.storage.sqlite: migrations, key rows and thread safety."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from apipod_proxy import keys
from apipod_proxy.storage import sqlite as store_module
from apipod_proxy.storage.migrations import MIGRATIONS, SCHEMA_VERSION, migrate
from apipod_proxy.storage.records import KeyRecord
from apipod_proxy.storage.sqlite import KeyStore, connect, create_key, find_key, ping


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "proxy.db"


@pytest.fixture
def conn(db_path: Path) -> Iterator[sqlite3.Connection]:
    connection = connect(db_path)
    yield connection
    connection.close()


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection that bypasses the module, to look at what is really stored."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        yield connection
    finally:
        connection.close()


def record(**overrides: object) -> KeyRecord:
    fields: dict[str, object] = {
        "id": 1,
        "name": "alice",
        "tier": "elite",
        "active": True,
        "created_at": "2024-01-01T00:00:00Z",
        "expires_at": None,
        "prefix": "apk_abcdef",
    }
    fields.update(overrides)
    return KeyRecord(**fields)  # type: ignore[arg-type]


# --- schema and migrations -----------------------------------------------------------


def test_fresh_database_gets_the_schema(conn: sqlite3.Connection, db_path: Path) -> None:
    with raw(db_path) as check:
        columns = {row[1] for row in check.execute("PRAGMA table_info(users)")}
        indexes = {row[1] for row in check.execute("PRAGMA index_list(users)")}
    assert {
        "id",
        "name",
        "key_hash",
        "key_prefix",
        "tier",
        "active",
        "created_at",
        "expires_at",
    } <= columns
    assert "key" not in columns  # no column could hold a plaintext key
    assert "users_name" in indexes


def test_key_hash_is_unique(conn: sqlite3.Connection) -> None:
    row = ("a", "same-hash", "apk_abcdef", "elite", "2024-01-01T00:00:00Z")
    insert = "INSERT INTO users (name, key_hash, key_prefix, tier, created_at) VALUES (?,?,?,?,?)"
    conn.execute(insert, row)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(insert, row)


def test_fresh_database_records_the_schema_version(conn: sqlite3.Connection, db_path: Path) -> None:
    assert SCHEMA_VERSION >= 1
    with raw(db_path) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_database_is_in_wal_mode(conn: sqlite3.Connection, db_path: Path) -> None:
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # WAL is persistent: a connection that never asked for it sees it too.
    with raw(db_path) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_connection_waits_for_locks(conn: sqlite3.Connection) -> None:
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_connection_is_in_autocommit_mode(conn: sqlite3.Connection) -> None:
    assert conn.isolation_level is None
    assert not conn.in_transaction


def test_migrate_is_idempotent(conn: sqlite3.Connection) -> None:
    create_key(conn, "alice", "elite", None)
    schema = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    assert migrate(conn) == SCHEMA_VERSION
    assert migrate(conn) == SCHEMA_VERSION
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 1
    after = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    assert after == schema
    assert not conn.in_transaction


def test_upgrade_from_the_first_schema_keeps_keys(db_path: Path) -> None:
    with raw(db_path) as old:
        MIGRATIONS[0](old)
        old.execute("PRAGMA user_version = 1")
        old.execute(
            "INSERT INTO users (name, key_hash, key_prefix, tier, created_at)"
            " VALUES ('old', ?, 'apk_oldkey', 'elite', '2024-01-01T00:00:00Z')",
            (keys.hash_key("apk_old"),),
        )
    upgraded = connect(db_path)
    try:
        assert upgraded.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        found = find_key(upgraded, keys.hash_key("apk_old"))
        assert found is not None
        assert (found.name, found.prefix, found.active) == ("old", "apk_oldkey", True)
    finally:
        upgraded.close()


def test_reconnecting_keeps_existing_keys(db_path: Path) -> None:
    first = connect(db_path)
    plaintext, created = create_key(first, "alice", "elite", None)
    first.close()
    second = connect(db_path)
    try:
        assert find_key(second, keys.hash_key(plaintext)) == created
    finally:
        second.close()


def test_refuses_a_newer_schema_version(db_path: Path) -> None:
    with raw(db_path) as setup:
        setup.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer"):
        connect(db_path)
    with raw(db_path) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        # Nothing was created: the failed migration rolled back.
        assert check.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


def test_failed_migrate_leaves_no_open_transaction(db_path: Path) -> None:
    connection = sqlite3.connect(db_path, isolation_level=None)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    with pytest.raises(RuntimeError):
        migrate(connection)
    assert not connection.in_transaction
    connection.close()


def test_creates_nested_folders_for_the_database(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "keys.db"
    KeyStore(path).ping()
    assert path.is_file()


def test_ping_fails_without_schema(db_path: Path) -> None:
    bare = sqlite3.connect(db_path)
    try:
        with pytest.raises(sqlite3.Error):
            ping(bare)
    finally:
        bare.close()


# --- keys in the database ------------------------------------------------------------


def test_create_key_returns_a_usable_plaintext_and_record(conn: sqlite3.Connection) -> None:
    plaintext, created = create_key(conn, "alice", "pro", None)
    assert keys.looks_like_key(plaintext)
    assert created.name == "alice"
    assert created.tier == "pro"
    assert created.active is True
    assert created.expires_at is None
    assert created.prefix == plaintext[:10]
    assert created.created_at.endswith("Z")


def test_create_key_stores_only_hash_and_prefix(conn: sqlite3.Connection) -> None:
    plaintext, created = create_key(conn, "alice", "elite", None)
    stored_hash, stored_prefix = conn.execute(
        "SELECT key_hash, key_prefix FROM users WHERE id = ?", (created.id,)
    ).fetchone()
    assert stored_hash == keys.hash_key(plaintext)
    assert stored_prefix == plaintext[:10]


def test_plaintext_key_appears_in_no_row(conn: sqlite3.Connection) -> None:
    plaintext, _ = create_key(conn, "alice", "elite", None)
    secret_part = plaintext[10:]
    for row in conn.execute("SELECT * FROM users"):
        for value in row:
            assert plaintext not in str(value)
            assert secret_part not in str(value)


def test_plaintext_key_appears_nowhere_in_the_database_files(
    conn: sqlite3.Connection, db_path: Path
) -> None:
    created = [create_key(conn, f"user{i}", "elite", None)[0] for i in range(5)]
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    files = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
    assert db_path in files
    data = b"".join(p.read_bytes() for p in files)
    assert keys.hash_key(created[0]).encode() in data  # the check can see what is stored
    for plaintext in created:
        assert plaintext.encode() not in data
        assert plaintext[10:].encode() not in data


def test_create_key_with_lifetime_sets_expiry(conn: sqlite3.Connection) -> None:
    _, created = create_key(conn, "alice", "elite", 3600)
    assert created.expires_at is not None
    created_at = datetime.strptime(created.created_at, "%Y-%m-%dT%H:%M:%SZ")
    expires_at = datetime.strptime(created.expires_at, "%Y-%m-%dT%H:%M:%SZ")
    assert expires_at - created_at == timedelta(seconds=3600)


def test_create_key_gives_distinct_ids_and_hashes(conn: sqlite3.Connection) -> None:
    first_key, first = create_key(conn, "alice", "elite", None)
    second_key, second = create_key(conn, "alice", "elite", None)
    assert first_key != second_key
    assert first.id != second.id


def test_find_key_returns_the_created_record(conn: sqlite3.Connection) -> None:
    plaintext, created = create_key(conn, "alice", "elite", 60)
    assert find_key(conn, keys.hash_key(plaintext)) == created


def test_find_key_unknown_hash_is_none(conn: sqlite3.Connection) -> None:
    create_key(conn, "alice", "elite", None)
    assert find_key(conn, keys.hash_key(keys.generate_key())) is None


def test_find_key_does_not_match_the_plaintext_itself(conn: sqlite3.Connection) -> None:
    plaintext, _ = create_key(conn, "alice", "elite", None)
    assert find_key(conn, plaintext) is None


def test_find_key_sees_deactivation(conn: sqlite3.Connection) -> None:
    plaintext, created = create_key(conn, "alice", "elite", None)
    conn.execute("UPDATE users SET active = 0 WHERE id = ?", (created.id,))
    found = find_key(conn, keys.hash_key(plaintext))
    assert found is not None
    assert found.active is False


def test_created_view_shows_the_key_once_with_metadata(conn: sqlite3.Connection) -> None:
    plaintext, created = create_key(conn, "alice", "pro", None)
    view = created.created_view(plaintext)
    assert view == {
        "api_key": plaintext,
        "id": created.id,
        "name": "alice",
        "tier": "pro",
        "created_at": created.created_at,
        "expires_at": None,
    }


# --- KeyRecord.is_usable ---------------------------------------------------------------

NOW = "2025-06-01T12:00:00Z"


def test_active_key_without_expiry_is_usable() -> None:
    assert record().is_usable(NOW)


def test_inactive_key_is_not_usable() -> None:
    assert not record(active=False).is_usable(NOW)


def test_expired_key_is_not_usable() -> None:
    assert not record(expires_at="2025-06-01T11:59:59Z").is_usable(NOW)


def test_key_expiring_exactly_now_is_not_usable() -> None:
    assert not record(expires_at=NOW).is_usable(NOW)


def test_key_with_future_expiry_is_usable() -> None:
    assert record(expires_at="2025-06-01T12:00:01Z").is_usable(NOW)


def test_inactive_key_with_future_expiry_is_not_usable() -> None:
    assert not record(active=False, expires_at="2099-01-01T00:00:00Z").is_usable(NOW)


# --- KeyStore and threads --------------------------------------------------------------


def test_keystore_creates_and_finds(db_path: Path) -> None:
    store = KeyStore(db_path)
    plaintext, created = store.create("alice", "elite", None)
    assert store.find(keys.hash_key(plaintext)) == created
    store.ping()


def test_keystore_reuses_one_connection_per_thread(db_path: Path) -> None:
    store = KeyStore(db_path)
    assert store.connection() is store.connection()


def test_keystore_gives_each_thread_its_own_connection(db_path: Path) -> None:
    store = KeyStore(db_path)
    main = store.connection()
    with ThreadPoolExecutor(max_workers=1) as pool:
        other = pool.submit(store.connection).result()
    assert other is not main


def test_keystore_works_from_several_threads(db_path: Path) -> None:
    store = KeyStore(db_path)
    store.ping()  # as the addon does at load, before its worker threads start
    threads, per_thread = 8, 10
    barrier = threading.Barrier(threads)

    def work(n: int) -> list[tuple[str, KeyRecord]]:
        barrier.wait()
        made = []
        for i in range(per_thread):
            plaintext, created = store.create(f"t{n}-{i}", "elite", None)
            assert store.find(keys.hash_key(plaintext)) == created
            made.append((plaintext, created))
        return made

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = [item for batch in pool.map(work, range(threads)) for item in batch]

    assert len({created.id for _, created in results}) == threads * per_thread
    for plaintext, created in results:
        assert store.find(keys.hash_key(plaintext)) == created


def test_connect_waits_for_a_writer_on_a_fresh_database(db_path: Path) -> None:
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, other.execute, ("COMMIT",))
    release.start()
    try:
        connection = connect(db_path)  # the lock lasts 0.3 s, far below BUSY_TIMEOUT_MS
        connection.close()
    finally:
        release.join()
        other.close()


def test_opening_an_up_to_date_database_does_not_wait_for_a_writer(tmp_path: Path) -> None:
    """A new worker thread's connection must not stall behind another process's write."""
    path = tmp_path / "proxy.db"
    store_module.connect(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        conn = store_module.connect(path)
        assert time.monotonic() - started < 1.0
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)
        conn.close()
    finally:
        holder.execute("COMMIT")
        holder.close()

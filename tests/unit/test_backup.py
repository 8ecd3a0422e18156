"""`keys.py backup FILE` / `keys.py restore FILE` (storage/backup.py) on SQLite and
PostgreSQL: round trips where the restored keys still authenticate, the refusals, and the
schema-version checks."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from apipod_proxy import keys
from apipod_proxy.storage import migrations
from apipod_proxy.storage.backend import open_store
from apipod_proxy.storage.records import UsageCounts
from apipod_proxy.storage.sqlite import KeyStore
from tests.support.gateway import run_cli as main
from tests.support.gateway import run_cli_exit as main_exit
from tests.support.services import fresh_database

ROOT = Path(__file__).resolve().parents[2]
BOTH_BACKENDS = True

LOGGED = ("2030-01-01T00:10:00Z", "req_1", None, "m", "m", 200, 9, 11, 0, 22, 0.5, 0, False, True)


@contextmanager
def database(backend: str, folder: Path) -> Iterator[dict[str, str]]:
    """Settings of a new, empty database on `backend`: DATABASE_PATH, and DATABASE_URL."""
    settings = {"DATABASE_PATH": str(folder / "data" / "proxy.db")}
    if backend == "sqlite":
        yield settings
        return
    with fresh_database() as url:
        yield {**settings, "DATABASE_URL": url}


def use(monkeypatch: pytest.MonkeyPatch, settings: dict[str, str]) -> KeyStore:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return open_store(Path(settings["DATABASE_PATH"]), settings.get("DATABASE_URL"))


def fill(store: KeyStore) -> dict[str, str]:
    """Two keys (one revoked), usage, spend and a logged request; the keys by name."""
    alice_key, alice = store.create("alice", "basic", 3600, rpm=7)
    bob_key, bob = store.create("bob", "elite", None)
    store.set_active(bob.id, False)
    store.record_usage(
        {(alice.id, "m", "2030-01-01T00"): UsageCounts(3, 2, 1, 0, 11, 22, cost=0.5)},
        {alice.id: "2030-01-01T00:10:00Z"},
        [(LOGGED[0], LOGGED[1], alice.id, *LOGGED[3:])],
    )
    return {"alice": alice_key, "bob": bob_key}


def contents(store: KeyStore) -> tuple[object, ...]:
    return store.list_keys(), store.usage(), store.requests(), store.current_spend()


def keys_script(
    argv: list[str], cwd: Path, settings: dict[str, str]
) -> subprocess.CompletedProcess:
    """`scripts/keys.py ARGV` as an operator runs it: from another folder, settings in env."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATABASE_PATH")}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "keys.py"), *argv],
        cwd=cwd,
        env={**env, **settings},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_round_trip_from_any_folder_keeps_keys_usage_and_ids(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with database(backend, tmp_path / "a") as first, database(backend, tmp_path / "b") as second:
        source = use(monkeypatch, first)
        plaintext = fill(source)
        before = contents(source)

        saved = keys_script(["backup", "nightly.db"], elsewhere, first)
        assert saved.returncode == 0, saved.stderr
        assert "2 users, 1 usage" in saved.stdout
        backup_file = elsewhere / "nightly.db"
        assert not Path(f"{backup_file}-wal").exists()  # one self-contained file
        assert sqlite3.connect(backup_file).execute("PRAGMA user_version").fetchone() == (
            migrations.SCHEMA_VERSION,
        )

        loaded = keys_script(["restore", str(backup_file)], tmp_path, second)
        assert loaded.returncode == 0, loaded.stderr
        restored = use(monkeypatch, second)
        assert contents(restored) == before
        alice = restored.find(keys.hash_key(plaintext["alice"]))
        assert alice is not None and alice.active and alice.rpm == 7
        bob = restored.find(keys.hash_key(plaintext["bob"]))
        assert bob is not None and not bob.active
        _, carol = restored.create("carol", "basic", None)
        assert carol.id == 3  # ids go on after the restored ones
        source.close()
        restored.close()


def test_restore_refuses_a_database_with_keys_unless_forced(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    with database(backend, tmp_path) as settings:
        store = use(monkeypatch, settings)
        plaintext = fill(store)
        backup_file = tmp_path / "backup.db"
        assert main(capsys, "backup", str(backup_file))[0] == 0
        intruder_key, _ = store.create("mallory", "elite", None)

        code, err = main_exit(capsys, "restore", str(backup_file))
        assert code == 2
        assert "already holds keys" in err and "--force" in err
        assert store.find(keys.hash_key(intruder_key)) is not None  # untouched

        code, out, _ = main(capsys, "restore", str(backup_file), "--force")
        assert code == 0 and "2 users" in out
        assert store.find(keys.hash_key(intruder_key)) is None
        assert store.find(keys.hash_key(plaintext["alice"])) is not None
        assert [k["name"] for k in store.list_keys()] == ["alice", "bob"]
        store.close()


def test_backup_will_not_overwrite_a_file_unless_forced(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    with database(backend, tmp_path) as settings:
        store = use(monkeypatch, settings)
        fill(store)
        backup_file = tmp_path / "backup.db"
        backup_file.write_text("precious")
        code, err = main_exit(capsys, "backup", str(backup_file))
        assert (code, backup_file.read_text()) == (2, "precious")
        assert "already exists" in err
        assert main(capsys, "backup", str(backup_file), "--force")[0] == 0
        assert sqlite3.connect(backup_file).execute("SELECT count(*) FROM users").fetchone() == (2,)
        assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
        store.close()


def test_restore_checks_the_backups_schema_version(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    with database(backend, tmp_path) as settings:
        store = use(monkeypatch, settings)
        newer = tmp_path / "newer.db"
        conn = sqlite3.connect(newer)
        conn.execute("CREATE TABLE users (id INTEGER)")
        conn.execute(f"PRAGMA user_version = {migrations.SCHEMA_VERSION + 1}")
        conn.close()
        code, err = main_exit(capsys, "restore", str(newer), "--force")
        assert code == 2
        assert f"schema version {migrations.SCHEMA_VERSION + 1}, newer than" in err

        junk = tmp_path / "junk.db"
        junk.write_text("not a database at all")
        code, err = main_exit(capsys, "restore", str(junk))
        assert code == 2 and "is not an apipod backup" in err

        # A backup made by an older release: migrated forward on a copy, the file unchanged.
        older = tmp_path / "older.db"
        conn = sqlite3.connect(older, isolation_level=None)
        for step in migrations.MIGRATIONS[:2]:
            step(conn)
        conn.execute("PRAGMA user_version = 2")
        conn.execute(
            "INSERT INTO users (name, key_hash, key_prefix, tier, created_at)"
            " VALUES ('old', ?, 'apk_x', 'basic', '2025-01-01T00:00:00Z')",
            (keys.hash_key("apk_old-key"),),
        )
        conn.close()
        snapshot = older.read_bytes()
        assert main(capsys, "restore", str(older))[0] == 0
        assert older.read_bytes() == snapshot
        found = store.find(keys.hash_key("apk_old-key"))
        assert found is not None and found.name == "old" and found.budget is None
        store.close()


def test_a_postgresql_backup_restores_into_sqlite(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backup file is the same portable format from either backend."""
    source = use(
        monkeypatch, {"DATABASE_PATH": str(tmp_path / "unused.db"), "DATABASE_URL": pg_url}
    )
    plaintext = fill(source)
    before = contents(source)
    assert keys_script(["backup", "pg.db"], tmp_path, {"DATABASE_URL": pg_url}).returncode == 0
    target = {"DATABASE_PATH": str(tmp_path / "fresh" / "proxy.db")}
    loaded = keys_script(["restore", "pg.db"], tmp_path, target)
    assert loaded.returncode == 0, loaded.stderr
    restored = use(monkeypatch, target)
    assert contents(restored) == before
    assert restored.find(keys.hash_key(plaintext["alice"])) is not None
    source.close()
    restored.close()

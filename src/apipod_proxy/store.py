"""The SQLite layer: schema migrations and the key queries.

One plain `sqlite3` connection per thread. WAL lets readers (every proxy process
authenticating requests) run beside a writer (the admin endpoint, the CLI), and the
busy timeout makes a briefly locked file wait instead of failing.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import keys

#: How long a statement waits for a lock held by another connection, in milliseconds.
BUSY_TIMEOUT_MS = 5000


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One customer key as stored: everything but the key itself."""

    id: int
    name: str
    tier: str
    active: bool
    created_at: str
    expires_at: str | None
    prefix: str
    rpm: int | None = None

    def created_view(self, api_key: str) -> dict[str, object]:
        """What the admin endpoint and the CLI show once, right after creation."""
        return {
            "api_key": api_key,
            "id": self.id,
            "name": self.name,
            "tier": self.tier,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }

    def is_usable(self, now: str) -> bool:
        """Active and not expired; `now` is a `keys.format_time` string."""
        return self.active and (self.expires_at is None or self.expires_at > now)


# --- migrations --------------------------------------------------------------------
# An ordered list of small functions. `PRAGMA user_version` records how many ran, so
# each is applied once; append new ones, never edit or reorder old ones.


def m001_create_users(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            key_prefix TEXT NOT NULL,
            tier TEXT NOT NULL DEFAULT 'elite',
            active INTEGER NOT NULL DEFAULT 1,
            created_at TEXT NOT NULL,
            expires_at TEXT
        )
        """
    )
    conn.execute("CREATE INDEX users_name ON users (name)")


def m002_rate_limits_and_usage(conn: sqlite3.Connection) -> None:
    # NULL rpm: the tier's default limit applies.
    conn.execute("ALTER TABLE users ADD COLUMN rpm INTEGER")
    conn.execute("ALTER TABLE users ADD COLUMN last_used_at TEXT")
    # One row per key, routed model and hour: bounded growth, and `--since` to the hour.
    conn.execute(
        """
        CREATE TABLE usage (
            key_id INTEGER NOT NULL REFERENCES users (id),
            model TEXT NOT NULL,
            hour TEXT NOT NULL,
            requests INTEGER NOT NULL DEFAULT 0,
            ok INTEGER NOT NULL DEFAULT 0,
            client_errors INTEGER NOT NULL DEFAULT 0,
            server_errors INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (key_id, model, hour)
        ) WITHOUT ROWID
        """
    )
    conn.execute("CREATE INDEX usage_hour ON usage (hour)")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    m001_create_users,
    m002_rate_limits_and_usage,
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations; safe when several processes start at once.

    An up-to-date schema is only read, so opening a connection never waits for a
    writer's lock; the write lock is taken only when there is something to migrate.
    """
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return SCHEMA_VERSION
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema version {version} is newer than this code ({SCHEMA_VERSION})"
            )
        for migration in MIGRATIONS[version:]:
            migration(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL. On a brand-new file another opener may hold the lock doing the
    same, and this pragma does not wait on the busy timeout, so retry for as long."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating the folder and schema if needed) a connection in autocommit mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    _enable_wal(conn)
    # In WAL mode NORMAL never corrupts the file; a power cut can lose the last commits.
    conn.execute("PRAGMA synchronous = NORMAL")
    migrate(conn)
    return conn


_KEY_COLUMNS = "id, name, tier, active, created_at, expires_at, key_prefix, rpm"


def _record(row: tuple) -> KeyRecord:
    id_, name, tier, active, created_at, expires_at, prefix, rpm = row
    return KeyRecord(id_, name, tier, bool(active), created_at, expires_at, prefix, rpm)


def create_key(
    conn: sqlite3.Connection,
    name: str,
    tier: str,
    expires_in: int | None,
    rpm: int | None = None,
) -> tuple[str, KeyRecord]:
    """Store a new key; return its plaintext (shown once, never stored) and record."""
    plaintext = keys.generate_key()
    now = keys.utcnow()
    cursor = conn.execute(
        "INSERT INTO users (name, key_hash, key_prefix, tier, created_at, expires_at, rpm)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING " + _KEY_COLUMNS,
        (
            name,
            keys.hash_key(plaintext),
            keys.display_prefix(plaintext),
            tier,
            keys.format_time(now),
            keys.expiry_after(expires_in, now),
            rpm,
        ),
    )
    return plaintext, _record(cursor.fetchone())


def find_key(conn: sqlite3.Connection, key_hash: str) -> KeyRecord | None:
    row = conn.execute(
        f"SELECT {_KEY_COLUMNS} FROM users WHERE key_hash = ?", (key_hash,)
    ).fetchone()
    return _record(row) if row else None


def set_active(conn: sqlite3.Connection, key_id: int, active: bool) -> bool:
    """Revoke or re-activate a key; False when no key has that id."""
    cursor = conn.execute("UPDATE users SET active = ? WHERE id = ?", (int(active), key_id))
    return cursor.rowcount == 1


#: The fields of `list_keys` and `usage_report` rows, in order: a stable contract with
#: operators' scripts (`keys.py ... --json`, GET /admin/keys and /admin/usage).
#: `errors` counts the `requests` answered 4xx or 5xx (by the upstream, or by the proxy
#: in its place: 502, 504), so `requests - errors` were answered successfully.
KEY_FIELDS = [
    "id",
    "name",
    "tier",
    "active",
    "created_at",
    "expires_at",
    "prefix",
    "rpm",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "last_used_at",
]
USAGE_FIELDS = [
    "key_id",
    "name",
    "model",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
]


def list_keys(conn: sqlite3.Connection) -> list[dict[str, object]]:
    """Every key with its usage totals, oldest first. Never a key or a hash."""
    rows = conn.execute(
        """
        SELECT u.id, u.name, u.tier, u.active, u.created_at, u.expires_at, u.key_prefix, u.rpm,
               coalesce(sum(g.requests), 0), coalesce(sum(g.client_errors + g.server_errors), 0),
               coalesce(sum(g.prompt_tokens), 0), coalesce(sum(g.completion_tokens), 0),
               u.last_used_at
        FROM users u LEFT JOIN usage g ON g.key_id = u.id
        GROUP BY u.id ORDER BY u.id
        """
    ).fetchall()
    return [{**dict(zip(KEY_FIELDS, row, strict=True)), "active": bool(row[3])} for row in rows]


def usage_report(conn: sqlite3.Connection, since: str | None = None) -> list[dict[str, object]]:
    """Requests and tokens per key and routed model, from the hour holding `since` on."""
    rows = conn.execute(
        """
        SELECT g.key_id, u.name, g.model, sum(g.requests), sum(g.client_errors + g.server_errors),
               sum(g.prompt_tokens), sum(g.completion_tokens)
        FROM usage g JOIN users u ON u.id = g.key_id
        WHERE g.hour >= ?
        GROUP BY g.key_id, g.model ORDER BY g.key_id, g.model
        """,
        (keys.hour_of(since) if since else "",),
    ).fetchall()
    return [dict(zip(USAGE_FIELDS, row, strict=True)) for row in rows]


@dataclass(slots=True)
class UsageCounts:
    """What one flush adds to one (key, model, hour) row."""

    requests: int = 0
    ok: int = 0
    client_errors: int = 0
    server_errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def record_usage(
    conn: sqlite3.Connection,
    counts: dict[tuple[int, str, str], UsageCounts],
    last_used: dict[int, str],
) -> None:
    """Add a batch of counts in one transaction: one commit per flush, not per request."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            """
            INSERT INTO usage (key_id, model, hour, requests, ok, client_errors, server_errors,
                               prompt_tokens, completion_tokens)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (key_id, model, hour) DO UPDATE SET
                requests = requests + excluded.requests,
                ok = ok + excluded.ok,
                client_errors = client_errors + excluded.client_errors,
                server_errors = server_errors + excluded.server_errors,
                prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                completion_tokens = completion_tokens + excluded.completion_tokens
            """,
            [
                (
                    key_id,
                    model,
                    hour,
                    c.requests,
                    c.ok,
                    c.client_errors,
                    c.server_errors,
                    c.prompt_tokens,
                    c.completion_tokens,
                )
                for (key_id, model, hour), c in counts.items()
            ],
        )
        conn.executemany(
            "UPDATE users SET last_used_at = max(coalesce(last_used_at, ''), ?) WHERE id = ?",
            [(moment, key_id) for key_id, moment in last_used.items()],
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def ping(conn: sqlite3.Connection) -> None:
    """Raise unless the database answers a query against the schema."""
    conn.execute("SELECT count(*) FROM users").fetchone()


class KeyStore:
    """Thread-safe access for the proxy: one connection per worker thread.

    Every call checks that the file is still the one the connection opened. A deleted
    file is reported (sqlite3.OperationalError) instead of being served from the
    vanished inode, where writes would be lost; a replaced file (a restore from
    backup) is reopened. Only creating a key, or `create_missing`, makes a new file
    with a fresh schema.
    """

    def __init__(self, path: Path, create_missing: bool = True) -> None:
        self.path = path
        self.create_missing = create_missing
        self._local = threading.local()

    def connection(self, create: bool = False) -> sqlite3.Connection:
        local = self._local
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self._close()
            if not (create or self.create_missing):
                raise sqlite3.OperationalError(f"database file {self.path} is missing") from None
        else:
            if getattr(local, "conn", None) is not None and local.inode == (
                stat.st_dev,
                stat.st_ino,
            ):
                return local.conn
            self._close()
        conn = connect(self.path)
        stat = os.stat(self.path)
        local.conn, local.inode = conn, (stat.st_dev, stat.st_ino)
        return conn

    def _close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            conn.close()

    def find(self, key_hash: str) -> KeyRecord | None:
        return find_key(self.connection(), key_hash)

    def create(
        self, name: str, tier: str, expires_in: int | None, rpm: int | None = None
    ) -> tuple[str, KeyRecord]:
        return create_key(self.connection(create=True), name, tier, expires_in, rpm)

    def set_active(self, key_id: int, active: bool) -> bool:
        return set_active(self.connection(), key_id, active)

    def list_keys(self) -> list[dict[str, object]]:
        return list_keys(self.connection())

    def usage(self, since: str | None = None) -> list[dict[str, object]]:
        return usage_report(self.connection(), since)

    def record_usage(
        self, counts: dict[tuple[int, str, str], UsageCounts], last_used: dict[int, str]
    ) -> None:
        record_usage(self.connection(), counts, last_used)

    def ping(self) -> None:
        ping(self.connection())

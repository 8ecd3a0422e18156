"""The SQLite layer: schema migrations and the key queries.

One plain `sqlite3` connection per thread. WAL lets readers (every proxy process
authenticating requests) run beside a writer (the admin endpoint, the CLI), and the
busy timeout makes a briefly locked file wait instead of failing.
"""

from __future__ import annotations

import sqlite3
import threading
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


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [m001_create_users]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations; safe when several processes start at once."""
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


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating the folder and schema if needed) a connection in autocommit mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    # In WAL mode NORMAL never corrupts the file; a power cut can lose the last commits.
    conn.execute("PRAGMA synchronous = NORMAL")
    migrate(conn)
    return conn


_KEY_COLUMNS = "id, name, tier, active, created_at, expires_at, key_prefix"


def _record(row: tuple) -> KeyRecord:
    return KeyRecord(
        id=row[0],
        name=row[1],
        tier=row[2],
        active=bool(row[3]),
        created_at=row[4],
        expires_at=row[5],
        prefix=row[6],
    )


def create_key(
    conn: sqlite3.Connection, name: str, tier: str, expires_in: int | None
) -> tuple[str, KeyRecord]:
    """Store a new key; return its plaintext (shown once, never stored) and record."""
    plaintext = keys.generate_key()
    now = keys.utcnow()
    cursor = conn.execute(
        "INSERT INTO users (name, key_hash, key_prefix, tier, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?) RETURNING " + _KEY_COLUMNS,
        (
            name,
            keys.hash_key(plaintext),
            keys.display_prefix(plaintext),
            tier,
            keys.format_time(now),
            keys.expiry_after(expires_in, now),
        ),
    )
    return plaintext, _record(cursor.fetchone())


def find_key(conn: sqlite3.Connection, key_hash: str) -> KeyRecord | None:
    row = conn.execute(
        f"SELECT {_KEY_COLUMNS} FROM users WHERE key_hash = ?", (key_hash,)
    ).fetchone()
    return _record(row) if row else None


def ping(conn: sqlite3.Connection) -> None:
    """Raise unless the database answers a query against the schema."""
    conn.execute("SELECT count(*) FROM users").fetchone()


class KeyStore:
    """Thread-safe access for the proxy: one connection per worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path)
        return conn

    def find(self, key_hash: str) -> KeyRecord | None:
        return find_key(self.connection(), key_hash)

    def create(self, name: str, tier: str, expires_in: int | None) -> tuple[str, KeyRecord]:
        return create_key(self.connection(), name, tier, expires_in)

    def ping(self) -> None:
        ping(self.connection())

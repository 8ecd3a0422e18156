"""The schema, as an ordered list of migrations: small functions registered by `@migration`.

The database records how many have run (SQLite in `PRAGMA user_version`, PostgreSQL in
the `apipod_schema` table: see postgres.migrate), so each is applied once. Append new
ones at the end; never edit, remove or reorder old ones. They are written in SQLite's
spelling, which postgres.py rewrites.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

Migration = Callable[[sqlite3.Connection], None]

#: Every migration, in the order they run.
MIGRATIONS: list[Migration] = []


def migration(function: Migration) -> Migration:
    """Register `function` as the next migration."""
    MIGRATIONS.append(function)
    return function


@migration
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


@migration
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


@migration
def m003_budgets_and_request_log(conn: sqlite3.Connection) -> None:
    # The key's own plan settings; NULL: the tier's apply. models is a JSON array.
    conn.execute("ALTER TABLE users ADD COLUMN budget REAL")
    conn.execute("ALTER TABLE users ADD COLUMN budget_period TEXT")
    conn.execute("ALTER TABLE users ADD COLUMN models TEXT")
    conn.execute("ALTER TABLE usage ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE usage ADD COLUMN cost REAL NOT NULL DEFAULT 0")
    # Spend per key and calendar period, kept for every period at once (start: the day
    # `YYYY-MM-DD`, the month `YYYY-MM`, or '' for all time), so a key's budget period
    # can change at any time. A few rows per key and day: proxies re-read today's,
    # this month's and the totals with every usage flush.
    conn.execute(
        """
        CREATE TABLE spend (
            period TEXT NOT NULL,
            start TEXT NOT NULL,
            key_id INTEGER NOT NULL REFERENCES users (id),
            amount REAL NOT NULL DEFAULT 0,
            PRIMARY KEY (period, start, key_id)
        )
        """
    )
    # One row per forwarded request: the evidence when a customer disputes a bill.
    conn.execute(
        """
        CREATE TABLE request_log (
            id INTEGER PRIMARY KEY,
            time TEXT NOT NULL,
            request_id TEXT NOT NULL,
            key_id INTEGER NOT NULL REFERENCES users (id),
            model TEXT,
            routed_model TEXT,
            status INTEGER NOT NULL,
            duration_ms INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            cached_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cost REAL NOT NULL DEFAULT 0
        )
        """
    )
    conn.execute("CREATE INDEX request_log_time ON request_log (time)")
    conn.execute("CREATE INDEX request_log_key_time ON request_log (key_id, time)")


@migration
def m004_reasoning_and_estimates(conn: sqlite3.Connection) -> None:
    # Reasoning tokens apart from the reported ones (metering.py): the upstream's own
    # figure (inside completion_tokens), or estimated from the thinking delivered (not
    # inside it). `estimated_requests` / `estimated`: requests whose prompt or completion
    # is an estimate, because their stream ended before its usage.
    for column in ("reasoning_tokens", "estimated_reasoning_tokens", "estimated_requests"):
        conn.execute(f"ALTER TABLE usage ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
    for column in ("reasoning_tokens", "reasoning_estimated", "estimated"):
        conn.execute(f"ALTER TABLE request_log ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")


#: The schema version this code writes: how many migrations there are.
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
        for step in MIGRATIONS[version:]:
            step(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION

"""`keys.py migrate-to postgresql://...`: copy a SQLite database into PostgreSQL.

Both sides are first brought to the current schema by the one migration list, so
their tables match column for column; every row of every table named in `TABLES`
that the SQLite file has is then copied in one PostgreSQL transaction (COPY). Keys
travel as they are stored, as hashes: no usable key is ever read or written. The
target must hold no keys yet, so a second run cannot mix two databases; `keys.py restore
--force` (backup.py) instead empties it in the same transaction.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .postgres import CHANNEL, PgKeyStore
from .sqlite import connect

#: What is copied, parents before children (usage and spend refer to users).
TABLES = ("users", "usage", "spend", "request_log")


class NotEmpty(ValueError):
    """The target already holds keys."""


def _table_exists(conn: sqlite3.Connection, table: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
    return row.fetchone() is not None


def copy_database(source_path: Path, target: PgKeyStore, replace: bool = False) -> dict[str, int]:
    """Copy every row; return the number of rows copied per table.

    `replace`: first delete every row of `TABLES` in the target (same transaction)."""
    if not source_path.is_file():
        raise FileNotFoundError(f"no SQLite database at {source_path}")
    source = connect(source_path)  # migrates it to the current schema first
    target.open()
    copied: dict[str, int] = {}
    try:
        with target.pool.connection() as pg, pg.transaction():
            if replace:
                pg.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
                # TRUNCATE fires no row trigger: tell the proxies' key caches ourselves.
                pg.execute("UPDATE apipod_key_version SET version = version + 1 WHERE id = 1")
                pg.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
            elif pg.execute("SELECT count(*) FROM users").fetchone()[0]:
                raise NotEmpty("the target database already has keys; migrate into an empty one")
            for table in TABLES:
                if not _table_exists(source, table):
                    continue
                cursor = source.execute(f"SELECT * FROM {table}")  # TABLES: fixed names
                columns = [d[0] for d in cursor.description]
                count = 0
                names = ", ".join(columns)
                with pg.cursor().copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                    for row in cursor:
                        copy.write_row(row)
                        count += 1
                copied[table] = count
                if "id" in columns:  # identity columns go on after the copied ids
                    pg.execute(
                        "SELECT setval(seq, (SELECT coalesce(max(id), 0) + 1 FROM "
                        + table
                        + "), false) FROM pg_get_serial_sequence(%s, 'id') AS seq"
                        " WHERE seq IS NOT NULL",
                        (table,),
                    )
    finally:
        source.close()
    return copied

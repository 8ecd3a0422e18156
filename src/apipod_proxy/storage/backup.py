"""`keys.py backup FILE` and `keys.py restore FILE`: one portable file, either backend.

A backup is always a single SQLite file (journal mode DELETE, no -wal beside it) at the
schema version of the code that made it (`PRAGMA user_version`, migrations.py):

- from SQLite, SQLite's online backup API copies a consistent snapshot page by page,
  safe while proxies read and write the database;
- from PostgreSQL, every table of `TABLES` is read in one REPEATABLE READ transaction
  (one snapshot, proxies keep writing) into a fresh SQLite file.

Restore refuses a file that is not an apipod database, or one whose schema is newer than
this code (restore it with the release that made it); an older one is migrated forward
on a temporary copy, never in place. It refuses to overwrite a database that holds keys
unless `force` is given. Into SQLite it writes through the backup API onto the target's
own connection (never by renaming files, which would orphan the target's -wal); into
PostgreSQL it reuses copy_to_postgres.py's COPY, replacing every row in one transaction.
Keys travel as they are stored, as hashes.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

from .copy_to_postgres import TABLES, NotEmpty, copy_database
from .migrations import SCHEMA_VERSION
from .sqlite import connect


class BackupError(ValueError):
    """A backup or restore the operator must fix (one line, exit 2)."""


@contextlib.contextmanager
def _scratch(beside: Path) -> Iterator[Path]:
    """A temporary file path in `beside`'s folder (so a rename stays on one filesystem)."""
    beside.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{beside.name}.", suffix=".partial", dir=beside.parent)
    os.close(fd)
    os.unlink(name)  # sqlite creates it; an empty file would be read as a database
    path = Path(name)
    try:
        yield path
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{path}{suffix}")


def _finish(conn: sqlite3.Connection) -> None:
    """Leave one self-contained file: everything checkpointed, no -wal beside it."""
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()


def count_rows(conn: sqlite3.Connection) -> dict[str, int]:
    return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES}


def backup(path: Path, url: str | None, dest: Path, force: bool = False) -> dict[str, int]:
    """Write the database (DATABASE_URL's, else the SQLite file at `path`) to `dest`."""
    if dest.exists() and not force:
        raise BackupError(f"{dest} already exists; choose a new name or add --force")
    with _scratch(dest) as scratch:
        if url:
            _from_postgres(url, scratch)
        else:
            if not path.is_file():
                raise BackupError(f"no database at {path}")
            source = connect(path)
            target = sqlite3.connect(scratch)
            try:
                source.backup(target)
            finally:
                source.close()
            _finish(target)
        check = sqlite3.connect(scratch)
        try:
            counts = count_rows(check)
        finally:
            check.close()
        os.replace(scratch, dest)
    return counts


def _from_postgres(url: str, scratch: Path) -> None:
    from psycopg import IsolationLevel

    from .postgres import PgKeyStore

    store = PgKeyStore(url, max_size=1)
    target = connect(scratch)  # the current schema, which PgKeyStore.open() gives PG too
    try:
        store.open()
        with store.pool.connection() as pg:
            pg.isolation_level = IsolationLevel.REPEATABLE_READ
            with pg.transaction():
                target.execute("BEGIN")
                for table in TABLES:
                    columns = [row[1] for row in target.execute(f"PRAGMA table_info({table})")]
                    names = ", ".join(columns)
                    marks = ", ".join("?" * len(columns))
                    rows = pg.execute(f"SELECT {names} FROM {table}")
                    target.executemany(
                        f"INSERT INTO {table} ({names}) VALUES ({marks})",
                        ([_plain(v) for v in row] for row in rows),
                    )
                target.execute("COMMIT")
    finally:
        store.close()
    _finish(target)


def _plain(value: object) -> object:
    return float(value) if isinstance(value, Decimal) else value


def backup_version(source: Path) -> int:
    """The schema version of the backup at `source`; BackupError when it is not one."""
    if not source.is_file():
        raise BackupError(f"no backup at {source}")
    try:
        conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            has_keys = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'users'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{source} is not an apipod backup ({exc})") from None
    if version == 0 or has_keys is None:
        raise BackupError(f"{source} is not an apipod backup (no schema version or keys table)")
    if version > SCHEMA_VERSION:
        raise BackupError(
            f"{source} has schema version {version}, newer than this code's "
            f"({SCHEMA_VERSION}); restore it with the release that made it"
        )
    return version


def restore(path: Path, url: str | None, source: Path, force: bool = False) -> dict[str, int]:
    """Replace the database's contents with the backup at `source`."""
    backup_version(source)
    where = f"{path}" if not url else "the PostgreSQL database"
    refusal = (
        f"{where} already holds keys; restore into an empty database, "
        "or add --force to replace everything in it"
    )
    with _scratch(path if not url else Path(tempfile.gettempdir()) / "apipod-restore") as scratch:
        # A copy, migrated forward if older: the backup file itself is never changed.
        original = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        copy = sqlite3.connect(scratch)
        try:
            original.backup(copy)
        finally:
            original.close()
            copy.close()
        staged = connect(scratch)  # migrates to SCHEMA_VERSION
        counts = count_rows(staged)
        if url:
            staged.close()
            return _into_postgres(url, scratch, force, refusal)
        try:
            target = connect(path)
            try:
                if not force and target.execute("SELECT count(*) FROM users").fetchone()[0]:
                    raise BackupError(refusal)
                staged.backup(target)
            finally:
                target.close()
        finally:
            staged.close()
    return counts


def _into_postgres(url: str, staged: Path, force: bool, refusal: str) -> dict[str, int]:
    from .postgres import PgKeyStore

    target = PgKeyStore(url, max_size=1)
    try:
        return copy_database(staged, target, replace=force)
    except NotEmpty:
        raise BackupError(refusal) from None
    finally:
        target.close()

"""Which database holds keys and usage: SQLite at DATABASE_PATH, or DATABASE_URL's PostgreSQL.

Everything outside this module and the two store modules sees a `KeyStore`, a key
cache and `DB_ERRORS`, whichever backend runs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from .keycache import KeyCache
from .sqlite import KeyStore

#: What a database failure raises, on either backend.
DB_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)


def error_text(exc: BaseException) -> str:
    """A database error on one line (libpq's messages span several)."""
    return " ".join(str(exc).split())


def open_store(path: Path, url: str | None, create_missing: bool = True) -> KeyStore:
    """The store for DATABASE_URL when set, else for the SQLite file at `path`."""
    if url:
        from .postgres import PgKeyStore

        return PgKeyStore(url)
    return KeyStore(path, create_missing=create_missing)


def key_cache_for(key_store: KeyStore) -> KeyCache:
    from .postgres import NotifiedKeyCache, PgKeyStore

    if isinstance(key_store, PgKeyStore):
        return NotifiedKeyCache(key_store)
    return KeyCache(key_store.path)


def describe(path: Path, url: str | None) -> str:
    """The database for log lines and errors, without a password."""
    if not url:
        return str(path)
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

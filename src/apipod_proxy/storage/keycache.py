"""An in-memory cache of key lookups that is never stale.

Looking a key up in SQLite on every request costs a hop to a worker thread (the
event loop must not block), which was the largest share of the proxy's own time
per request. The cache answers from memory while the database is unchanged, and a
change by anyone (the admin API, `scripts/keys.py`, another proxy process) clears it
before the next request is checked, so a revocation still takes effect at once.

"Unchanged" is SQLite's `PRAGMA data_version`, which moves whenever another
connection commits, read on a connection of the cache's own with no busy wait (in
WAL mode a reader never waits for a writer), plus the file's inode, so a deleted or
replaced file also clears it. When the version cannot be read the cache stands
aside and every lookup goes to the database, which then reports the problem.

On PostgreSQL (DATABASE_URL) the version is a counter that a trigger moves on every
key change and each process follows by LISTEN/NOTIFY (postgres.NotifiedKeyCache).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Final

from .records import KeyRecord

#: Lookups of this many distinct keys at most; past it the cache starts over, so a
#: flood of made-up keys cannot grow memory.
MAX_ENTRIES: Final = 10_000

Version = tuple[int, int, int]
MISS: Final = object()


class KeyCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._probe: sqlite3.Connection | None = None
        self._probe_inode: tuple[int, int] | None = None
        self._version: Version | None = None
        self._entries: dict[str, KeyRecord | None] = {}

    def version(self) -> Version | None:
        """The database's current version, or None when it cannot be read now."""
        try:
            stat = os.stat(self.path)
        except OSError:
            self._close()
            return None
        inode = (stat.st_dev, stat.st_ino)
        try:
            if self._probe is None or self._probe_inode != inode:
                self._close()
                self._probe = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False
                )
                self._probe.execute("PRAGMA busy_timeout = 0")
                self._probe.execute("PRAGMA schema_version")  # reads the header: is it SQLite?
                self._probe_inode = inode
            data_version = self._probe.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            self._close()
            return None
        return (*inode, data_version)

    def get(self, key_hash: str, version: Version | None) -> KeyRecord | object | None:
        """The cached lookup of `key_hash` at `version`, or MISS."""
        if version is None or version != self._version:
            self._entries.clear()
            self._version = version
            return MISS
        return self._entries.get(key_hash, MISS)

    def put(self, key_hash: str, record: KeyRecord | None, version: Version | None) -> None:
        """Remember a lookup made at `version`, unless the database moved on meanwhile."""
        if version is None or version != self._version:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key_hash] = record

    def _close(self) -> None:
        if self._probe is not None:
            self._probe.close()
        self._probe = None
        self._probe_inode = None

"""Unit tests for storage.keycache: answers from memory while the database is unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from apipod_proxy import keys
from apipod_proxy.storage import keycache
from apipod_proxy.storage.keycache import MISS, KeyCache
from apipod_proxy.storage.sqlite import KeyStore


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    store = KeyStore(tmp_path / "proxy.db")
    store.ping()
    return store


def test_a_lookup_is_served_from_memory_while_nothing_changes(store: KeyStore) -> None:
    cache = KeyCache(store.path)
    key, record = store.create("alice", "elite", None)
    version = cache.version()
    assert cache.get(keys.hash_key(key), version) is MISS
    cache.put(keys.hash_key(key), record, version)
    assert cache.version() == version
    assert cache.get(keys.hash_key(key), cache.version()) == record


def test_unknown_keys_are_remembered_too(store: KeyStore) -> None:
    cache = KeyCache(store.path)
    version = cache.version()
    cache.get("h", version)
    cache.put("h", None, version)
    assert cache.get("h", cache.version()) is None


def test_a_commit_by_another_connection_clears_the_cache(store: KeyStore) -> None:
    cache = KeyCache(store.path)
    key, record = store.create("bob", "elite", None)
    version = cache.version()
    cache.get(keys.hash_key(key), version)
    cache.put(keys.hash_key(key), record, version)
    store.set_active(record.id, False)  # a revocation, from another connection
    assert cache.version() != version
    assert cache.get(keys.hash_key(key), cache.version()) is MISS


def test_a_lookup_that_raced_a_change_is_not_remembered(store: KeyStore) -> None:
    cache = KeyCache(store.path)
    key, record = store.create("carol", "elite", None)
    before = cache.version()
    cache.get(keys.hash_key(key), before)
    store.set_active(record.id, False)  # lands while the lookup is in flight
    cache.get("other", cache.version())  # the next request sees the new version
    cache.put(keys.hash_key(key), record, before)
    assert cache.get(keys.hash_key(key), cache.version()) is MISS


def test_a_deleted_or_replaced_file_has_no_version(store: KeyStore, tmp_path: Path) -> None:
    cache = KeyCache(store.path)
    first = cache.version()
    assert first is not None
    for suffix in ("", "-wal", "-shm"):  # a WAL left beside a new file would be read with it
        os.unlink(f"{store.path}{suffix}")
    assert cache.version() is None
    replacement = tmp_path / "garbage"
    replacement.write_bytes(b"not a database" * 100)
    os.replace(replacement, store.path)
    assert cache.version() is None


def test_no_version_means_no_caching(store: KeyStore) -> None:
    cache = KeyCache(store.path)
    cache.get("h", None)
    cache.put("h", None, None)
    assert cache.get("h", None) is MISS


def test_the_cache_is_bounded(store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keycache, "MAX_ENTRIES", 3)
    cache = KeyCache(store.path)
    version = cache.version()
    cache.get("x", version)
    for name in ("a", "b", "c", "d"):
        cache.put(name, None, version)
    assert cache.get("a", version) is MISS
    assert cache.get("d", version) is None

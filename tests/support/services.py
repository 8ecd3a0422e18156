"""PostgreSQL and Redis for tests: a fresh database and a fresh key prefix per test.

The services are the machine's own (CI and developers' machines run PostgreSQL on
127.0.0.1:5432 with trust authentication, and Redis on 127.0.0.1:6379);
TEST_DATABASE_URL and TEST_REDIS_URL point elsewhere. Each test gets its own
PostgreSQL schema (via the URL's search_path) and its own Redis key prefix, so
tests can run in any order and never see each other's rows or counters.

When a service cannot be reached its tests are skipped, all under one summary line
that says how to run them; with CI=true a missing service fails the run instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
#: Schemas this suite makes are named so, and dropped after their test.
DATABASE_PREFIX = "apipod_test_"

HOW_TO_RUN = {
    "PostgreSQL": (
        "start it (pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) "
        "or set TEST_DATABASE_URL; `bash .ci/run` does both"
    ),
    "Redis": (
        "start it (redis-server --daemonize yes --port 6379 --save '') "
        "or set TEST_REDIS_URL; `bash .ci/run` does both"
    ),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


_reachable: dict[str, str | None] = {}


def _check(service: str) -> str | None:
    """None when `service` answers, else why not (asked once per session)."""
    if service not in _reachable:
        try:
            if service == "PostgreSQL":
                import psycopg

                with psycopg.connect(ADMIN_URL, connect_timeout=3) as conn:
                    conn.execute("SELECT 1")
            else:
                import redis

                redis.Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3).ping()
            _reachable[service] = None
        except Exception as exc:
            _reachable[service] = f"{type(exc).__name__}: {str(exc).strip()[:120]}"
    return _reachable[service]


def require(service: str) -> None:
    """Skip the calling test (fail it under CI=true) unless `service` answers."""
    problem = _check(service)
    if problem is None:
        return
    address = ADMIN_URL if service == "PostgreSQL" else REDIS_URL
    message = f"{service} at {address} {UNREACHABLE}; to run its tests, {HOW_TO_RUN[service]}"
    if in_ci():
        pytest.fail(f"CI=true: {message} ({problem})", pytrace=False)
    # conftest points every such skip here, so pytest -ra folds them into one line.
    pytest.skip(message)


#: The line of the skip above, and the words conftest recognises such skips by.
SKIP_LINE = require.__code__.co_firstlineno
UNREACHABLE = "is unreachable"


def schema_url(schema: str) -> str:
    """ADMIN_URL with every connection's search_path set to `schema`."""
    parts = urlsplit(ADMIN_URL)
    option = quote(f"-c search_path={schema}")
    query = "&".join(filter(None, [parts.query, f"options={option}"]))
    return urlunsplit(parts._replace(query=query))


@contextmanager
def fresh_database() -> Iterator[str]:
    """A DATABASE_URL whose tables live in a new, empty schema of this test's own.

    A schema, not a database: CREATE DATABASE takes about a second on a busy machine,
    CREATE SCHEMA a few milliseconds, and the proxy never names a schema itself.
    """
    require("PostgreSQL")
    import psycopg

    name = DATABASE_PREFIX + secrets.token_hex(6)
    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield schema_url(name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@dataclass(frozen=True)
class RedisSpace:
    """A Redis server and the key prefix one test owns there."""

    url: str
    prefix: str

    def client(self):  # -> redis.Redis (sync), for looking at what the code stored
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=3, decode_responses=True)

    def keys(self) -> list[str]:
        return sorted(self.client().scan_iter(match=self.prefix + "*"))

    def clear(self) -> None:
        client = self.client()
        for key in client.scan_iter(match=self.prefix + "*"):
            client.delete(key)


@contextmanager
def fresh_redis_space() -> Iterator[RedisSpace]:
    require("Redis")
    space = RedisSpace(REDIS_URL, f"apipod-test:{secrets.token_hex(6)}:")
    try:
        yield space
    finally:
        space.clear()

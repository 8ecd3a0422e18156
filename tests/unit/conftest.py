"""Fixtures of the unit tests; the harness itself is in gateway.py."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from apipod_proxy.storage.backend import open_store
from apipod_proxy.storage.sqlite import KeyStore
from tests.support.gateway import Gateway, LogRecords, captured_log, isolated_globals, open_gateway


@pytest.fixture
def apipod_log() -> Iterator[LogRecords]:
    """What the 'apipod' logger emits during the test."""
    with captured_log() as records:
        yield records


@pytest.fixture
def restore_globals() -> Iterator[None]:
    with isolated_globals():
        yield


@pytest.fixture
def store(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Iterator[KeyStore]:
    """The key store at gateway.make_settings' database path, on the test's backend
    (PostgreSQL in a schema of its own in modules that run on both)."""
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    opened = open_store(tmp_path / "data" / "proxy.db", url)
    yield opened
    opened.close()


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Loaded gateways with settings overrides; all are unloaded after the test."""
    with contextlib.ExitStack() as stack:

        def factory(**overrides: Any) -> Gateway:
            return stack.enter_context(open_gateway(tmp_path, **overrides))

        yield factory


@pytest.fixture
def gateway(make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway()

"""Unit tests for apipod_proxy.endpoints: the one table of the proxy's own paths, where
each row runs, its method and access checks, the guard, and its agreement with the
forwarding table. The handlers themselves are tested in test_admin.py, test_account.py,
test_dashboard.py and test_pages.py."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import inspect
import logging
import re
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from apipod_proxy.endpoints import (
    ENDPOINTS,
    ROWS,
    Access,
    Endpoint,
    Endpoints,
    EndpointTable,
    OtherMethods,
    Runs,
    account,
    readme_table,
)
from apipod_proxy.metrics import Metrics
from apipod_proxy.policy.forwarding import BUILT_IN, FORWARDED, Forwarding, Refusal, refusal
from apipod_proxy.policy.routing import Router, RoutesError
from apipod_proxy.storage.records import KeyRecord
from apipod_proxy.storage.sqlite import KeyStore
from tests.support.endpoints import Caller, answer
from tests.support.gateway import ADMIN_SECRET, LogRecords, make_settings

SECRET_HEADER = [(b"x-admin-secret", ADMIN_SECRET.encode())]
ROW_IDS = [f"{'*' if row.prefix else ''}{row.path}" for row in ROWS]


class StubModels:
    """The upstream's model list without an upstream: the proxy's names only."""

    async def listing(self, own_names: list[str]) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name} for name in own_names]}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KeyStore]:
    opened = KeyStore(tmp_path / "data" / "proxy.db")
    opened.open()
    yield opened
    opened.close()


@pytest.fixture
def record(store: KeyStore) -> KeyRecord:
    return store.create("alice", "trial", None)[1]


def endpoints(tmp_path: Path, store: KeyStore, **fields: Any) -> Endpoints:
    return Endpoints(
        make_settings(tmp_path),
        store,
        Metrics(),
        router=Router(),
        models=StubModels(),  # type: ignore[arg-type]
        **fields,
    )


def request_for(row: Endpoint, method: str | None = None) -> http.Request:
    """A request the row takes: its first method, the operator's secret on every row."""
    return tutils.treq(
        method=(method or row.methods[0]).encode(),
        path=row.path.encode(),
        headers=http.Headers(SECRET_HEADER),
        content=b"",
    )


def with_handler(row: Endpoint, make: Any) -> EndpointTable:
    """ENDPOINTS with `row`'s handler replaced by `make(row.handler)` (async on the loop)."""
    return EndpointTable(
        dataclasses.replace(r, handler=make(r)) if r is row else r for r in ENDPOINTS.rows
    )


# --- the table -------------------------------------------------------------------------


def test_every_row_reaches_its_handler_on_the_threads_it_names(
    tmp_path: Path, store: KeyStore, record: KeyRecord
) -> None:
    seen: dict[str, str] = {}

    def spied(row: Endpoint) -> Any:
        def note() -> None:
            seen[row.path] = threading.current_thread().name

        if inspect.iscoroutinefunction(row.handler):

            async def on_loop(*args: Any) -> http.Response:
                note()
                return await row.handler(*args)

            return on_loop

        def on_thread(*args: Any) -> http.Response:
            note()
            return row.handler(*args)

        return on_thread

    table = EndpointTable(dataclasses.replace(row, handler=spied(row)) for row in ROWS)
    with (
        ThreadPoolExecutor(1, thread_name_prefix="test-db") as pool,
        ThreadPoolExecutor(1, thread_name_prefix="test-health") as health_pool,
    ):
        api = endpoints(tmp_path, store, pool=pool, health_pool=health_pool, table=table)

        async def every_row() -> dict[str, int]:
            statuses = {}
            for row in table.rows:
                response = await api.answer(request_for(row), Caller("", record))
                assert response is not None
                statuses[row.path] = response.status_code
            return statuses

        statuses = asyncio.run(every_row())
    # Each handler answered itself (create-key's empty body is its own 400, not a 5xx).
    assert all(status < 500 for status in statuses.values()), statuses
    threads = {Runs.LOOP: "MainThread", Runs.DATABASE: "test-db", Runs.HEALTH: "test-health"}
    for row in ROWS:
        assert seen[row.path].startswith(threads[row.runs]), row.path


def test_the_table_holds_every_path_the_proxy_answered_itself() -> None:
    """The paths of admin.ROUTES, the pages, account.PATHS and MODELS_PATH before."""
    exact = {row.path for row in ROWS if not row.prefix}
    assert exact == {
        "/health",
        "/metrics",
        "/admin/create-key",
        "/admin/keys",
        "/admin/revoke-key",
        "/admin/activate-key",
        "/admin/usage",
        "/admin/update-key",
        "/admin/rotate-key",
        "/admin/requests",
        "/admin/stats",
        "/admin/routes",
        "/admin/usage/series",
        "/admin",
        "/portal",
        "/account",
        "/v1/dashboard/billing/subscription",
        "/dashboard/billing/subscription",
        "/v1/dashboard/billing/usage",
        "/dashboard/billing/usage",
        "/v1/models",
    }
    assert {row.path for row in ROWS if row.prefix} == {"/admin/", "/portal/"}


def test_who_may_call_each_kind_of_row() -> None:
    for row in ROWS:
        if (row.path.startswith("/admin/") and not row.prefix) or row.path == "/metrics":
            assert row.access is Access.OPERATOR, row.path
        elif row.handler.__module__ == account.__name__ or row.path == "/v1/models":
            assert row.access is Access.CUSTOMER, row.path
        else:
            assert row.access is Access.ANYONE, row.path


@pytest.mark.parametrize(
    ("path", "found"),
    [
        ("/admin/keys", "/admin/keys"),
        ("/admin/usage/series", "/admin/usage/series"),
        ("/admin/", "/admin/"),
        ("/admin/admin.js", "/admin/"),
        ("/admin/keys/", "/admin/"),
        ("/admin", "/admin"),
        ("/portal/x/y", "/portal/"),
        ("/administrator", None),
        ("/v1/admin/", None),
        ("/healthz", None),
        ("/health/", None),
        ("/v1/account", None),
        ("/v1/chat/completions", None),
    ],
)
def test_an_exact_row_comes_before_a_prefix_row(path: str, found: str | None) -> None:
    row = ENDPOINTS.find(path)
    assert (row.path if row is not None else None) == found


def test_before_auth_is_every_row_but_the_customers() -> None:
    for row in ROWS:
        assert ENDPOINTS.before_auth(row.path) is (row.access is not Access.CUSTOMER)
    assert ENDPOINTS.before_auth("/admin/anything/at/all")
    assert not ENDPOINTS.before_auth("/v1/models")
    assert not ENDPOINTS.before_auth("/v1/chat/completions")


def test_a_row_off_the_loop_may_not_be_async_nor_one_on_it_sync() -> None:
    async def async_handler(*args: Any) -> http.Response:
        raise AssertionError

    def sync_handler(*args: Any) -> http.Response:
        raise AssertionError

    access = Access.ANYONE
    with pytest.raises(ValueError, match="async handler"):
        EndpointTable([Endpoint("/x", ("GET",), access, Runs.DATABASE, async_handler, "")])
    with pytest.raises(ValueError, match="async handler"):
        EndpointTable([Endpoint("/x", ("GET",), access, Runs.LOOP, sync_handler, "")])
    with pytest.raises(ValueError, match="share a path"):
        row = Endpoint("/x", ("GET",), access, Runs.DATABASE, sync_handler, "")
        EndpointTable([row, row])


# --- methods and access ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("POST", "/health", 405, "GET"),
        ("HEAD", "/health", 405, "GET"),
        ("GET", "/admin/create-key", 405, "POST"),
        ("PUT", "/account", 405, "GET"),
        ("POST", "/v1/dashboard/billing/usage", 405, "GET"),
        ("POST", "/admin/", 404, None),
        ("DELETE", "/portal", 404, None),
        ("POST", "/admin/no-such-endpoint", 404, None),
    ],
)
def test_another_method_is_refused_by_the_row(
    tmp_path: Path,
    store: KeyStore,
    record: KeyRecord,
    method: str,
    path: str,
    status: int,
    allow: str | None,
) -> None:
    request = tutils.treq(method=method.encode(), path=path.encode(), content=b"")
    response = answer(endpoints(tmp_path, store), request, user=record)
    assert response.status_code == status
    assert response.headers.get("allow") == allow


def test_post_v1_models_is_not_the_proxys_own(tmp_path: Path, store: KeyStore) -> None:
    request = tutils.treq(method=b"POST", path=b"/v1/models", content=b"{}")
    assert asyncio.run(endpoints(tmp_path, store).answer(request, Caller())) is None
    assert not ENDPOINTS.owns("POST", "/v1/models")
    assert ENDPOINTS.owns("GET", "/v1/models")


@pytest.mark.parametrize(
    "row", [r for r in ROWS if r.access is Access.OPERATOR], ids=lambda row: row.path
)
def test_every_operator_row_needs_the_secret(
    tmp_path: Path, store: KeyStore, row: Endpoint
) -> None:
    request = tutils.treq(method=row.methods[0].encode(), path=row.path.encode(), content=b"")
    response = answer(endpoints(tmp_path, store), request)
    assert response.status_code == 401


@pytest.mark.parametrize(
    "row", [r for r in ROWS if r.access is Access.CUSTOMER], ids=lambda row: row.path
)
def test_a_customer_row_without_a_key_record_is_a_bug_never_an_answer(
    tmp_path: Path, store: KeyStore, row: Endpoint
) -> None:
    """The key check runs before a customer's rows; reaching one without its record
    answers 500 rather than anything about some key."""
    response = answer(endpoints(tmp_path, store), request_for(row))
    assert response.status_code == 500


def test_only_answers_before_the_key_check_are_left_out_of_the_traffic(
    tmp_path: Path, store: KeyStore, record: KeyRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = endpoints(tmp_path, store)
    counted: list[int] = []
    monkeypatch.setattr(api.live, "count_internal", counted.append)
    for row in ROWS:
        answer(api, request_for(row), user=record)
    assert len(counted) == sum(row.access is not Access.CUSTOMER for row in ROWS)


# --- the guard -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [sqlite3.OperationalError("disk I/O error"), psycopg.OperationalError("server closed")],
    ids=["sqlite", "postgresql"],
)
@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_the_guard_answers_a_database_error_503(
    tmp_path: Path,
    store: KeyStore,
    record: KeyRecord,
    apipod_log: LogRecords,
    row: Endpoint,
    error: Exception,
) -> None:
    api = endpoints(tmp_path, store, table=with_handler(row, lambda r: raising(r, error)))
    response = answer(api, request_for(row), user=record)
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert b'"code":"database_unavailable"' in response.content.replace(b" ", b"")
    assert b"The key database is unavailable" in response.content
    (line,) = apipod_log.at(logging.ERROR)
    assert line.startswith(f"database error on {row.path}: ")


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_the_guard_answers_a_bug_500_and_logs_its_traceback(
    tmp_path: Path, store: KeyStore, record: KeyRecord, apipod_log: LogRecords, row: Endpoint
) -> None:
    bug = RuntimeError("a bug")
    api = endpoints(tmp_path, store, table=with_handler(row, lambda r: raising(r, bug)))
    response = answer(api, request_for(row), user=record)
    assert response.status_code == 500
    assert b'"code":"internal_error"' in response.content.replace(b" ", b"")
    assert b"Internal proxy error" in response.content
    (logged,) = [r for r in apipod_log.records if r.levelno == logging.ERROR]
    assert logged.getMessage() == f"internal error on {row.path}"
    assert logged.exc_info is not None and logged.exc_info[1] is bug


def test_the_guard_logs_a_path_printable_and_without_its_query(
    tmp_path: Path, store: KeyStore, apipod_log: LogRecords
) -> None:
    row = ENDPOINTS.find("/admin/")
    assert row is not None
    bug = RuntimeError("a bug")
    api = endpoints(tmp_path, store, table=with_handler(row, lambda r: raising(r, bug)))
    request = tutils.treq(method=b"GET", path=b"/admin/\x1b[31mx?key=apk_secret", content=b"")
    assert answer(api, request).status_code == 500
    (line,) = apipod_log.at(logging.ERROR)
    assert "\x1b" not in line and "apk_secret" not in line and "?" not in line


def raising(row: Endpoint, exc: Exception) -> Any:
    """A handler of `row`'s kind (async on the loop) that raises `exc`."""
    if row.runs is Runs.LOOP:

        async def on_loop(*args: Any) -> http.Response:
            raise exc

        return on_loop

    def on_thread(*args: Any) -> http.Response:
        raise exc

    return on_thread


# --- agreement with the forwarding table -------------------------------------------------


def test_no_row_is_forwarded_and_no_forwarded_path_is_a_row() -> None:
    assert not {route.path for route in FORWARDED} & {row.path for row in ROWS}
    for route in FORWARDED:
        for method in route.methods:
            assert not ENDPOINTS.owns(method, route.path)


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_owns_agrees_with_forwarding(row: Endpoint) -> None:
    """What the table owns passes the forwarding check to be answered, a `[forward]` row
    may not take its path, and another method goes to the forwarding table only where
    the row says so."""
    path = row.path + "x" if row.prefix else row.path
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        owned = ENDPOINTS.owns(method, path)
        assert owned is (method in row.methods or row.other_methods is not OtherMethods.FORWARDED)
        found = refusal(method, path, BUILT_IN, owned)
        if owned:
            assert found is None
        else:  # no forwarded route: the forwarding table's 404
            assert isinstance(found, Refusal) and found.status == 404
    with pytest.raises(RoutesError, match="already served"):
        Forwarding(ENDPOINTS).prepare({"forward": {path: ["POST"]}})


@pytest.mark.parametrize(
    "path", ["/v1/embeddings", "/healthz", "/administrator", "/v1/admin/x", "/portal.js"]
)
def test_a_path_outside_the_table_may_be_forwarded(path: str) -> None:
    assert not any(ENDPOINTS.owns(method, path) for method in ("GET", "POST"))
    assert path in Forwarding(ENDPOINTS).prepare({"forward": {path: ["POST"]}})


# --- the README ------------------------------------------------------------------------


def test_the_readme_table_has_a_line_per_row() -> None:
    lines = readme_table().splitlines()
    assert len(lines) == 2 + len(ROWS)
    assert all(
        re.fullmatch(r"\| `/[^`]*` \| [A-Z, ]+ \| .+ \| .+ \| .+ \|", line) for line in lines[2:]
    )


# --- what the folder's modules import ----------------------------------------------------

FOLDER = Path(account.__file__).parent
#: The modules of endpoints/ each module may import (TYPE_CHECKING imports included).
MAY_IMPORT = {
    "__init__": {"account", "admin", "dashboard", "model_list", "pages", "access", "context"},
    "context": {"access", "live"},
    "access": set(),
    "live": set(),
}
NEVER = {"addon", "lifecycle", "flowstate", "connections"}


def imports_of(module: str) -> tuple[set[str], set[str]]:
    """The folder's modules `module` imports, and the package's top-level ones."""
    tree = ast.parse((FOLDER / f"{module}.py").read_text())
    here, package = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                here.add(node.module.split(".")[0])
            else:
                here |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 2 and node.module:
            package.add(node.module.split(".")[0])
    return here, package


@pytest.mark.parametrize("module", sorted(p.stem for p in FOLDER.glob("*.py")))
def test_the_folders_import_rules(module: str) -> None:
    """Handlers import only `context` of the folder; no import circle, TYPE_CHECKING too."""
    here, package = imports_of(module)
    assert here <= MAY_IMPORT.get(module, {"context"})
    assert not package & NEVER

"""endpoints/: every path the proxy answers itself, in one table, behind one guard.

`ENDPOINTS` is the table: a row per path (or path prefix) with its methods, who may
call it, where its handler runs and the handler. `Endpoints`, built once at load with
what the handlers need (`Context`), answers a request by its row. The request path
meets the table three times:

1. `owns(method, path)`, before anything else: a request the proxy answers itself is
   never forwarded, and a `[forward]` row may not take its path (policy/forwarding.py
   reads the table as its list of own paths).
2. `before_auth(path)`: the operator's and everyone's paths are answered without a
   customer key; a customer's paths come after the key check (credentials.py).
3. `answer(request, caller)`: the row's method and access checks, then its handler,
   where the row says, under the guard (`guarded`): a database error answers 503
   `database_unavailable`, any other exception is logged and answers 500
   `internal_error`. An exception never reaches the hook: mitmproxy would forward the
   request with the client's credentials still on it.

The folder (the table, `Endpoints` and the guard are this file):

    context.py     `Context`, what the handlers read, and `Caller`, who is calling
    access.py      the operator's check: ADMIN_SECRET and its throttle
    live.py        the live rates behind /admin/stats
    admin.py       the operator's API (/admin/*), /health, /metrics
    dashboard.py   the dashboard's JSON: /admin/stats, /admin/routes, /admin/usage/series
    pages.py       the dashboard and portal pages (static/)
    account.py     what a customer sees with their key: /account, the billing paths
    model_list.py  GET /v1/models for the calling key
    static/        the pages' HTML, CSS and JavaScript, served as they are (no build step)

May import: base modules, clientapi, flowstate, policy/, storage/, translate/, upstream/,
mitmproxy.

Never the addon, lifecycle, the Gateway or pipeline/: each handler gets a `Context`
(a `FlowState` is a `Caller` by its shape). Handler modules import `context.py` and
nothing else of the folder; only this file imports them all.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass

from mitmproxy import http

from ..errors import error_response
from ..logs import printable
from ..storage.backend import DB_ERRORS, error_text
from . import account, admin, dashboard, model_list, pages
from .access import operator_refusal
from .context import Caller, Context

log = logging.getLogger("apipod")

#: A row's handler: sync on the threads, a coroutine function on the event loop.
Handler = Callable[[Context, http.Request, Caller], http.Response | Awaitable[http.Response]]


class Access(enum.Enum):
    """Who may call a row."""

    #: The operator: ADMIN_SECRET as `x-admin-secret` or `Authorization: Bearer`.
    OPERATOR = "operator (`ADMIN_SECRET`)"
    #: A customer: an `apk_` key, checked by the request path before the row runs.
    CUSTOMER = "customer key"
    #: Anyone: no credential (the pages sign in themselves, in the browser).
    ANYONE = "anyone"


class Runs(enum.Enum):
    """Where a row's handler runs."""

    #: On the event loop: async work only (the model list's fetch is bounded there).
    LOOP = "event loop"
    #: On the database threads: blocking database (or file) work.
    DATABASE = "database threads"
    #: On /health's own thread: a load balancer's check must not queue behind database
    #: work that hangs the database threads (its ping is bounded, postgres.PING_WAIT).
    HEALTH = "its own thread"


class OtherMethods(enum.Enum):
    """What a method the row does not take gets."""

    #: 405 `method_not_allowed`, with `Allow`.
    REFUSED = "405"
    #: 404 `not_found`, as an unknown path under `/admin/` (the pages).
    UNKNOWN = "404"
    #: Not the proxy's: the forwarding table decides (policy/forwarding.py).
    FORWARDED = "forwarding table"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One row of the table."""

    path: str
    methods: tuple[str, ...]
    access: Access
    runs: Runs
    handler: Handler
    #: What it answers, as the README's table shows it.
    summary: str
    #: `path` is a prefix: the row takes every path under it that no other row takes.
    prefix: bool = False
    other_methods: OtherMethods = OtherMethods.REFUSED

    @property
    def before_auth(self) -> bool:
        """Answered without a customer key; its answers are not traffic (live.py)."""
        return self.access is not Access.CUSTOMER


GET, POST, PAGE = ("GET",), ("POST",), ("GET", "HEAD")
OPERATOR, CUSTOMER, ANYONE = Access.OPERATOR, Access.CUSTOMER, Access.ANYONE
LOOP, DATABASE, HEALTH = Runs.LOOP, Runs.DATABASE, Runs.HEALTH
_SUBSCRIPTION = "The key's budget as billing limits (what one-api and new-api read)"
_USAGE = "The key's spend from `start_date` to `end_date` (excluded), in cents"

#: Every path the proxy answers itself.
ROWS: tuple[Endpoint, ...] = (
    Endpoint(
        "/health",
        GET,
        ANYONE,
        HEALTH,
        admin.health,
        "The database's state, the upstream's API, models in cooldown and unlisted "
        "targets; 503 when keys cannot be checked",
    ),
    Endpoint("/metrics", GET, OPERATOR, DATABASE, admin.metrics_page, "Prometheus metrics"),
    Endpoint("/admin/create-key", POST, OPERATOR, DATABASE, admin.create_key, "Create a key"),
    Endpoint(
        "/admin/keys", GET, OPERATOR, DATABASE, admin.list_keys, "Every key, its plan and spend"
    ),
    Endpoint(
        "/admin/update-key",
        POST,
        OPERATOR,
        DATABASE,
        admin.update_key,
        "Change a key's name, tier, rpm, expiry or plan",
    ),
    Endpoint("/admin/rotate-key", POST, OPERATOR, DATABASE, admin.rotate_key, "A key's new secret"),
    Endpoint("/admin/revoke-key", POST, OPERATOR, DATABASE, admin.revoke_key, "Revoke a key"),
    Endpoint("/admin/activate-key", POST, OPERATOR, DATABASE, admin.activate_key, "Activate a key"),
    Endpoint(
        "/admin/usage", GET, OPERATOR, DATABASE, admin.usage, "Usage per key and routed model"
    ),
    Endpoint("/admin/requests", GET, OPERATOR, DATABASE, admin.requests, "The request log"),
    Endpoint(
        "/admin/stats",
        GET,
        OPERATOR,
        DATABASE,
        dashboard.stats,
        "Live rates of this process, models in cooldown",
    ),
    Endpoint(
        "/admin/routes",
        GET,
        OPERATOR,
        DATABASE,
        dashboard.routes,
        "The routing table, prices and tiers in force",
    ),
    Endpoint(
        "/admin/usage/series",
        GET,
        OPERATOR,
        DATABASE,
        dashboard.series,
        "Usage by hour or day and routed model, the top keys",
    ),
    *(
        Endpoint(
            base,
            PAGE,
            ANYONE,
            DATABASE,
            pages.answer,
            f"Redirects to `{base}/`",
            other_methods=OtherMethods.UNKNOWN,
        )
        for base in ("/admin", "/portal")
    ),
    Endpoint(
        "/admin/",
        PAGE,
        ANYONE,
        DATABASE,
        pages.answer,
        "The operator dashboard's files (it signs in with `ADMIN_SECRET`)",
        prefix=True,
        other_methods=OtherMethods.UNKNOWN,
    ),
    Endpoint(
        "/portal/",
        PAGE,
        ANYONE,
        DATABASE,
        pages.answer,
        "The customer portal's files (it signs in with a key)",
        prefix=True,
        other_methods=OtherMethods.UNKNOWN,
    ),
    Endpoint(
        "/v1/models",
        GET,
        CUSTOMER,
        LOOP,
        model_list.answer,
        "The upstream's models and the routing table's names, those the key may use",
        other_methods=OtherMethods.FORWARDED,
    ),
    Endpoint(
        "/account",
        GET,
        CUSTOMER,
        DATABASE,
        account.account,
        "The key's plan, spend, reset and 30 days of usage",
    ),
    *(
        Endpoint(path, GET, CUSTOMER, DATABASE, account.subscription, _SUBSCRIPTION)
        for path in ("/v1/dashboard/billing/subscription", "/dashboard/billing/subscription")
    ),
    *(
        Endpoint(path, GET, CUSTOMER, DATABASE, account.usage, _USAGE)
        for path in ("/v1/dashboard/billing/usage", "/dashboard/billing/usage")
    ),
)


class EndpointTable:
    """The rows, looked up by path: an exact row first, then the longest prefix row.

    A `Container` of paths too (`path in table`): the paths a `[forward]` row may not
    take, whatever its methods (policy/forwarding.py).
    """

    def __init__(self, rows: Iterable[Endpoint]) -> None:
        self.rows = tuple(rows)
        if len({row.path for row in self.rows}) != len(self.rows):
            raise ValueError("two rows of the endpoint table share a path")
        for row in self.rows:
            if inspect.iscoroutinefunction(row.handler) != (row.runs is Runs.LOOP):
                raise ValueError(f"{row.path}: only a row on the event loop has an async handler")
        self._exact = {row.path: row for row in self.rows if not row.prefix}
        prefixes = sorted((row for row in self.rows if row.prefix), key=lambda r: -len(r.path))
        self._prefix_rows = tuple(prefixes)
        self._prefixes = tuple(row.path for row in prefixes)

    def find(self, path: str) -> Endpoint | None:
        """The row for `path` (the target without its query), whatever the method."""
        row = self._exact.get(path)
        if row is None and path.startswith(self._prefixes):
            row = next(r for r in self._prefix_rows if path.startswith(r.path))
        return row

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self.find(path) is not None

    def owns(self, method: str, path: str) -> bool:
        """Whether the proxy answers `method` on `path` itself (never forwarded)."""
        row = self.find(path)
        if row is None:
            return False
        return row.other_methods is not OtherMethods.FORWARDED or method in row.methods

    def before_auth(self, path: str) -> bool:
        """Whether `path` is answered without a customer key (health, metrics, admin,
        the pages): then the key check is skipped."""
        row = self.find(path)
        return row is not None and row.before_auth


ENDPOINTS = EndpointTable(ROWS)


async def guarded(path: str, work: Awaitable[http.Response]) -> http.Response:
    """The guard every row runs under: `work`'s answer, or the answer to its exception."""
    try:
        return await work
    except DB_ERRORS as exc:
        log.error("database error on %s: %s", printable(path), error_text(exc))
        return error_response(503, "The key database is unavailable", "database_unavailable")
    except Exception:  # a bug answers 500; the proxy's own path is never forwarded
        log.exception("internal error on %s", printable(path))
        return error_response(500, "Internal proxy error", "internal_error")


@dataclass(eq=False)
class Endpoints(Context):
    """The proxy's own endpoints, ready to answer: the handlers' `Context`, and the
    threads the rows run on (None: in the caller's thread, for tests)."""

    #: The database threads (Runtime.pool).
    pool: Executor | None = None
    #: /health's own thread (Runtime.health_pool).
    health_pool: Executor | None = None
    table: EndpointTable = ENDPOINTS

    def owns(self, method: str, path: str) -> bool:
        return self.table.owns(method, path)

    def before_auth(self, path: str) -> bool:
        return self.table.before_auth(path)

    async def answer(self, request: http.Request, caller: Caller) -> http.Response | None:
        """The proxy's answer to `request`, or None when no row owns it (forward it).

        Never raises (the guard)."""
        path = request.path.partition("?")[0]
        row = self.table.find(path)
        if row is None or not self.table.owns(request.method, path):
            return None
        if row.runs is Runs.LOOP:
            response = await guarded(path, self._respond_on_loop(row, request, caller))
        else:
            pool = self.pool if row.runs is Runs.DATABASE else self.health_pool
            response = await guarded(path, _run(pool, self._respond, row, request, caller))
        if row.before_auth:  # the operator's and the pages' answers are not traffic
            self.live.count_internal(response.status_code)
        return response

    def _refusal(
        self, row: Endpoint, request: http.Request, caller: Caller
    ) -> http.Response | None:
        """The row's own checks: the method, then who may call it."""
        if request.method not in row.methods:
            path = request.path.partition("?")[0]
            if row.other_methods is OtherMethods.UNKNOWN:
                return error_response(404, f"Unknown endpoint {path}", "not_found")
            allowed = ", ".join(row.methods)
            return error_response(
                405, f"{path} only accepts {allowed}", "method_not_allowed", {"allow": allowed}
            )
        if row.access is Access.OPERATOR:
            return operator_refusal(self.settings, self.guesses, request, caller.client)
        return None

    def _respond(self, row: Endpoint, request: http.Request, caller: Caller) -> http.Response:
        """A row's answer, on its thread (blocking)."""
        if (refused := self._refusal(row, request, caller)) is not None:
            return refused
        response = row.handler(self, request, caller)
        assert isinstance(response, http.Response)  # EndpointTable checked: no coroutine
        return response

    async def _respond_on_loop(
        self, row: Endpoint, request: http.Request, caller: Caller
    ) -> http.Response:
        if (refused := self._refusal(row, request, caller)) is not None:
            return refused
        response = row.handler(self, request, caller)
        return await response if inspect.isawaitable(response) else response


async def _run[T](pool: Executor | None, fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` on `pool`'s threads, off the event loop; in this thread without one."""
    if pool is None:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


def readme_table(table: EndpointTable = ENDPOINTS) -> str:
    """The endpoint table as the README shows it."""
    lines = [
        "| Path | Methods | Who may call | Runs on | Answers |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in table.rows:
        path = f"`{row.path}*`" if row.prefix else f"`{row.path}`"
        lines.append(
            f"| {path} | {', '.join(row.methods)} | {row.access.value} | {row.runs.value} "
            f"| {row.summary} |"
        )
    return "\n".join(lines)


__all__ = [
    "ENDPOINTS",
    "ROWS",
    "Access",
    "Caller",
    "Context",
    "Endpoint",
    "EndpointTable",
    "Endpoints",
    "OtherMethods",
    "Runs",
    "guarded",
    "readme_table",
]

"""The SQLite layer: schema migrations and the key queries.

One plain `sqlite3` connection per thread. WAL lets readers (every proxy process
authenticating requests) run beside a writer (the admin endpoint, the CLI), and the
busy timeout makes a briefly locked file wait instead of failing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import keys
from ..policy.pricing import PERIODS

#: How long a statement waits for a lock held by another connection, in milliseconds.
BUSY_TIMEOUT_MS = 5000


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One customer key as stored: everything but the key itself."""

    id: int
    name: str
    tier: str
    active: bool
    created_at: str
    expires_at: str | None
    prefix: str
    rpm: int | None = None
    # The key's own plan settings; None: its tier's apply (see budgets.py).
    budget: float | None = None
    budget_period: str | None = None
    models: tuple[str, ...] | None = None

    def created_view(self, api_key: str) -> dict[str, object]:
        """What the admin endpoint and the CLI show once, right after creation."""
        return {
            "api_key": api_key,
            "id": self.id,
            "name": self.name,
            "tier": self.tier,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }

    def is_usable(self, now: str) -> bool:
        """Active and not expired; `now` is a `keys.format_time` string."""
        return self.active and (self.expires_at is None or self.expires_at > now)


# --- migrations --------------------------------------------------------------------
# An ordered list of small functions. `PRAGMA user_version` records how many ran, so
# each is applied once; append new ones, never edit or reorder old ones.


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


def m004_reasoning_and_estimates(conn: sqlite3.Connection) -> None:
    # Reasoning tokens apart from the reported ones (metering.py): the upstream's own
    # figure (inside completion_tokens), or estimated from the thinking delivered (not
    # inside it). `estimated_requests` / `estimated`: requests whose prompt or completion
    # is an estimate, because their stream ended before its usage.
    for column in ("reasoning_tokens", "estimated_reasoning_tokens", "estimated_requests"):
        conn.execute(f"ALTER TABLE usage ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
    for column in ("reasoning_tokens", "reasoning_estimated", "estimated"):
        conn.execute(f"ALTER TABLE request_log ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    m001_create_users,
    m002_rate_limits_and_usage,
    m003_budgets_and_request_log,
    m004_reasoning_and_estimates,
]
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
        for migration in MIGRATIONS[version:]:
            migration(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL. On a brand-new file another opener may hold the lock doing the
    same, and this pragma does not wait on the busy timeout, so retry for as long."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating the folder and schema if needed) a connection in autocommit mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    _enable_wal(conn)
    # In WAL mode NORMAL never corrupts the file; a power cut can lose the last commits.
    conn.execute("PRAGMA synchronous = NORMAL")
    migrate(conn)
    return conn


_KEY_COLUMNS = (
    "id, name, tier, active, created_at, expires_at, key_prefix, rpm, budget, budget_period, models"
)


def _models(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(json.loads(text))


def _record(row: tuple) -> KeyRecord:
    id_, name, tier, active, created_at, expires_at, prefix, rpm, budget, period, models = row
    return KeyRecord(
        id_,
        name,
        tier,
        bool(active),
        created_at,
        expires_at,
        prefix,
        rpm,
        budget,
        period,
        _models(models),
    )


def create_key(
    conn: sqlite3.Connection,
    name: str,
    tier: str,
    expires_in: int | None,
    rpm: int | None = None,
    plan: dict[str, object] | None = None,
) -> tuple[str, KeyRecord]:
    """Store a new key; return its plaintext (shown once, never stored) and record.

    `plan` holds the key's own `budget`, `budget_period` and `models` (validated).
    """
    plaintext = keys.generate_key()
    now = keys.utcnow()
    plan = plan or {}
    cursor = conn.execute(
        "INSERT INTO users (name, key_hash, key_prefix, tier, created_at, expires_at, rpm,"
        " budget, budget_period, models)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING " + _KEY_COLUMNS,
        (
            name,
            keys.hash_key(plaintext),
            keys.display_prefix(plaintext),
            tier,
            keys.format_time(now),
            keys.expiry_after(expires_in, now),
            rpm,
            plan.get("budget"),
            plan.get("budget_period"),
            _models_text(plan.get("models")),
        ),
    )
    return plaintext, _record(cursor.fetchone())


def _models_text(models: object) -> str | None:
    return None if models is None else json.dumps(list(models))  # type: ignore[call-overload]


#: Columns `update_key` may set; `expires_at` is a `keys.format_time` string or None.
UPDATABLE = ("name", "tier", "rpm", "budget", "budget_period", "models", "expires_at")


def update_key(
    conn: sqlite3.Connection, key_id: int, changes: dict[str, object]
) -> KeyRecord | None:
    """Change a key's settings (validated `UPDATABLE` fields); None when no key has the id."""
    if unknown := set(changes) - set(UPDATABLE):
        raise ValueError(f"cannot update {', '.join(sorted(unknown))}")
    values = {**changes}
    if "models" in values:
        values["models"] = _models_text(values["models"])
    assignments = ", ".join(f"{column} = ?" for column in values) or "id = id"
    row = conn.execute(
        f"UPDATE users SET {assignments} WHERE id = ? RETURNING {_KEY_COLUMNS}",
        (*values.values(), key_id),
    ).fetchone()
    return _record(row) if row else None


def rotate_key(conn: sqlite3.Connection, key_id: int) -> tuple[str, KeyRecord] | None:
    """Give a key a new secret; the old one stops matching. Usage and settings stay."""
    plaintext = keys.generate_key()
    row = conn.execute(
        f"UPDATE users SET key_hash = ?, key_prefix = ? WHERE id = ? RETURNING {_KEY_COLUMNS}",
        (keys.hash_key(plaintext), keys.display_prefix(plaintext), key_id),
    ).fetchone()
    return (plaintext, _record(row)) if row else None


def find_key_by_id(conn: sqlite3.Connection, key_id: int) -> KeyRecord | None:
    row = conn.execute(f"SELECT {_KEY_COLUMNS} FROM users WHERE id = ?", (key_id,)).fetchone()
    return _record(row) if row else None


def find_key(conn: sqlite3.Connection, key_hash: str) -> KeyRecord | None:
    row = conn.execute(
        f"SELECT {_KEY_COLUMNS} FROM users WHERE key_hash = ?", (key_hash,)
    ).fetchone()
    return _record(row) if row else None


def set_active(conn: sqlite3.Connection, key_id: int, active: bool) -> bool:
    """Revoke or re-activate a key; False when no key has that id."""
    cursor = conn.execute("UPDATE users SET active = ? WHERE id = ?", (int(active), key_id))
    return cursor.rowcount == 1


#: The fields of `list_keys` and `usage_report` rows, in order: a stable contract with
#: operators' scripts (`keys.py ... --json`, GET /admin/keys and /admin/usage).
#: `errors` counts the `requests` answered 4xx or 5xx (by the upstream, or by the proxy
#: in its place: 502, 504), so `requests - errors` were answered successfully.
KEY_FIELDS = [
    "id",
    "name",
    "tier",
    "active",
    "created_at",
    "expires_at",
    "prefix",
    "rpm",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "last_used_at",
    # What applies to the key (its own setting, else its tier's) and its spend in the
    # current period, in USD: filled in by budgets.key_objects.
    "budget",
    "budget_period",
    "spend",
    "models",
]
USAGE_FIELDS = [
    "key_id",
    "name",
    "model",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    # Reasoning tokens the upstream reported (part of completion_tokens), those estimated
    # from the thinking delivered (not part of it), and the requests whose counts are
    # estimates (their stream ended before its usage): see metering.py.
    "reasoning_tokens",
    "estimated_reasoning_tokens",
    "estimated_requests",
]
#: What `list_keys` reads besides the KEY_FIELDS up to `last_used_at`: the key's own plan
#: settings and its spend in today's, this month's and all time's periods.
_PLAN_FIELDS = ["own_budget", "own_budget_period", "own_models", "spend_day", "spend_month",
                "spend_total"]  # fmt: skip


def list_keys(
    conn: sqlite3.Connection, key_id: int | None = None, now: str | None = None
) -> list[dict[str, object]]:
    """Every key (or one) with its usage totals, oldest first. Never a key or a hash.

    Rows hold the KEY_FIELDS up to `last_used_at` plus `_PLAN_FIELDS`; budgets.key_objects
    turns them into key objects.
    """
    now = now or keys.now_text()
    # A condition built here rather than `? IS NULL OR ...`, which PostgreSQL cannot type.
    where, params = ("WHERE u.id = ?", (key_id,)) if key_id is not None else ("", ())
    rows = conn.execute(
        f"""
        SELECT u.id, u.name, u.tier, u.active, u.created_at, u.expires_at, u.key_prefix, u.rpm,
               coalesce(sum(g.requests), 0), coalesce(sum(g.client_errors + g.server_errors), 0),
               coalesce(sum(g.prompt_tokens), 0), coalesce(sum(g.completion_tokens), 0),
               u.last_used_at, u.budget, u.budget_period, u.models,
               (SELECT coalesce(sum(s.amount), 0) FROM spend s
                WHERE s.period = 'day' AND s.start = ? AND s.key_id = u.id),
               (SELECT coalesce(sum(s.amount), 0) FROM spend s
                WHERE s.period = 'month' AND s.start = ? AND s.key_id = u.id),
               (SELECT coalesce(sum(s.amount), 0) FROM spend s
                WHERE s.period = 'total' AND s.start = '' AND s.key_id = u.id)
        FROM users u LEFT JOIN usage g ON g.key_id = u.id
        {where}
        GROUP BY u.id ORDER BY u.id
        """,
        (period_start("day", now), period_start("month", now), *params),
    ).fetchall()
    names = [*KEY_FIELDS[: KEY_FIELDS.index("last_used_at") + 1], *_PLAN_FIELDS]
    result = []
    for row in rows:
        fields = dict(zip(names, row, strict=True))
        fields["active"] = bool(fields["active"])
        fields["own_models"] = _models(fields["own_models"])
        result.append(fields)
    return result


def usage_report(conn: sqlite3.Connection, since: str | None = None) -> list[dict[str, object]]:
    """Requests, tokens and cost per key and routed model, from the hour holding `since` on."""
    rows = conn.execute(
        """
        SELECT g.key_id, u.name, g.model, sum(g.requests), sum(g.client_errors + g.server_errors),
               sum(g.prompt_tokens), sum(g.completion_tokens), sum(g.cost),
               sum(g.reasoning_tokens), sum(g.estimated_reasoning_tokens),
               sum(g.estimated_requests)
        FROM usage g JOIN users u ON u.id = g.key_id
        WHERE g.hour >= ?
        GROUP BY g.key_id, u.name, g.model ORDER BY g.key_id, g.model
        """,
        (keys.hour_of(since) if since else "",),
    ).fetchall()
    return [dict(zip(USAGE_FIELDS, row, strict=True)) for row in rows]


@dataclass(slots=True)
class UsageCounts:
    """What one flush adds to one (key, model, hour) row."""

    requests: int = 0
    ok: int = 0
    client_errors: int = 0
    server_errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0
    reasoning_tokens: int = 0
    estimated_reasoning_tokens: int = 0
    estimated_requests: int = 0


def period_start(period: str, now: str) -> str:
    """The `spend` table's start of the period holding `now` (a `keys.format_time`, or a
    usage hour): the day `YYYY-MM-DD`, the month `YYYY-MM`, or '' for all time. The one
    definition of a spend slot, for the table and for budgets.SpendLedger alike."""
    if period == "day":
        return now[:10]
    if period == "month":
        return now[:7]
    return ""


#: A request log row, in `request_log`'s column order (see requestlog.py).
LogRow = tuple[
    str, str, int, str | None, str | None, int, int, int, int, int, float, int, bool, bool
]
#: Spend per (key_id, period, start), as kept in the `spend` table.
SpendRows = dict[tuple[int, str, str], float]


def record_usage(
    conn: sqlite3.Connection,
    counts: dict[tuple[int, str, str], UsageCounts],
    last_used: dict[int, str],
    requests: list[LogRow] | None = None,
) -> SpendRows:
    """Add a batch of counts, spend and request log rows in one transaction (one commit
    per flush, not per request); return the current periods' spend of every key."""
    if not (counts or last_used or requests):
        return current_spend(conn)  # a read: no write lock for an idle proxy
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            """
            INSERT INTO usage (key_id, model, hour, requests, ok, client_errors, server_errors,
                               prompt_tokens, completion_tokens, cached_tokens, cost,
                               reasoning_tokens, estimated_reasoning_tokens, estimated_requests)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (key_id, model, hour) DO UPDATE SET -- usage.: PostgreSQL needs it
                requests = usage.requests + excluded.requests,
                ok = usage.ok + excluded.ok,
                client_errors = usage.client_errors + excluded.client_errors,
                server_errors = usage.server_errors + excluded.server_errors,
                prompt_tokens = usage.prompt_tokens + excluded.prompt_tokens,
                completion_tokens = usage.completion_tokens + excluded.completion_tokens,
                cached_tokens = usage.cached_tokens + excluded.cached_tokens,
                cost = usage.cost + excluded.cost,
                reasoning_tokens = usage.reasoning_tokens + excluded.reasoning_tokens,
                estimated_reasoning_tokens =
                    usage.estimated_reasoning_tokens + excluded.estimated_reasoning_tokens,
                estimated_requests = usage.estimated_requests + excluded.estimated_requests
            """,
            [
                (
                    key_id,
                    model,
                    hour,
                    c.requests,
                    c.ok,
                    c.client_errors,
                    c.server_errors,
                    c.prompt_tokens,
                    c.completion_tokens,
                    c.cached_tokens,
                    c.cost,
                    c.reasoning_tokens,
                    c.estimated_reasoning_tokens,
                    c.estimated_requests,
                )
                for (key_id, model, hour), c in counts.items()
            ],
        )
        conn.executemany(
            "UPDATE users SET last_used_at = max(coalesce(last_used_at, ''), ?) WHERE id = ?",
            [(moment, key_id) for key_id, moment in last_used.items()],
        )
        conn.executemany(
            """
            INSERT INTO spend (period, start, key_id, amount) VALUES (?, ?, ?, ?)
            ON CONFLICT (period, start, key_id)
                DO UPDATE SET amount = spend.amount + excluded.amount
            """,
            [(period, start, key_id, amount) for (key_id, period, start), amount in
             _spend_of(counts).items()],
        )  # fmt: skip
        if requests:
            conn.executemany(
                """
                INSERT INTO request_log (time, request_id, key_id, model, routed_model, status,
                                         duration_ms, prompt_tokens, cached_tokens,
                                         completion_tokens, cost, reasoning_tokens,
                                         reasoning_estimated, estimated)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                [(*row[:12], int(row[12]), int(row[13])) for row in requests],
            )
        spend = current_spend(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return spend


def _spend_of(counts: dict[tuple[int, str, str], UsageCounts]) -> SpendRows:
    """The batch's cost per key and calendar period (day, month and all time)."""
    spend: SpendRows = {}
    for (key_id, _model, hour), c in counts.items():
        if c.cost:
            for period in PERIODS:
                slot = (key_id, period, period_start(period, hour))
                spend[slot] = spend.get(slot, 0.0) + c.cost
    return spend


def current_spend(conn: sqlite3.Connection, now: str | None = None) -> SpendRows:
    """Every key's spend today, this month and in total (a few indexed rows per key)."""
    now = now or keys.now_text()
    rows = conn.execute(
        """
        SELECT key_id, period, start, amount FROM spend
        WHERE (period = 'day' AND start = ?) OR (period = 'month' AND start = ?)
           OR (period = 'total' AND start = '')
        """,
        (period_start("day", now), period_start("month", now)),
    ).fetchall()
    return {(key_id, period, start): amount for key_id, period, start, amount in rows}


#: The fields of request log rows (`keys.py requests --json`, GET /admin/requests).
REQUEST_FIELDS = [
    "time",
    "request_id",
    "key_id",
    "model",
    "routed_model",
    "status",
    "duration_ms",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "cost",
    # Reasoning tokens (reported by the upstream, or estimated when reasoning_estimated),
    # and whether the prompt or completion is an estimate (the stream ended before its
    # usage): see metering.py.
    "reasoning_tokens",
    "reasoning_estimated",
    "estimated",
]
_BOOLEAN_REQUEST_FIELDS = ("reasoning_estimated", "estimated")


def query_requests(
    conn: sqlite3.Connection, key_id: int | None, since: str | None, limit: int
) -> list[dict[str, object]]:
    """Request log rows, newest first."""
    where, params = ("key_id = ? AND ", (key_id,)) if key_id is not None else ("", ())
    rows = conn.execute(
        f"""
        SELECT {", ".join(REQUEST_FIELDS)} FROM request_log
        WHERE {where}time >= ?
        ORDER BY time DESC, id DESC LIMIT ?
        """,
        (*params, since or "", limit),
    ).fetchall()
    result = []
    for row in rows:
        fields = dict(zip(REQUEST_FIELDS, row, strict=True))
        for name in _BOOLEAN_REQUEST_FIELDS:
            fields[name] = bool(fields[name])
        result.append(fields)
    return result


def prune_requests(conn: sqlite3.Connection, before: str) -> int:
    """Delete request log rows older than `before`; return how many went."""
    return conn.execute("DELETE FROM request_log WHERE time < ?", (before,)).rowcount


def daily_usage(conn: sqlite3.Connection, key_id: int, since: str) -> list[dict[str, object]]:
    """One key's usage per UTC day and routed model, from the day holding `since` on."""
    rows = conn.execute(
        """
        SELECT substr(hour, 1, 10) AS day, model, sum(requests), sum(prompt_tokens),
               sum(completion_tokens), sum(cost), sum(reasoning_tokens),
               sum(estimated_reasoning_tokens), sum(estimated_requests)
        FROM usage WHERE key_id = ? AND hour >= ?
        GROUP BY substr(hour, 1, 10), model ORDER BY day, model
        """,
        (key_id, since[:10]),
    ).fetchall()
    return [
        {**dict(zip(DAILY_FIELDS, row, strict=True)), "cost": round(row[5], 10)} for row in rows
    ]


#: The fields of `daily_usage` rows (`/account`'s `usage`).
DAILY_FIELDS = ["date", "model", "requests", "prompt_tokens", "completion_tokens", "cost",
                "reasoning_tokens", "estimated_reasoning_tokens", "estimated_requests"]  # fmt: skip


def cost_between(conn: sqlite3.Connection, key_id: int, start: str, end: str) -> float:
    """One key's cost in usage hours from `start` up to, not including, `end` (any
    `format_time` prefix, such as a date)."""
    row = conn.execute(
        "SELECT coalesce(sum(cost), 0) FROM usage WHERE key_id = ? AND hour >= ? AND hour < ?",
        (key_id, start, end),
    ).fetchone()
    return float(row[0])


def ping(conn: sqlite3.Connection) -> None:
    """Raise unless the database answers a query against the schema."""
    conn.execute("SELECT count(*) FROM users").fetchone()


class KeyStore:
    """Thread-safe access for the proxy: one connection per worker thread.

    Every call checks that the file is still the one the connection opened. A deleted
    file is reported (sqlite3.OperationalError) instead of being served from the
    vanished inode, where writes would be lost; a replaced file (a restore from
    backup) is reopened. Only creating a key, or `create_missing`, makes a new file
    with a fresh schema.
    """

    def __init__(self, path: Path, create_missing: bool = True) -> None:
        self.path = path
        self.create_missing = create_missing
        self._local = threading.local()

    def connection(self, create: bool = False) -> sqlite3.Connection:
        local = self._local
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self._close()
            if not (create or self.create_missing):
                raise sqlite3.OperationalError(f"database file {self.path} is missing") from None
        else:
            if getattr(local, "conn", None) is not None and local.inode == (
                stat.st_dev,
                stat.st_ino,
            ):
                return local.conn
            self._close()
        conn = connect(self.path)
        stat = os.stat(self.path)
        local.conn, local.inode = conn, (stat.st_dev, stat.st_ino)
        return conn

    def open(self) -> None:
        """Create the database now (later a vanished file is an error, not a fresh start)."""
        self.connection(create=True)

    def close(self) -> None:
        self._close()

    def _close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            conn.close()

    def find(self, key_hash: str) -> KeyRecord | None:
        return find_key(self.connection(), key_hash)

    def create(
        self,
        name: str,
        tier: str,
        expires_in: int | None,
        rpm: int | None = None,
        plan: dict[str, object] | None = None,
    ) -> tuple[str, KeyRecord]:
        return create_key(self.connection(create=True), name, tier, expires_in, rpm, plan)

    def update(self, key_id: int, changes: dict[str, object]) -> KeyRecord | None:
        return update_key(self.connection(), key_id, changes)

    def rotate(self, key_id: int) -> tuple[str, KeyRecord] | None:
        return rotate_key(self.connection(), key_id)

    def find_by_id(self, key_id: int) -> KeyRecord | None:
        return find_key_by_id(self.connection(), key_id)

    def current_spend(self) -> SpendRows:
        return current_spend(self.connection())

    def set_active(self, key_id: int, active: bool) -> bool:
        return set_active(self.connection(), key_id, active)

    def list_keys(self, key_id: int | None = None) -> list[dict[str, object]]:
        return list_keys(self.connection(), key_id)

    def usage(self, since: str | None = None) -> list[dict[str, object]]:
        return usage_report(self.connection(), since)

    def record_usage(
        self,
        counts: dict[tuple[int, str, str], UsageCounts],
        last_used: dict[int, str],
        requests: list[LogRow] | None = None,
    ) -> SpendRows:
        return record_usage(self.connection(), counts, last_used, requests)

    def requests(
        self, key_id: int | None = None, since: str | None = None, limit: int = 100
    ) -> list[dict[str, object]]:
        return query_requests(self.connection(), key_id, since, limit)

    def prune_requests(self, before: str) -> int:
        return prune_requests(self.connection(), before)

    def daily_usage(self, key_id: int, since: str) -> list[dict[str, object]]:
        return daily_usage(self.connection(), key_id, since)

    def cost_between(self, key_id: int, start: str, end: str) -> float:
        return cost_between(self.connection(), key_id, start, end)

    def ping(self) -> None:
        ping(self.connection())

"""The SQLite layer: connections and every query (the SQL both backends run).

One plain `sqlite3` connection per thread. WAL lets readers (every proxy process
authenticating requests) run beside a writer (the admin endpoint, the CLI), and the
busy timeout makes a briefly locked file wait instead of failing. The schema is in
migrations.py, the types and field lists these queries hand out in records.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path

from .. import clock, keys
from .migrations import migrate
from .records import (
    DAILY_FIELDS,
    KEY_FIELDS,
    PERIODS,
    PLAN_FIELDS,
    REQUEST_FIELDS,
    SERIES_FIELDS,
    TOP_FIELDS,
    UPDATABLE,
    USAGE_FIELDS,
    KeyRecord,
    LogRow,
    SpendRows,
    UsageCounts,
    period_start,
)

#: How long a statement waits for a lock held by another connection, in milliseconds.
BUSY_TIMEOUT_MS = 5000


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
    now = clock.utcnow()
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
            clock.format_time(now),
            clock.expiry_after(expires_in, now),
            rpm,
            plan.get("budget"),
            plan.get("budget_period"),
            _models_text(plan.get("models")),
        ),
    )
    return plaintext, _record(cursor.fetchone())


def _models_text(models: object) -> str | None:
    return None if models is None else json.dumps(list(models))  # type: ignore[call-overload]


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


def list_keys(
    conn: sqlite3.Connection, key_id: int | None = None, now: str | None = None
) -> list[dict[str, object]]:
    """Every key (or one) with its usage totals, oldest first. Never a key or a hash.

    Rows hold the KEY_FIELDS up to `last_used_at` plus `PLAN_FIELDS`; budgets.key_objects
    turns them into key objects.
    """
    now = now or clock.now_text()
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
    names = [*KEY_FIELDS[: KEY_FIELDS.index("last_used_at") + 1], *PLAN_FIELDS]
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
        (clock.hour_of(since) if since else "",),
    ).fetchall()
    return [dict(zip(USAGE_FIELDS, row, strict=True)) for row in rows]


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
    now = now or clock.now_text()
    rows = conn.execute(
        """
        SELECT key_id, period, start, amount FROM spend
        WHERE (period = 'day' AND start = ?) OR (period = 'month' AND start = ?)
           OR (period = 'total' AND start = '')
        """,
        (period_start("day", now), period_start("month", now)),
    ).fetchall()
    return {(key_id, period, start): amount for key_id, period, start, amount in rows}


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


def usage_series(conn: sqlite3.Connection, width: int, start: str) -> list[dict[str, object]]:
    """Usage summed per bucket and routed model, from the bucket `start` on. A bucket is
    the first `width` characters of the usage hour (`YYYY-MM-DDTHH`): 13 an hour, 10 a day.
    """
    width = int(width)  # written into the statement
    rows = conn.execute(
        f"""
        SELECT substr(g.hour, 1, {width}) AS bucket, g.model, sum(g.requests),
               sum(g.client_errors + g.server_errors), sum(g.server_errors),
               sum(g.prompt_tokens), sum(g.completion_tokens), coalesce(sum(g.cost), 0),
               sum(g.reasoning_tokens), sum(g.estimated_reasoning_tokens),
               sum(g.estimated_requests)
        FROM usage g WHERE g.hour >= ?
        GROUP BY bucket, g.model ORDER BY bucket, g.model
        """,
        (start,),
    ).fetchall()
    return [dict(zip(SERIES_FIELDS, row, strict=True)) for row in rows]


def top_keys(conn: sqlite3.Connection, start: str, limit: int) -> list[dict[str, object]]:
    """The `limit` keys that spent most (then made the most requests) in the usage hours
    from `start` on (a usage hour or a prefix of one, such as a date)."""
    rows = conn.execute(
        """
        SELECT g.key_id, u.name, u.key_prefix, sum(g.requests),
               sum(g.prompt_tokens + g.completion_tokens), coalesce(sum(g.cost), 0) AS spend
        FROM usage g JOIN users u ON u.id = g.key_id WHERE g.hour >= ?
        GROUP BY g.key_id, u.name, u.key_prefix
        ORDER BY spend DESC, sum(g.requests) DESC, g.key_id LIMIT ?
        """,
        (start, limit),
    ).fetchall()
    return [dict(zip(TOP_FIELDS, row, strict=True)) for row in rows]


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

    def usage_series(self, width: int, start: str) -> list[dict[str, object]]:
        return usage_series(self.connection(), width, start)

    def top_keys(self, start: str, limit: int) -> list[dict[str, object]]:
        return top_keys(self.connection(), start, limit)

    def cost_between(self, key_id: int, start: str, end: str) -> float:
        return cost_between(self.connection(), key_id, start, end)

    def ping(self) -> None:
        ping(self.connection())

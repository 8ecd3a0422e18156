"""The per-request log: one row per forwarded request, the evidence in a billing dispute.

Rows are buffered in memory and written with the usage batch, in the same
transaction (sqlite.record_usage), so the log costs no database round trip per
request. They are kept REQUEST_LOG_DAYS days (0: no log at all) and pruned in the
background. Query with `keys.py requests` or `GET /admin/requests`.
"""

from __future__ import annotations

import logging

from .. import clock
from ..metering import Usage
from .records import LogRow

log = logging.getLogger("apipod")

#: How often old rows are deleted.
PRUNE_SECONDS = 3600.0
#: Rows held while the database cannot take them; past this the oldest are dropped, so
#: a long database outage cannot exhaust memory.
MAX_PENDING = 200_000
DEFAULT_LIMIT = 100
MAX_MODEL_NAME = 200
MAX_LIMIT = 10_000


class RequestLog:
    def __init__(self, days: int) -> None:
        self.days = days
        self._rows: list[LogRow] = []

    def __bool__(self) -> bool:
        return bool(self._rows)

    @property
    def enabled(self) -> bool:
        return self.days > 0

    def add(
        self,
        request_id: str,
        key_id: int,
        model: str | None,
        routed_model: str | None,
        status: int,
        duration: float,
        usage: Usage,
        cost: float,
    ) -> None:
        if not self.enabled:
            return
        self._rows.append(
            (
                clock.now_text(),
                request_id,
                key_id,
                # Client-chosen names: bounded, so no row can be made huge.
                model and model[:MAX_MODEL_NAME],
                routed_model and routed_model[:MAX_MODEL_NAME],
                status,
                round(duration * 1000),
                usage.prompt_tokens,
                usage.cached_tokens,
                usage.completion_tokens,
                cost,
                usage.reasoning_tokens,
                usage.reasoning_estimated,
                usage.estimated,
            )
        )

    def take(self) -> list[LogRow]:
        rows, self._rows = self._rows, []
        return rows

    def give_back(self, rows: list[LogRow]) -> None:
        """A batch that could not be written goes first in the next one."""
        self._rows[:0] = rows
        if (excess := len(self._rows) - MAX_PENDING) > 0:
            log.error("request log: database unavailable, %d oldest rows dropped", excess)
            del self._rows[:excess]

    def cutoff(self) -> str:
        """Rows older than this are pruned."""
        return clock.ago(self.days * 86400)


def parse_limit(value: object, name: str = "limit") -> int:
    """A row count from a query string or the command line: 1 to MAX_LIMIT."""
    text = str(value).strip() if value is not None else ""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise ValueError(f"{name} must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)

"""Upstream quota: recognising "quota used up" answers, and which models are cooling down.

antigravity-claude-proxy reports an exhausted quota as HTTP 400 `invalid_request_error`,
on purpose, so that its clients do not retry. The message reads

    You have exhausted your capacity on <model>. Quota will reset after 1m0s.

and newer versions prefix it with `RESOURCE_EXHAUSTED: `. When streaming, the same
body arrives as `event: error` inside a 200 response. The model in the message is cut at
its first dot (`gemini-2.5-flash` reads `gemini-2`), so callers cool down the model they
sent, never the one named in the message.

Everything here is pure: no I/O, and the clock is passed in, so tests control time.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

#: Words that mark a quota answer, whatever the version.
_QUOTA = re.compile(r"RESOURCE_EXHAUSTED|exhausted your capacity", re.IGNORECASE)
#: "Quota will reset after 1h2m3s." The duration is Go's time.Duration text.
_RESET = re.compile(r"reset after\s+([0-9][0-9.a-zµ]*)", re.IGNORECASE)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
#: The machine-readable code every client sees for a quota answer, in JSON and in streams.
QUOTA_CODE = "upstream_quota_exhausted"


@dataclass(frozen=True, slots=True)
class QuotaExhausted:
    """An upstream quota answer; `reset_seconds` is None when it named no reset time."""

    reset_seconds: float | None


def parse_duration(text: str) -> float | None:
    """Seconds in a Go duration (`1h2m3s`, `45s`, `1m0s`, `500ms`); None when it is not one."""
    text = text.strip().rstrip(".")
    if not text:
        return None
    total, position = 0.0, 0
    for part in _DURATION_PART.finditer(text):
        if part.start() != position:
            return None
        total += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
        position = part.end()
    return total if position == len(text) and position else None


def detect(message: str) -> QuotaExhausted | None:
    """A quota answer's reset time, from an upstream error message; None: not a quota error."""
    if not isinstance(message, str) or not _QUOTA.search(message):
        return None
    found = _RESET.search(message)
    return QuotaExhausted(parse_duration(found.group(1)) if found else None)


def retry_after(seconds: float) -> str:
    """A Retry-After header value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


class Cooldowns:
    """Models that ran out of quota, each until its reset time (seconds on `clock`).

    The request path marks and reads it on the event loop; `/health` and the dashboard
    read it on the database threads, hence the lock (uncontended: tens of nanoseconds).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def mark(self, model: str, until: float) -> float:
        """`model` is out of rotation until `until`; a later reset already known wins.
        Returns the reset time in force."""
        with self._lock:
            self._until[model] = until = max(until, self._until.get(model, until))
        return until

    def mark_for(self, model: str, seconds: float | None, default: float) -> float:
        """Cool `model` for `seconds` from now (`default` when the answer named no time)."""
        return self.mark(model, self._clock() + (default if seconds is None else max(0.0, seconds)))

    def active(self, now: float | None = None) -> dict[str, float]:
        """{model: until} for every model still cooling; expired entries are forgotten."""
        now = self._clock() if now is None else now
        with self._lock:
            if not self._until:
                return {}
            for model in [m for m, until in self._until.items() if until <= now]:
                del self._until[model]
            return dict(self._until)

    def listing(self, now: float | None = None) -> list[dict[str, Any]]:
        """The cooling models, soonest back first, as `/health` and `/admin/stats` show them."""
        now = self._clock() if now is None else now
        return [
            {
                "model": model,
                "until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until)),
                "seconds_left": math.ceil(until - now),
            }
            for model, until in sorted(self.active(now).items(), key=lambda item: item[1])
        ]

    def earliest_reset(
        self, models: Collection[str] | None = None, now: float | None = None
    ) -> float | None:
        """The first moment one of `models` (default: any) is usable again; None: none cool."""
        active = self.active(now)
        times = [until for model, until in active.items() if models is None or model in models]
        return min(times) if times else None

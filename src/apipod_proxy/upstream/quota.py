"""Upstream quota: recognising "quota used up" answers, and which models are cooling down.

antigravity-claude-proxy reports an exhausted quota as HTTP 400 `invalid_request_error`,
on purpose, so that its clients do not retry. The message reads

    You have exhausted your capacity on <model>. Quota will reset after 1m0s.

and newer versions prefix it with `RESOURCE_EXHAUSTED: `. When streaming, the same
body arrives as `event: error` inside a 200 response. The model in the message is cut at
its first dot (`gemini-2.5-flash` reads `gemini-2`), so callers cool down the model they
sent, never the one named in the message.

Only a structured error is a quota signal (`quota_answer`, `quota_in_stream`): a JSON error
object whose status and type are those of a quota answer (`QUOTA_ANSWERS`) and whose
message *starts* with the sentence above. Upstream error messages often quote the
client's own fields, so a substring anywhere would let one customer switch a model off
for everyone. The cooldown is capped as well (`QuotaExhausted.cooldown`, QUOTA_COOLDOWN_MAX).

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

#: The upstream's quota sentence, at the very start of the message:
#: "[RESOURCE_EXHAUSTED: ]You have exhausted your capacity on <model>.[ Quota will reset
#: after <Go duration>.]" The model may itself hold dots (`gemini-2.5-flash`).
_SIGNAL = re.compile(
    r"(?:RESOURCE_EXHAUSTED: ?)?You have exhausted your capacity on \S+?\.(?=\s|\Z)"
    r"(?:\s+Quota will reset after (?P<reset>\S+?)\.?(?=\s|\Z))?"
)
#: Which upstream error answers may report a used-up quota: HTTP status -> error types.
#: antigravity-claude-proxy answers 400 `invalid_request_error` on purpose (so that its
#: clients do not retry); OpenAI-shaped gateways answer 429.
QUOTA_ANSWERS: dict[int, frozenset[str]] = {
    400: frozenset({"invalid_request_error"}),
    429: frozenset({"rate_limit_error", "insufficient_quota"}),
}
#: Inside a 200 stream there is no status to read: the error's type alone.
STREAM_QUOTA_TYPES = frozenset().union(*QUOTA_ANSWERS.values())
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
#: The machine-readable code every client sees for a quota answer, in JSON and in streams.
QUOTA_CODE = "upstream_quota_exhausted"


@dataclass(frozen=True, slots=True)
class QuotaExhausted:
    """An upstream quota answer; `reset_seconds` is None when it named no reset time."""

    reset_seconds: float | None

    def cooldown(self, default: float, cap: float = math.inf) -> float:
        """Seconds to cool the model: the reset named (`default` when none), at most `cap`."""
        seconds = default if self.reset_seconds is None else max(0.0, self.reset_seconds)
        return min(seconds, cap)

    def exceeds(self, cap: float) -> bool:
        """The reset named is longer than `cap` (QUOTA_COOLDOWN_MAX), so it is cut short."""
        return self.reset_seconds is not None and self.reset_seconds > cap


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


def detect(message: object) -> QuotaExhausted | None:
    """The reset time of a message that starts with the upstream's quota sentence; None
    when it does not start so (the sentence quoted later in the message does not count)."""
    if not isinstance(message, str):
        return None
    found = _SIGNAL.match(message.lstrip())
    if found is None:
        return None
    reset = found.group("reset")
    return QuotaExhausted(parse_duration(reset) if reset else None)


def quota_answer(status: int, kind: object, message: object) -> QuotaExhausted | None:
    """A quota signal from a whole upstream error answer: its HTTP status, its error type
    and its message, read from a JSON error object (never from raw text)."""
    if not isinstance(kind, str) or kind not in QUOTA_ANSWERS.get(status, ()):
        return None
    return detect(message)


def quota_in_stream(kind: object, message: object) -> QuotaExhausted | None:
    """A quota signal from an error event inside a 200 stream: its type and message."""
    if not isinstance(kind, str) or kind not in STREAM_QUOTA_TYPES:
        return None
    return detect(message)


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

    def mark_for(
        self, model: str, seconds: float | None, default: float, cap: float = math.inf
    ) -> float:
        """Cool `model` for `seconds` from now (`default` when the answer named no time),
        at most `cap` seconds."""
        return self.mark(model, self._clock() + QuotaExhausted(seconds).cooldown(default, cap))

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

"""The clock: the one timestamp format stored and returned, usage hours, and durations.

Every moment the proxy stores or answers is ISO 8601 in UTC with a `Z`, to the second
(`format_time`); usage is counted per hour (`hour_of`). Durations (key lifetimes,
`since` filters) are whole seconds or strings like `30d` (`parse_duration`).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

#: A whole number with an optional unit, in either case; a sign is read only to say
#: that a negative lifetime is not positive.
_DURATION = re.compile(r"^\s*(-?[0-9]+)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION_FORMS = "whole seconds or a string like 90s, 30m, 12h, 30d, 2w"
#: Longest lifetime accepted (about 100 years); beyond that datetime arithmetic overflows.
MAX_LIFETIME_SECONDS = 100 * 365 * 86400


def parse_duration(value: object, name: str = "expires_in") -> int:
    """Seconds from whole seconds (`3600`) or a string like `90s`, `30m`, `12h`, `30d`,
    `2w` (units in either case).

    Raises ValueError with a message, naming the field or flag `name`, fit for an API
    client or a CLI user.
    """
    match = _DURATION.match(value) if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif match:
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    else:
        raise ValueError(f"{name} must be {DURATION_FORMS}")
    if seconds <= 0:
        raise ValueError(f"{name} must be positive")
    if seconds > MAX_LIFETIME_SECONDS:
        raise ValueError(f"{name} must be at most 100 years")
    return seconds


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


_now_cache: tuple[int, str] = (0, "")


def now_text() -> str:
    """`format_time(utcnow())`, formatted once per second: it is read on every request."""
    global _now_cache
    second = int(time.time())
    if _now_cache[0] != second:
        _now_cache = (second, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second)))
    return _now_cache[1]


def format_time(moment: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, the one timestamp format stored and returned."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def hour_of(moment: str) -> str:
    """The usage bucket (`YYYY-MM-DDTHH`) holding a `format_time` timestamp."""
    return moment[:13]


def ago(seconds: int, now: datetime | None = None) -> str:
    return format_time((now or utcnow()) - timedelta(seconds=seconds))


def since(value: str | None, name: str = "since") -> str | None:
    """The moment a `since` filter (`24h`, `30d`, ...) names; None for no filter.
    ValueError names the field or flag `name`."""
    return ago(parse_duration(value, name)) if value else None


def expiry_after(seconds: int | None, now: datetime | None = None) -> str | None:
    if seconds is None:
        return None
    return format_time((now or utcnow()) + timedelta(seconds=seconds))

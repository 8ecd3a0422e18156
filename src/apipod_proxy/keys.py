"""Customer API keys: how they look, how they are hashed, how long they live.

A key is `apk_` plus base64url of 32 random bytes. Only its SHA-256 is stored, so a
leaked database does not leak usable keys; the plaintext is shown once at creation.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from datetime import UTC, datetime, timedelta

KEY_PREFIX = "apk_"
#: `apk_` + 43 base64url characters (32 bytes, unpadded).
KEY_LENGTH = len(KEY_PREFIX) + 43
#: How much of a key is kept for display (`apk_AbCd…`), enough to tell keys apart.
DISPLAY_PREFIX_LENGTH = len(KEY_PREFIX) + 6

#: A whole number with an optional unit, in either case; a sign is read only to say
#: that a negative lifetime is not positive.
_DURATION = re.compile(r"^\s*(-?[0-9]+)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION_FORMS = "whole seconds or a string like 90s, 30m, 12h, 30d, 2w"
#: Longest lifetime accepted (about 100 years); beyond that datetime arithmetic overflows.
MAX_LIFETIME_SECONDS = 100 * 365 * 86400


def generate_key() -> str:
    raw = secrets.token_bytes(32)
    return KEY_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def hash_key(key: str) -> str:
    """SHA-256 hex of a key; any string, however odd, hashes cleanly."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_LENGTH]


def looks_like_key(value: str) -> bool:
    """Cheap shape check that spares the database from obviously foreign values."""
    return len(value) == KEY_LENGTH and value.startswith(KEY_PREFIX)


def looks_keyish(text: str) -> bool:
    """True when `text` holds something shaped like one of our keys (never log it)."""
    return KEY_PREFIX in text


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


MAX_NAME_LENGTH = 200
MAX_TIER_LENGTH = 64
DEFAULT_TIER = "elite"


def validate_rpm(rpm: object) -> int | None:
    """A per-key requests-per-minute override: None (tier default), or 0 (unlimited) and up."""
    if rpm is None:
        return None
    if isinstance(rpm, str) and rpm.strip().isdigit():
        rpm = int(rpm)
    if isinstance(rpm, bool) or not isinstance(rpm, int) or not 0 <= rpm <= 1_000_000:
        raise ValueError("rpm must be a whole number from 0 (unlimited) to 1000000")
    return rpm


def validate_new_key(
    name: object, tier: object = None, expires_in: object = None, expires_name: str = "expires_in"
) -> tuple[str, str, int | None]:
    """Check what a caller asked for a new key; return (name, tier, lifetime seconds).

    `expires_name` is what errors call the lifetime: the JSON field, or the CLI's flag.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("name is required and must be a non-empty string")
    if len(name.strip()) > MAX_NAME_LENGTH or not name.isprintable():
        # Printable only: names go into log lines, which a newline could forge.
        raise ValueError(f"name must be at most {MAX_NAME_LENGTH} printable characters")
    if tier is None:
        tier = DEFAULT_TIER
    if (
        not isinstance(tier, str)
        or not tier.strip()
        or len(tier.strip()) > MAX_TIER_LENGTH
        or not tier.isprintable()
    ):
        raise ValueError(
            f"tier must be a non-empty string of at most {MAX_TIER_LENGTH} printable characters"
        )
    seconds = None if expires_in is None else parse_duration(expires_in, expires_name)
    return name.strip(), tier.strip(), seconds


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

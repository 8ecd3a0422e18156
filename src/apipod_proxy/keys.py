"""Customer API keys: how they look, how they are hashed, what a new key may be.

A key is `apk_` plus base64url of 32 random bytes. Only its SHA-256 is stored, so a
leaked database does not leak usable keys; the plaintext is shown once at creation.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

from .clock import parse_duration

KEY_PREFIX = "apk_"
#: `apk_` + 43 base64url characters (32 bytes, unpadded).
KEY_LENGTH = len(KEY_PREFIX) + 43
#: How much of a key is kept for display (`apk_AbCd…`), enough to tell keys apart.
DISPLAY_PREFIX_LENGTH = len(KEY_PREFIX) + 6


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

"""Unit tests for apipod_proxy.keys: key shape, hashing, durations and validation."""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from apipod_proxy.keys import (
    DEFAULT_TIER,
    display_prefix,
    expiry_after,
    format_time,
    generate_key,
    hash_key,
    looks_like_key,
    now_text,
    parse_duration,
    utcnow,
    validate_new_key,
)

BASE64URL = re.compile(r"^[A-Za-z0-9_-]+$")
HUNDRED_YEARS = 100 * 365 * 86400

# --- generate_key ------------------------------------------------------------------


def test_generated_key_is_prefix_plus_43_base64url_characters() -> None:
    key = generate_key()
    assert key.startswith("apk_")
    body = key[len("apk_") :]
    assert len(body) == 43
    assert BASE64URL.match(body)
    assert len(key) == 47


def test_generated_key_decodes_to_32_random_bytes() -> None:
    body = generate_key()[len("apk_") :]
    raw = base64.urlsafe_b64decode(body + "=")
    assert len(raw) == 32


def test_generated_keys_are_unique() -> None:
    generated = {generate_key() for _ in range(1000)}
    assert len(generated) == 1000


def test_generated_key_has_no_padding() -> None:
    assert "=" not in generate_key()


def test_generated_key_looks_like_a_key() -> None:
    assert looks_like_key(generate_key())


# --- hash_key ------------------------------------------------------------------------


def test_hash_key_is_sha256_hex_of_utf8() -> None:
    key = "apk_" + "A" * 43
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()


def test_hash_key_is_64_lowercase_hex_characters() -> None:
    digest = hash_key(generate_key())
    assert re.fullmatch(r"[0-9a-f]{64}", digest)


def test_hash_key_differs_for_different_keys() -> None:
    assert hash_key("apk_a") != hash_key("apk_b")


def test_hash_key_is_deterministic() -> None:
    key = generate_key()
    assert hash_key(key) == hash_key(key)


def test_hash_key_handles_non_ascii() -> None:
    key = "ключ-🔑-鍵"
    assert hash_key(key) == hashlib.sha256(key.encode("utf-8")).hexdigest()


def test_hash_key_handles_surrogate_escapes() -> None:
    # What a header value carrying the raw byte 0xff decodes to.
    key = b"apk_\xff".decode("utf-8", "surrogateescape")
    assert hash_key(key) == hashlib.sha256(b"apk_\xff").hexdigest()


def test_hash_key_handles_a_huge_string() -> None:
    key = "x" * 5_000_000
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()


def test_hash_key_handles_empty_and_nul() -> None:
    assert hash_key("") == hashlib.sha256(b"").hexdigest()
    assert hash_key("\x00") == hashlib.sha256(b"\x00").hexdigest()


# --- looks_like_key / display_prefix ---------------------------------------------------


def test_looks_like_key_rejects_wrong_prefix_of_right_length() -> None:
    assert not looks_like_key("sk-_" + "A" * 43)
    assert not looks_like_key("APK_" + "A" * 43)


@pytest.mark.parametrize("length", [0, 42, 44, 100])
def test_looks_like_key_rejects_wrong_length(length: int) -> None:
    assert not looks_like_key("apk_" + "A" * length)


def test_looks_like_key_rejects_empty_string() -> None:
    assert not looks_like_key("")


def test_display_prefix_is_apk_plus_six_characters() -> None:
    key = generate_key()
    assert display_prefix(key) == key[:10]
    assert len(display_prefix(key)) == 10


# --- parse_duration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (1, 1),
        (3600, 3600),
        ("3600", 3600),
        ("90s", 90),
        ("30m", 1800),
        ("12h", 43200),
        ("30d", 2_592_000),
        (" 5 m ", 300),
        ("1d", 86400),
        ("1w", 604_800),
        ("10w", 6_048_000),
        ("2W", 1_209_600),
        ("30D", 2_592_000),
        ("12H", 43200),
        ("90S", 90),
        ("30M", 1800),
    ],
)
def test_parse_duration_accepts(value: object, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        0,
        "0",
        "0s",
        "0d",
        -1,
        -3600,
        "-5s",
        True,
        False,
        1.5,
        3600.0,
        "1.5h",
        "",
        "   ",
        "abc",
        "+5d",
        "5 d x",
        "h",
        "1y",
        "--5d",
        None,
        [3600],
        {"seconds": 3600},
    ],
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_parse_duration_accepts_exactly_one_hundred_years() -> None:
    assert parse_duration(HUNDRED_YEARS) == HUNDRED_YEARS
    assert parse_duration("36500d") == HUNDRED_YEARS


@pytest.mark.parametrize("value", [HUNDRED_YEARS + 1, "36501d", "9" * 40, "9" * 40 + "d"])
def test_parse_duration_rejects_more_than_one_hundred_years(value: object) -> None:
    with pytest.raises(ValueError, match="100 years"):
        parse_duration(value)


def test_parse_duration_errors_mention_expires_in() -> None:
    with pytest.raises(ValueError, match="expires_in"):
        parse_duration("forever")
    with pytest.raises(ValueError, match="expires_in"):
        parse_duration(0)


def test_parse_duration_errors_name_what_they_are_given() -> None:
    with pytest.raises(ValueError, match=r"^--expires-in must be whole seconds or .* 2w$"):
        parse_duration("soon", "--expires-in")


@pytest.mark.parametrize("value", ["-5d", "-1", "-2W", -5])
def test_a_negative_lifetime_is_said_to_be_not_positive(value: object) -> None:
    with pytest.raises(ValueError, match=r"^expires_in must be positive$"):
        parse_duration(value)


def test_maximum_duration_does_not_overflow_datetime() -> None:
    expiry = expiry_after(parse_duration(HUNDRED_YEARS))
    assert expiry is not None
    assert expiry.endswith("Z")


# --- validate_new_key ------------------------------------------------------------------


def test_validate_new_key_defaults() -> None:
    assert validate_new_key("alice") == ("alice", DEFAULT_TIER, None)
    assert DEFAULT_TIER == "elite"


def test_validate_new_key_strips_name_and_tier() -> None:
    assert validate_new_key("  alice  ", "  pro  ", "1h") == ("alice", "pro", 3600)


@pytest.mark.parametrize("name", [None, "", "   ", 123, ["alice"], {"n": 1}])
def test_validate_new_key_rejects_bad_names(name: object) -> None:
    with pytest.raises(ValueError, match="name"):
        validate_new_key(name)


def test_validate_new_key_accepts_a_200_character_name() -> None:
    assert validate_new_key("n" * 200)[0] == "n" * 200


def test_validate_new_key_rejects_a_201_character_name() -> None:
    with pytest.raises(ValueError, match="name"):
        validate_new_key("n" * 201)


@pytest.mark.parametrize("tier", ["", "   ", 5, True, ["pro"], "t" * 65])
def test_validate_new_key_rejects_bad_tiers(tier: object) -> None:
    with pytest.raises(ValueError, match="tier"):
        validate_new_key("alice", tier)


def test_validate_new_key_accepts_a_64_character_tier() -> None:
    assert validate_new_key("alice", "t" * 64)[1] == "t" * 64


def test_validate_new_key_rejects_bad_expires_in() -> None:
    with pytest.raises(ValueError, match="expires_in"):
        validate_new_key("alice", None, "soon")


# --- time helpers ----------------------------------------------------------------------


def test_expiry_after_none_means_never() -> None:
    assert expiry_after(None) is None


def test_expiry_after_adds_seconds_to_now() -> None:
    now = datetime(2024, 1, 1, 0, 0, 0, tzinfo=UTC)
    assert expiry_after(90, now) == "2024-01-01T00:01:30Z"
    assert expiry_after(86400 * 31, now) == "2024-02-01T00:00:00Z"


def test_expiry_after_converts_other_time_zones_to_utc() -> None:
    now = datetime(2024, 1, 1, 2, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    assert expiry_after(60, now) == "2024-01-01T00:01:00Z"


def test_expiry_after_defaults_to_the_current_time() -> None:
    before = utcnow()
    expiry = expiry_after(3600)
    after = utcnow()
    assert expiry is not None
    assert (
        format_time(before + timedelta(hours=1))
        <= expiry
        <= format_time(after + timedelta(hours=1))
    )


def test_format_time_is_iso_utc_with_z() -> None:
    assert format_time(datetime(2030, 12, 31, 23, 59, 58, tzinfo=UTC)) == "2030-12-31T23:59:58Z"


def test_utcnow_is_aware_utc_without_microseconds() -> None:
    now = utcnow()
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(0)
    assert now.microsecond == 0


def test_now_text_is_format_time_of_now() -> None:
    before = format_time(utcnow())
    now = now_text()
    after = format_time(utcnow())
    assert before <= now <= after
    assert len(now) == len("2026-01-01T00:00:00Z") and now.endswith("Z")

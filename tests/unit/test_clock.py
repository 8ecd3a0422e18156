"""Unit tests for apipod_proxy.clock: durations, and the timestamp helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from apipod_proxy.clock import expiry_after, format_time, now_text, parse_duration, utcnow

HUNDRED_YEARS = 100 * 365 * 86400

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

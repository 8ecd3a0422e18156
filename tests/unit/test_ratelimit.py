"""Unit tests for apipod_proxy.policy.ratelimit: per-key token buckets on an injected clock."""

from __future__ import annotations

import pytest

from apipod_proxy.policy.ratelimit import IDLE_SECONDS, RateLimiter


class FakeClock:
    def __init__(self, now: float = 5000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> RateLimiter:
    return RateLimiter(clock)


def burst(limiter: RateLimiter, key_id: int, rpm: int, count: int) -> list[float]:
    return [limiter.acquire(key_id, rpm) for _ in range(count)]


@pytest.mark.parametrize("rpm", [1, 5, 60, 600])
def test_a_fresh_key_may_burst_its_whole_minute(limiter: RateLimiter, rpm: int) -> None:
    assert burst(limiter, 1, rpm, rpm) == [0.0] * rpm


@pytest.mark.parametrize("rpm", [1, 5, 60, 600])
def test_the_request_after_the_burst_waits_for_one_token(limiter: RateLimiter, rpm: int) -> None:
    burst(limiter, 1, rpm, rpm)
    assert limiter.acquire(1, rpm) == pytest.approx(60.0 / rpm)


def test_refusals_do_not_consume_or_extend_the_wait(limiter: RateLimiter, clock: FakeClock) -> None:
    burst(limiter, 1, 6, 6)
    first = limiter.acquire(1, 6)
    assert [limiter.acquire(1, 6) for _ in range(5)] == pytest.approx([first] * 5)
    clock.advance(first)
    assert limiter.acquire(1, 6) == 0.0


def test_the_wait_shrinks_as_time_passes(limiter: RateLimiter, clock: FakeClock) -> None:
    rpm = 10
    burst(limiter, 1, rpm, rpm)
    full = limiter.acquire(1, rpm)
    clock.advance(full / 4)
    assert limiter.acquire(1, rpm) == pytest.approx(full * 3 / 4)


def test_refill_rate_is_rpm_over_sixty_per_second(limiter: RateLimiter, clock: FakeClock) -> None:
    rpm = 120  # two tokens a second
    burst(limiter, 1, rpm, rpm)
    clock.advance(3.0)
    granted = burst(limiter, 1, rpm, 7)
    assert granted[:6] == [0.0] * 6
    assert granted[6] > 0


def test_just_before_a_token_refills_the_request_is_refused(
    limiter: RateLimiter, clock: FakeClock
) -> None:
    rpm = 30  # one token every two seconds; the steps below are exact binary fractions
    burst(limiter, 1, rpm, rpm)
    clock.advance(60.0 / rpm - 0.25)
    assert limiter.acquire(1, rpm) == pytest.approx(0.25)
    clock.advance(0.25)
    assert limiter.acquire(1, rpm) == 0.0


def test_a_bucket_never_holds_more_than_rpm(limiter: RateLimiter, clock: FakeClock) -> None:
    rpm = 4
    limiter.acquire(1, rpm)
    clock.advance(IDLE_SECONDS / 2)  # long enough to refill many times over
    granted = burst(limiter, 1, rpm, rpm + 1)
    assert granted[:rpm] == [0.0] * rpm
    assert granted[rpm] > 0


def test_over_a_long_run_the_rate_is_rpm(limiter: RateLimiter, clock: FakeClock) -> None:
    rpm = 30
    granted = 0
    for _ in range(600 * 10):  # ten minutes in tenths of a second, trying every time
        if limiter.acquire(1, rpm) == 0.0:
            granted += 1
        clock.advance(0.1)
    assert rpm * 10 <= granted <= rpm * 10 + rpm  # the minute's burst, then the rate


@pytest.mark.parametrize("rpm", [0, -1])
def test_rpm_zero_or_less_is_unlimited(limiter: RateLimiter, rpm: int) -> None:
    assert burst(limiter, 1, rpm, 10_000) == [0.0] * 10_000
    assert limiter._buckets == {}


def test_keys_are_limited_independently(limiter: RateLimiter) -> None:
    burst(limiter, 1, 3, 3)
    assert limiter.acquire(1, 3) > 0
    assert burst(limiter, 2, 3, 3) == [0.0] * 3
    assert limiter.acquire(2, 3) > 0


def test_an_unlimited_key_does_not_affect_a_limited_one(limiter: RateLimiter) -> None:
    burst(limiter, 1, 0, 100)
    assert burst(limiter, 2, 2, 2) == [0.0, 0.0]


@pytest.mark.parametrize(
    ("wait", "header"),
    [(0.0, "1"), (0.001, "1"), (0.5, "1"), (1.0, "1"), (1.0001, "2"), (11.2, "12"), (60.0, "60")],
)
def test_retry_after_rounds_up_to_at_least_one_second(wait: float, header: str) -> None:
    assert RateLimiter.retry_after(wait) == header


def test_retry_after_of_a_real_refusal_covers_the_wait(limiter: RateLimiter) -> None:
    burst(limiter, 1, 7, 7)
    wait = limiter.acquire(1, 7)
    assert int(RateLimiter.retry_after(wait)) >= wait


def test_idle_buckets_are_swept(limiter: RateLimiter, clock: FakeClock) -> None:
    for key_id in (1, 2, 3):
        limiter.acquire(key_id, 10)
    assert set(limiter._buckets) == {1, 2, 3}
    clock.advance(IDLE_SECONDS / 2)
    limiter.acquire(3, 10)
    clock.advance(IDLE_SECONDS / 2 + 1)
    limiter.acquire(4, 10)
    assert set(limiter._buckets) == {3, 4}


def test_nothing_is_swept_before_idle_seconds(limiter: RateLimiter, clock: FakeClock) -> None:
    limiter.acquire(1, 10)
    clock.advance(IDLE_SECONDS - 1)
    limiter.acquire(2, 10)
    assert set(limiter._buckets) == {1, 2}


def test_a_swept_key_starts_again_with_a_full_bucket(
    limiter: RateLimiter, clock: FakeClock
) -> None:
    burst(limiter, 1, 2, 2)
    assert limiter.acquire(1, 2) > 0
    clock.advance(IDLE_SECONDS + 1)
    limiter.acquire(9, 2)
    assert 1 not in limiter._buckets
    assert burst(limiter, 1, 2, 2) == [0.0, 0.0]


def test_default_clock_is_monotonic_and_works() -> None:
    limiter = RateLimiter()
    assert limiter.acquire(1, 1) == 0.0
    assert 0 < limiter.acquire(1, 1) <= 60.0


def test_peek_says_what_acquire_would_without_taking(
    limiter: RateLimiter, clock: FakeClock
) -> None:
    assert limiter.peek("198.51.100.7", 2) == 0.0
    limiter.acquire("198.51.100.7", 2)
    limiter.acquire("198.51.100.7", 2)
    wait = limiter.peek("198.51.100.7", 2)
    assert wait == pytest.approx(30.0)
    assert limiter.peek("198.51.100.7", 2) == pytest.approx(wait)  # nothing taken
    clock.advance(30.0)
    assert limiter.peek("198.51.100.7", 2) == 0.0
    assert limiter.peek("203.0.113.9", 2) == 0.0  # keys of any hashable kind, apart

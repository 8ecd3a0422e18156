"""Unit tests for apipod_proxy.policy.shared against a real Redis (each test its own prefix)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from urllib.parse import urlsplit

import pytest

from apipod_proxy.policy import shared as sharedlimit
from apipod_proxy.policy.ratelimit import RateLimiter
from apipod_proxy.policy.shared import SharedLimiter, SharedSpend, lease_size
from tests.support.services import RedisSpace
from tests.support.tcpgate import TcpGate


def limiter(space: RedisSpace, url: str | None = None) -> SharedLimiter:
    return SharedLimiter.from_url(url or space.url, space.prefix)


async def burst(shared: SharedLimiter, key_id: int, rpm: int, count: int) -> list[float]:
    return [await shared.acquire(key_id, rpm) for _ in range(count)]


def test_lease_sizes() -> None:
    assert [lease_size(r) for r in (1, 30, 199, 200, 600, 2000, 1_000_000)] == [
        1, 1, 1, 2, 6, 20, 50,
    ]  # fmt: skip


@pytest.mark.parametrize("rpm", [1, 5, 60])
def test_a_fresh_key_bursts_its_minute_then_waits_like_the_local_limiter(
    redis_space: RedisSpace, rpm: int
) -> None:
    async def main() -> None:
        shared = limiter(redis_space)
        assert await burst(shared, 1, rpm, rpm) == [0.0] * rpm
        wait = await shared.acquire(1, rpm)
        local = RateLimiter()
        for _ in range(rpm):
            local.acquire(1, rpm)
        assert wait == pytest.approx(local.acquire(1, rpm), rel=0.1)
        assert shared.retry_after(wait) == RateLimiter.retry_after(wait)
        await shared.aclose()

    asyncio.run(main())


def test_replicas_share_one_bucket(redis_space: RedisSpace) -> None:
    """Three limiters (three replicas) together grant a key its rpm, not 3 x rpm."""

    async def main() -> None:
        replicas = [limiter(redis_space) for _ in range(3)]
        granted = 0
        for i in range(90):
            granted += await replicas[i % 3].acquire(7, 30) == 0.0
        assert granted == 30
        assert all(r.shared for r in replicas)
        for r in replicas:
            await r.aclose()

    asyncio.run(main())


def test_keys_and_prefixes_are_separate(redis_space: RedisSpace) -> None:
    async def main() -> None:
        shared = limiter(redis_space)
        other = SharedLimiter.from_url(redis_space.url, redis_space.prefix + "other:")
        assert await burst(shared, 1, 2, 2) == [0.0, 0.0]
        assert await shared.acquire(1, 2) > 0
        assert await shared.acquire(2, 2) == 0.0
        assert await other.acquire(1, 2) == 0.0
        assert redis_space.keys() == [
            f"{redis_space.prefix}other:rl:1", f"{redis_space.prefix}rl:1",
            f"{redis_space.prefix}rl:2",
        ]  # fmt: skip
        assert 0 < redis_space.client().pttl(f"{redis_space.prefix}rl:1") <= 61_000
        await shared.aclose()
        await other.aclose()

    asyncio.run(main())


def test_unlimited_keys_never_ask_redis(redis_space: RedisSpace) -> None:
    async def main() -> None:
        shared = limiter(redis_space)
        assert await burst(shared, 1, 0, 50) == [0.0] * 50
        assert shared.round_trips == 0
        await shared.aclose()

    asyncio.run(main())


def test_high_limits_lease_tokens_in_batches(redis_space: RedisSpace) -> None:
    async def main() -> None:
        shared = limiter(redis_space)
        assert await burst(shared, 1, 1_000_000, 200) == [0.0] * 200
        assert shared.round_trips == 200 // sharedlimit.MAX_LEASE
        await shared.aclose()

    asyncio.run(main())


def test_a_lease_lapses_so_no_replica_hoards_tokens(
    redis_space: RedisSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sharedlimit, "LEASE_SECONDS", 0.05)

    async def main() -> None:
        a, b = limiter(redis_space), limiter(redis_space)
        assert await a.acquire(1, 400) == 0.0  # leases 4, keeps 3
        taken = 1
        await asyncio.sleep(0.1)
        while await b.acquire(1, 400) == 0.0:
            taken += 1
        # a's 3 leftover tokens lapsed unused: the key got 400 less at most one lease.
        assert 400 - lease_size(400) <= taken <= 400
        assert a._leases[1].expires < time.monotonic()
        await a.aclose()
        await b.aclose()

    asyncio.run(main())


def test_unreachable_redis_falls_back_per_process_and_comes_back(
    redis_space: RedisSpace, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sharedlimit, "RETRY_SECONDS", 0.2)
    parts = urlsplit(redis_space.url)
    gate = TcpGate(parts.hostname or "127.0.0.1", parts.port or 6379)
    url = f"redis://127.0.0.1:{gate.port}{parts.path}"

    async def main() -> None:
        shared = limiter(redis_space, url)
        assert await burst(shared, 1, 3, 3) == [0.0] * 3
        assert await shared.acquire(1, 3) > 0  # shared bucket is empty
        gate.close()
        with caplog.at_level(logging.WARNING, logger="apipod"):
            started = time.monotonic()
            # Per process now: a fresh local bucket, requests keep flowing.
            assert await burst(shared, 1, 3, 3) == [0.0] * 3
            assert time.monotonic() - started < 2
            assert not shared.shared
            for _ in range(3):  # more failures within the minute: no more warnings
                await asyncio.sleep(0.25)
                await shared.acquire(2, 100)
        warnings = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
        assert len(warnings) == 1
        assert "per process" in warnings[0].getMessage()
        gate.open()
        await asyncio.sleep(0.25)
        assert await shared.acquire(1, 3) > 0  # the shared bucket again: still empty
        assert shared.shared
        await shared.aclose()

    try:
        asyncio.run(main())
    finally:
        gate.stop()


def test_a_hung_redis_costs_at_most_the_timeout() -> None:
    """A server that accepts and never answers: each call gives up after TIMEOUT."""
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]

    async def main() -> None:
        shared = SharedLimiter.from_url(f"redis://127.0.0.1:{port}/0", "x:")
        started = time.monotonic()
        assert await shared.acquire(1, 10) == 0.0  # per process
        assert time.monotonic() - started < sharedlimit.TIMEOUT + 0.5
        started = time.monotonic()
        assert await burst(shared, 1, 10, 5) == [0.0] * 5  # within RETRY_SECONDS: no trip
        assert time.monotonic() - started < 0.05
        await shared.aclose()

    try:
        asyncio.run(main())
    finally:
        silent.close()


def test_spend_adds_up_across_replicas(redis_space: RedisSpace) -> None:
    async def main() -> None:
        import redis.asyncio as redis

        a = SharedSpend(redis.Redis.from_url(redis_space.url), redis_space.prefix)
        b = SharedSpend(redis.Redis.from_url(redis_space.url), redis_space.prefix)
        month, day = (1, "month", "2030-01"), (1, "day", "2030-01-02")
        assert await a.add({month: 0.25, day: 0.25}, ttl=3600) == {
            month: pytest.approx(0.25),
            day: pytest.approx(0.25),
        }
        assert await b.add({month: 0.5, (2, "month", "2030-01"): 1.0}, ttl=3600) == {
            month: pytest.approx(0.75),
            (2, "month", "2030-01"): pytest.approx(1.0),
        }
        assert await a.add({}, ttl=3600) == {}
        totals = await a.totals([month, day, (3, "month", "2030-01")])
        assert totals == {
            month: pytest.approx(0.75),
            day: pytest.approx(0.25),
            (3, "month", "2030-01"): 0.0,
        }
        assert 0 < redis_space.client().ttl(a.counter(month)) <= 3600
        await a.redis.aclose()
        await b.redis.aclose()

    asyncio.run(main())


def test_the_ledger_takes_the_larger_of_its_own_and_every_replicas_spend() -> None:
    from apipod_proxy.policy.budgets import SpendLedger

    ledger, now = SpendLedger(), "2030-01-02T03:04:05Z"
    added = ledger.add(1, 0.5, now)
    day = (1, "day", "2030-01-02")
    assert day in added and len(added) == 3 and set(added.values()) == {0.5}
    assert ledger.add(1, 0.0, now) == {}
    ledger.note_shared({day: 2.0})  # other replicas spent too
    assert ledger.spent(1, "day", now) == 2.0
    assert ledger.spent(1, "month", now) == 0.5  # Redis has not answered for it
    ledger.note_shared({day: 1.0})  # a late, older answer never moves it back
    assert ledger.spent(1, "day", now) == 2.0


def test_spend_skips_redis_for_a_while_after_a_failure() -> None:
    """A charge or a read costs nothing while Redis is known to be away, then it is
    asked again: a hanging Redis delays one request, not every budgeted one."""

    class Failing:
        calls = 0

        async def mget(self, names: list[str]) -> list[bytes]:
            Failing.calls += 1
            raise sharedlimit.RedisError("connection refused")

    now = [100.0]
    spend = SharedSpend(Failing(), "t:", clock=lambda: now[0])  # type: ignore[arg-type]
    slot = (1, "month", "2030-01")

    async def read() -> None:
        await spend.totals([slot])

    with pytest.raises(sharedlimit.RedisError):
        asyncio.run(read())
    with pytest.raises(ConnectionError):
        asyncio.run(read())
    assert Failing.calls == 1
    now[0] += sharedlimit.RETRY_SECONDS
    with pytest.raises(sharedlimit.RedisError):
        asyncio.run(read())
    assert Failing.calls == 2


def test_holds_are_shared_atomic_settled_and_lapse(redis_space: RedisSpace) -> None:
    """HOLD_LUA decides as budgets.admits, across replicas; a settle adds the cost and
    drops the hold in one transaction; a hold never settled lapses."""

    async def main() -> None:
        import redis.asyncio as redis

        a = SharedSpend(redis.Redis.from_url(redis_space.url), redis_space.prefix)
        b = SharedSpend(redis.Redis.from_url(redis_space.url), redis_space.prefix)
        slot = (7, "month", "2030-01")
        assert await a.hold(slot, 0.5, 0.2, "h1", 0.0) == (True, 0.0, 0.0)
        assert await b.hold(slot, 0.5, 0.2, "h2", 0.0) == (True, 0.0, pytest.approx(0.2))
        assert await a.hold(slot, 0.5, 0.2, "h3", 0.0) == (False, 0.0, pytest.approx(0.4))
        # Settled: h1 cost 0.25 (more than its hold); its hold is gone, the cost counts.
        assert await a.add({slot: 0.25}, ttl=3600, release=(7, "h1")) == {slot: pytest.approx(0.25)}
        assert await b.hold(slot, 0.5, 0.1, "h4", 0.0) == (False, 0.25, pytest.approx(0.2))
        assert await b.add({}, ttl=3600, release=(7, "h2")) == {}  # a failure: no cost
        # Alone, a hold larger than what is left is admitted while anything is left ...
        assert await b.hold(slot, 0.5, 3.0, "h5", 0.0) == (True, 0.25, 0.0)
        await b.add({}, ttl=3600, release=(7, "h5"))
        # ... but not once the spend the caller knows of (its ledger) reaches the budget.
        assert await b.hold(slot, 0.5, 0.01, "h6", 0.5) == (False, 0.5, 0.0)
        # A crashed replica's hold lapses at its expiry; the hash itself expires too.
        client = redis_space.client()
        client.hset(a.holds(7), "crashed", "0.4 1")
        assert await a.hold(slot, 0.5, 0.2, "h7", 0.0) == (True, 0.25, 0.0)
        assert client.hkeys(a.holds(7)) == ["h7"]
        usd, expiry = client.hget(a.holds(7), "h7").split()
        assert float(usd) == 0.2
        assert 0 < int(expiry) - time.time() <= sharedlimit.HOLD_TTL_SECONDS + 1
        assert 0 < client.ttl(a.holds(7)) <= sharedlimit.HOLD_TTL_SECONDS
        await a.redis.aclose()
        await b.redis.aclose()

    asyncio.run(main())

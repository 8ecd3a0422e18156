"""Rate limits shared by every replica (REDIS_URL): one token bucket per key in Redis.

The bucket is ratelimit.py's (up to `rpm` tokens, refilled at `rpm / 60` per second,
the same Retry-After), kept in a Redis hash and updated atomically by one Lua script
on Redis's own clock, so N replicas together give a key its rpm, not N x rpm.

A round trip per request would cost every request the trip, so each replica leases
tokens in small batches (`lease_size`: 1 for low limits, where accuracy matters and
requests are few, up to `MAX_LEASE` for high ones) and spends them from memory.
Leased tokens unused after `LEASE_SECONDS` are dropped: a replica cannot sit on a
share of the minute. So a key gets at most its rpm across replicas, and at least its
rpm less one unused lease per replica.

When Redis is unreachable (or slower than `TIMEOUT`), limits fall back to this
process's own buckets, with one warning line a minute, and Redis is tried again
after `RETRY_SECONDS`; requests keep flowing either way. No call waits longer than
`TIMEOUT`, so a hung Redis cannot stall the event loop's requests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import redis.asyncio as redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from .ratelimit import IDLE_SECONDS, RateLimiter

log = logging.getLogger("apipod")

#: Longest wait for Redis on any one call, in seconds.
TIMEOUT: Final = 0.25
#: After a failure, Redis is left alone this long (limits are per process meanwhile).
RETRY_SECONDS: Final = 1.0
#: Warnings about an unreachable Redis, at most one per this many seconds.
WARN_EVERY: Final = 60.0
#: The most tokens one replica leases at once, and how long it may keep them.
MAX_LEASE: Final = 50
LEASE_SECONDS: Final = 1.0
#: rpm / LEASE_DIVISOR tokens per lease: 1 up to rpm 199, 50 from rpm 5,000 on.
LEASE_DIVISOR: Final = 100

#: KEYS[1] the bucket; ARGV rpm, tokens wanted. Returns {granted, seconds to wait}.
TOKEN_BUCKET_LUA: Final = """
local rpm = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = rpm / 60
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1])
local updated = tonumber(state[2])
if tokens == nil or updated == nil then
  tokens = rpm
  updated = now
end
tokens = math.min(rpm, tokens + math.max(0, now - updated) * rate)
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'updated', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((rpm - tokens) / rate * 1000) + 1000)
local wait = 0
if granted == 0 then
  wait = (1 - tokens) / rate
end
return {granted, string.format('%.6f', wait)}
"""


def lease_size(rpm: int) -> int:
    return max(1, min(MAX_LEASE, rpm // LEASE_DIVISOR))


@dataclass(slots=True)
class _Lease:
    tokens: int
    rpm: int
    expires: float


class SharedLimiter:
    """`await acquire(key_id, rpm)`: 0, or the seconds to wait (as RateLimiter.acquire)."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        local: RateLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.local = local or RateLimiter()
        self._clock = clock
        self._script = client.register_script(TOKEN_BUCKET_LUA)
        self._leases: dict[int, _Lease] = {}
        self._last_sweep = clock()
        self._down_until = 0.0
        self._last_warning = -math.inf
        self.shared = True
        #: Round trips made and failed, for tests and the bench.
        self.round_trips = 0
        self.failures = 0

    @classmethod
    def from_url(cls, url: str, prefix: str, **kwargs: object) -> SharedLimiter:
        client = redis.Redis.from_url(
            url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, retry_on_timeout=False
        )
        return cls(client, prefix, **kwargs)  # type: ignore[arg-type]

    def bucket(self, key_id: int) -> str:
        return f"{self.prefix}rl:{key_id}"

    async def acquire(self, key_id: int, rpm: int) -> float:
        if rpm <= 0:
            return 0.0
        now = self._clock()
        lease = self._leases.get(key_id)
        if lease is not None and lease.tokens > 0 and lease.rpm == rpm and lease.expires > now:
            lease.tokens -= 1
            return 0.0
        if now < self._down_until:
            return self.local.acquire(key_id, rpm)
        self._sweep(now)
        try:
            self.round_trips += 1
            async with asyncio.timeout(TIMEOUT):
                granted, wait = await self._script(
                    keys=[self.bucket(key_id)], args=[rpm, lease_size(rpm)]
                )
        except (RedisError, OSError, TimeoutError) as exc:
            self._went_down(exc, now)
            return self.local.acquire(key_id, rpm)
        if not self.shared:
            self.shared = True
            log.warning("Redis is reachable again: rate limits are shared between replicas")
        granted = int(granted)
        if granted == 0:
            return max(float(wait), 0.001)
        if lease is not None and lease.rpm == rpm and lease.expires > now:
            lease.tokens += granted - 1
            lease.expires = now + LEASE_SECONDS
        else:
            self._leases[key_id] = _Lease(granted - 1, rpm, now + LEASE_SECONDS)
        return 0.0

    retry_after = staticmethod(RateLimiter.retry_after)

    def _went_down(self, exc: BaseException, now: float) -> None:
        self.failures += 1
        self.shared = False
        self._down_until = now + RETRY_SECONDS
        self._leases.clear()
        if now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            reason = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
            log.warning(
                "Redis unreachable (%s): rate limits are per process until it is back", reason
            )

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < IDLE_SECONDS:
            return
        self._last_sweep = now
        for key_id in [k for k, lease in self._leases.items() if lease.expires < now]:
            del self._leases[key_id]

    async def aclose(self) -> None:
        await self.redis.aclose()


#: A spend counter: (key id, period name, period start), as budgets.py's ledger keys them.
Slot = tuple[int, str, str]
#: Spend counters expire this long after their last update; a longer period (a month,
#: all time) then goes on from the database's figure, which the ledger also reads.
SPEND_TTL_SECONDS: Final = 40 * 86400
#: A budget hold (budgets.py) lapses this long after admission if it is never settled
#: (a replica that crashed mid-request): short enough not to block a key for long. A
#: request running longer loses its hold in Redis (not in its own replica) early.
HOLD_TTL_SECONDS: Final = 900

#: KEYS[1] the spend counter of the key's budget slot, KEYS[2] the key's holds (a hash:
#: hold id -> "USD expiry"); ARGV budget, amount, hold id, ttl, the spend the caller
#: knows of (its ledger's, which may be ahead of the counter). Drops lapsed holds, then
#: decides as budgets.admits and, if admitted, adds the hold. Returns
#: {admitted, spent, held}.
HOLD_LUA: Final = """
local budget = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
local ttl = tonumber(ARGV[4])
local spent = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(ARGV[5]))
local now = tonumber(redis.call('TIME')[1])
local held = 0
local holds = redis.call('HGETALL', KEYS[2])
for i = 1, #holds, 2 do
  local usd, expiry = string.match(holds[i + 1], '^(%S+) (%S+)$')
  if usd == nil or tonumber(expiry) <= now then
    redis.call('HDEL', KEYS[2], holds[i])
  else
    held = held + tonumber(usd)
  end
end
local admitted = 0
if spent < budget and (held <= 0 or amount <= 0 or spent + held + amount <= budget + 1e-9) then
  admitted = 1
  redis.call('HSET', KEYS[2], ARGV[3], string.format('%.17g %d', amount, now + ttl))
  redis.call('EXPIRE', KEYS[2], ttl)
end
return {admitted, string.format('%.17g', spent), string.format('%.17g', held)}
"""


class SharedSpend:
    """Budget spend per key and period, added up across replicas in Redis.

    `add` counts a batch of spend (one INCRBYFLOAT per slot, atomic, in one pipeline)
    and answers every slot's new total for all replicas together, which the caller
    puts in its in-memory ledger; `totals` reads slots (one MGET). A counter expires
    `ttl` seconds after its last update, once its period is over.

    `hold` reserves a request's estimated cost for every replica (HOLD_LUA, atomic);
    `add(..., release=...)` settles it: the cost is added and the hold dropped in one
    transaction, so no replica sees neither.

    budgets.SpendLedger also re-reads every replica's spend from the database with
    each flush (about a second behind); the addon adds each priced request here and
    the ledger takes the larger figure, so a budget is shared at once.
    """

    def __init__(
        self, client: redis.Redis, prefix: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self._clock = clock
        self._hold_script: AsyncScript | None = None  # registered on first use
        #: After a failure Redis is not asked again for RETRY_SECONDS: admission and the
        #: charge at a request's end then cost nothing while it is away.
        self._down_until = 0.0

    def counter(self, slot: Slot) -> str:
        key_id, period, start = slot
        return f"{self.prefix}spend:{key_id}:{period}:{start}"

    def holds(self, key_id: int) -> str:
        return f"{self.prefix}hold:{key_id}"

    async def hold(
        self, slot: Slot, budget: float, amount: float, hold_id: str, known_spent: float
    ) -> tuple[bool, float, float]:
        """Hold `amount` against the key's budget in `slot` unless it does not fit:
        (admitted, every replica's spend, every replica's holds before this one)."""
        self._check_up()
        if self._hold_script is None:
            self._hold_script = self.redis.register_script(HOLD_LUA)
        args = [repr(budget), repr(amount), hold_id, HOLD_TTL_SECONDS, repr(known_spent)]
        try:
            async with asyncio.timeout(TIMEOUT):
                admitted, spent, held = await self._hold_script(
                    keys=[self.counter(slot), self.holds(slot[0])], args=args
                )
        except (RedisError, OSError, TimeoutError):
            self._down_until = self._clock() + RETRY_SECONDS
            raise
        return bool(int(admitted)), float(spent), float(held)

    async def add(
        self, amounts: dict[Slot, float], ttl: int, release: tuple[int, str] | None = None
    ) -> dict[Slot, float]:
        """Add spend per slot and drop the hold `release` (key id, hold id) at once."""
        if not amounts and release is None:
            return {}
        self._check_up()
        try:
            async with asyncio.timeout(TIMEOUT), self.redis.pipeline(transaction=True) as pipe:
                for slot, amount in amounts.items():
                    pipe.incrbyfloat(self.counter(slot), amount)
                    pipe.expire(self.counter(slot), ttl)
                if release is not None:
                    pipe.hdel(self.holds(release[0]), release[1])
                answers = await pipe.execute()
        except (RedisError, OSError, TimeoutError):
            self._down_until = self._clock() + RETRY_SECONDS
            raise
        totals = answers[: 2 * len(amounts) : 2]
        return {slot: float(total) for slot, total in zip(amounts, totals, strict=True)}

    async def totals(self, slots: list[Slot]) -> dict[Slot, float]:
        if not slots:
            return {}
        self._check_up()
        try:
            async with asyncio.timeout(TIMEOUT):
                values = await self.redis.mget([self.counter(slot) for slot in slots])
        except (RedisError, OSError, TimeoutError):
            self._down_until = self._clock() + RETRY_SECONDS
            raise
        return {slot: float(v or 0) for slot, v in zip(slots, values, strict=True)}

    def _check_up(self) -> None:
        """ConnectionError at once while a recent failure says Redis is away."""
        if self._clock() < self._down_until:
            raise ConnectionError("Redis failed less than RETRY_SECONDS ago")

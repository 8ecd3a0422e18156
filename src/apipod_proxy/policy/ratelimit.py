"""Per-key requests-per-minute limits: one token bucket per key, in memory.

A bucket holds up to `rpm` tokens and refills at `rpm / 60` per second, so a key may
burst its whole minute at once but never exceed `rpm` over any minute on average.
Buckets live in this process only: behind N replicas a key gets up to N x rpm.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

#: Buckets untouched this long are full again and can be forgotten.
IDLE_SECONDS = 120.0


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[Hashable, _Bucket] = {}
        self._last_sweep = clock()

    def acquire(self, key_id: Hashable, rpm: int) -> float:
        """Take one request's token; return 0, or the seconds to wait when over the limit."""
        return self._take(key_id, rpm, 1.0)

    def peek(self, key_id: Hashable, rpm: int) -> float:
        """What `acquire` would return, without taking a token."""
        return self._take(key_id, rpm, 0.0)

    def _take(self, key_id: Hashable, rpm: int, cost: float) -> float:
        if rpm <= 0:
            return 0.0
        now = self._clock()
        self._sweep(now)
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = _Bucket(float(rpm), now)
        rate = rpm / 60.0
        bucket.tokens = min(float(rpm), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= cost
            return 0.0
        return (1.0 - bucket.tokens) / rate

    @staticmethod
    def retry_after(wait: float) -> str:
        """Whole seconds for a Retry-After header (never 0, which invites a hot loop)."""
        return str(max(1, math.ceil(wait)))

    def _sweep(self, now: float) -> None:
        """Drop idle buckets once in a while, so memory follows active keys only."""
        if now - self._last_sweep < IDLE_SECONDS:
            return
        self._last_sweep = now
        idle = [k for k, b in self._buckets.items() if now - b.updated > IDLE_SECONDS]
        for key_id in idle:
            del self._buckets[key_id]

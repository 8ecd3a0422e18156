"""The Gateway: all the proxy's long-lived state, built once when the addon loads.

`open_gateway(settings, router)` opens the database, reads ROUTES_FILE and builds every
long-lived part; `Lifecycle.load` calls it and hands the result to the addon, which
builds its pipeline stages from it, and to the sub-addons. Nothing here runs per
request: the stages (pipeline/) get the parts they use, never this whole object, so a
unit test can build one stage alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from .config import Settings
from .endpoints import ENDPOINTS, Endpoints
from .flowstate import Traffic
from .metrics import Metrics
from .pipeline.accounting import Accounting
from .pipeline.usage import UsageRecorder
from .policy.budgets import SpendLedger
from .policy.forwarding import Forwarding
from .policy.pricing import Plans, open_routes_file
from .policy.ratelimit import RateLimiter
from .policy.routing import Router, RoutesFile
from .policy.shared import SharedLimiter, SharedSpend
from .storage.backend import key_cache_for, open_store
from .storage.keycache import MISS, KeyCache
from .storage.records import KeyRecord
from .storage.requestlog import RequestLog
from .storage.sqlite import KeyStore
from .upstream.models import ModelList
from .upstream.probe import Upstream
from .upstream.quota import Cooldowns

T = TypeVar("T")

#: Threads for database work; /health has one of its own (`health_pool`).
DB_THREADS = 4


@dataclass(slots=True)
class Gateway:
    """What the request path, the endpoints and the timed jobs share, for the process's
    life. Built by `open_gateway`; a test may build one from parts."""

    settings: Settings
    router: Router
    plans: Plans
    #: What reaches the upstream (policy/forwarding.py); [forward] rows from ROUTES_FILE too.
    forwarding: Forwarding
    store: KeyStore
    key_cache: KeyCache
    upstream: Upstream
    models: ModelList
    #: The paths the proxy answers itself (endpoints/): one table, one guard.
    endpoints: Endpoints
    metrics: Metrics
    #: Models out of upstream quota, kept out of alias rotation until their reset.
    cooldowns: Cooldowns
    limiter: RateLimiter
    accounting: Accounting
    traffic: Traffic
    pool: ThreadPoolExecutor
    #: /health's own thread: a load balancer's check must not queue behind database
    #: work that hangs on `pool` (its ping is bounded, storage/postgres.PING_WAIT).
    health_pool: ThreadPoolExecutor
    routes: RoutesFile | None = None
    #: REDIS_URL: rate limits shared by every replica (without it: per process).
    shared_limiter: SharedLimiter | None = None

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking database work off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        """The key's record (None: unknown), from memory while the database is unchanged."""
        version = self.key_cache.version()
        cached = self.key_cache.get(key_hash, version)
        if cached is not MISS:
            return cached  # type: ignore[return-value]
        record = await self.db(self.store.find, key_hash)
        self.key_cache.put(key_hash, record, version)
        return record

    def close(self) -> None:
        """Stop the threads and close the database (after the last usage flush)."""
        self.pool.shutdown(wait=True)
        self.health_pool.shutdown(wait=True)
        self.store.close()


def open_gateway(settings: Settings, router: Router | None = None) -> Gateway:
    """Open the database (a SQLite file created now, or PostgreSQL reached and migrated),
    read ROUTES_FILE, and build every long-lived part.

    Raises ConfigError or RoutesError for a bad setting or routes file, OSError or a
    database error (storage.backend.DB_ERRORS) when the database cannot be opened.
    """
    router = router or Router()
    plans = Plans()  # prices and tiers, from ROUTES_FILE too
    forwarding = Forwarding(ENDPOINTS)
    # Opened now, not on first use: later a vanished SQLite file is an error, not a
    # fresh start.
    store = open_store(settings.database_path, settings.database_url, create_missing=False)
    store.open()
    try:
        routes = None
        if settings.routes_file:
            routes = open_routes_file(settings.routes_file, router, plans, forwarding)
        ledger = SpendLedger()
        ledger.base = store.current_spend()  # every key's spend, at start
    except BaseException:
        store.close()
        raise
    metrics = Metrics()
    cooldowns = Cooldowns()
    metrics.watch_cooldowns(cooldowns)
    upstream = Upstream(
        settings.antigravity_url, settings.antigravity_key, settings.upstream_api, cooldowns
    )
    models = ModelList(settings.antigravity_url, settings.antigravity_key)
    pool = ThreadPoolExecutor(max_workers=DB_THREADS, thread_name_prefix="apipod-db")
    health_pool = ThreadPoolExecutor(1, thread_name_prefix="apipod-health")
    shared_limiter = shared_spend = None
    if settings.redis_url:
        shared_limiter = SharedLimiter.from_url(settings.redis_url, settings.redis_prefix)
        shared_spend = SharedSpend(shared_limiter.redis, settings.redis_prefix)
    request_log = RequestLog(settings.request_log_days)
    traffic = Traffic()
    accounting = Accounting(
        settings=settings,
        router=router,
        plans=plans,
        metrics=metrics,
        models=models,
        ledger=ledger,
        usage=UsageRecorder(),
        request_log=request_log,
        store=store,
        pool=pool,
        traffic=traffic,
        shared_spend=shared_spend,
    )
    endpoints = Endpoints(
        settings=settings,
        store=store,
        metrics=metrics,
        router=router,
        routes=routes,
        plans=plans,
        upstream=upstream,
        cooldowns=cooldowns,
        ledger=ledger,
        models=models,
        pool=pool,
        health_pool=health_pool,
    )
    return Gateway(
        settings=settings,
        router=router,
        plans=plans,
        forwarding=forwarding,
        store=store,
        key_cache=key_cache_for(store),
        upstream=upstream,
        models=models,
        endpoints=endpoints,
        metrics=metrics,
        cooldowns=cooldowns,
        limiter=RateLimiter(),
        accounting=accounting,
        traffic=traffic,
        pool=pool,
        health_pool=health_pool,
        routes=routes,
        shared_limiter=shared_limiter,
    )

"""Scale-out: throughput of 1 vs 2 apipod replicas behind HAProxy, in one run.

    python -m bench.replicas [--rounds 5] [--duration 5] [--no-shared]  (make bench-replicas)

It starts the fast upstream, two apipod replicas sharing one SQLite file (as
`scripts/replicas.sh` runs them on one host), and two HAProxy
instances from Debian's package: one in front of replica 1 alone, one in front of
both. wrk drives each at 16 connections, alternating (A B, B A, ...), and the table
reports medians and the 2/1 ratio, plus replica 1 reached directly, so HAProxy's own
cost shows.

With PostgreSQL and Redis reachable (BENCH_DATABASE_URL, default the local `test`
database, in a schema of its own; BENCH_REDIS_URL, default redis://127.0.0.1:6379/0)
it also runs the shared configuration: two replicas with DATABASE_URL and REDIS_URL
behind HAProxy, and one replica on PostgreSQL reached directly with per-process
limits and with Redis limits, alternating with the rest. The paired difference of
those two is what the shared limiter adds per request (p50 latency and throughput
ratio); the in-process figures time `acquire` alone: the local bucket, the Redis
bucket as leased (the bench key's rpm of 1,000,000 leases 50 tokens a trip), and
a Redis round trip per request.

Read the ratio with the machine in mind: with two cores, wrk, the upstream, HAProxy
and the replicas all compete for the same CPUs, so a second replica cannot double
throughput here; on a host with a core per replica it can.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from bench.load import run_wrk
from bench.services import (
    DEFAULT_MODEL,
    BenchError,
    Service,
    create_key,
    free_port,
    healthy,
    spawn,
    start_apipod,
    start_upstream,
)

HAPROXY_CONFIG = """\
global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend apipod
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance leastconn
{servers}
"""


def start_haproxy(workdir: Path, name: str, backends: list[Service]) -> Service:
    port = free_port()
    servers = "\n".join(
        f"    server r{i} {b.url.removeprefix('http://')}" for i, b in enumerate(backends)
    )
    config = workdir / f"{name}.cfg"
    config.write_text(HAPROXY_CONFIG.format(port=port, servers=servers))
    log = workdir / f"{name}.log"
    process = spawn(["haproxy", "-db", "-f", str(config)], workdir, log)
    service = Service(name, process, f"http://127.0.0.1:{port}", log)
    service.wait_ready(healthy(service.url))
    return service


BENCH_DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
BENCH_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
SHARED = "2 replicas, PostgreSQL + Redis"
PG_LOCAL = "1 replica, PostgreSQL, per-process limits"
PG_REDIS = "1 replica, PostgreSQL + Redis limits"


class SharedServices:
    """A schema of its own in BENCH_DATABASE_URL's database, and a Redis key prefix."""

    def __init__(self) -> None:
        import psycopg
        import redis

        self.schema = "apipod_bench_" + secrets.token_hex(4)
        self.prefix = f"apipod-bench:{secrets.token_hex(4)}:"
        with psycopg.connect(BENCH_DATABASE_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE SCHEMA "{self.schema}"')
        redis.Redis.from_url(BENCH_REDIS_URL, socket_timeout=3).ping()
        option = quote(f"-c search_path={self.schema}")
        separator = "&" if "?" in BENCH_DATABASE_URL else "?"
        self.database_url = f"{BENCH_DATABASE_URL}{separator}options={option}"

    def settings(self, with_redis: bool = True) -> dict[str, str]:
        shared = {"DATABASE_URL": self.database_url}
        if with_redis:
            shared |= {"REDIS_URL": BENCH_REDIS_URL, "REDIS_PREFIX": self.prefix}
        return shared

    def drop(self) -> None:
        import psycopg
        import redis

        with psycopg.connect(BENCH_DATABASE_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        client = redis.Redis.from_url(BENCH_REDIS_URL, socket_timeout=3)
        for key in client.scan_iter(match=self.prefix + "*"):
            client.delete(key)


def limiter_micro(prefix: str, calls: int = 5000) -> dict[str, float]:
    """Microseconds per `acquire` in this process: local, Redis leased, Redis per request."""
    from apipod_proxy.policy import shared as sharedlimit
    from apipod_proxy.policy.ratelimit import RateLimiter

    async def timed(acquire) -> float:
        for _ in range(200):  # warm up: connections, script cache
            await acquire()
        started = time.perf_counter()
        for _ in range(calls):
            await acquire()
        return (time.perf_counter() - started) / calls * 1e6

    async def main() -> dict[str, float]:
        local = RateLimiter()

        async def local_acquire() -> float:
            return local.acquire(1, 1_000_000)

        figures = {"local bucket": await timed(local_acquire)}
        shared = sharedlimit.SharedLimiter.from_url(BENCH_REDIS_URL, prefix + "micro:")
        figures["Redis, leased"] = await timed(lambda: shared.acquire(2, 1_000_000))
        lease = sharedlimit.MAX_LEASE
        sharedlimit.MAX_LEASE = 1
        try:
            figures["Redis, a round trip each"] = await timed(lambda: shared.acquire(3, 1_000_000))
        finally:
            sharedlimit.MAX_LEASE = lease
        await shared.aclose()
        return figures

    return asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--no-shared", action="store_true", help="skip the PostgreSQL + Redis configuration"
    )
    args = parser.parse_args()
    for tool in ("wrk", "haproxy"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed (Debian/Ubuntu: apt-get install {tool})")
    admin_secret = secrets.token_urlsafe(24)
    services: SharedServices | None = None
    if not args.no_shared:
        try:
            services = SharedServices()
        except Exception as exc:
            print(f"PostgreSQL + Redis configuration skipped: {type(exc).__name__}: {exc}")
    started: list[Service] = []
    with tempfile.TemporaryDirectory(prefix="apipod-replicas-") as tmp:
        workdir = Path(tmp)
        database = workdir / "shared.db"
        try:
            upstream = start_upstream(workdir)
            started.append(upstream)
            replicas = [
                start_apipod(workdir, upstream.url, admin_secret, f"replica{i}", database)
                for i in (1, 2)
            ]
            started += replicas
            key = create_key(replicas[0], admin_secret)
            targets = {
                "1 replica": start_haproxy(workdir, "haproxy1", replicas[:1]),
                "2 replicas": start_haproxy(workdir, "haproxy2", replicas),
                "1 replica, no HAProxy": replicas[0],
            }
            started += [targets["1 replica"], targets["2 replicas"]]
            if services is not None:
                shared_replicas = [
                    start_apipod(
                        workdir, upstream.url, admin_secret, f"shared{i}", **services.settings()
                    )
                    for i in (1, 2)
                ]
                pg_local = start_apipod(
                    workdir, upstream.url, admin_secret, "pglocal", **services.settings(False)
                )
                started += [*shared_replicas, pg_local]
                # One key for all of them: the same database.
                shared_key = create_key(pg_local, admin_secret)
                targets[SHARED] = start_haproxy(workdir, "haproxy-shared", shared_replicas)
                targets[PG_LOCAL] = pg_local
                targets[PG_REDIS] = shared_replicas[0]
                started.append(targets[SHARED])
            keys = {name: shared_key if name in (SHARED, PG_LOCAL, PG_REDIS) else key
                    for name in targets}  # fmt: skip
            p50: dict[str, list[float]] = {name: [] for name in targets}
            p50_single: dict[str, list[float]] = {PG_LOCAL: [], PG_REDIS: []}
            rps: dict[str, list[float]] = {name: [] for name in targets}
            errors = 0
            names = list(targets)
            for name in names:  # warm up every target
                run_wrk(targets[name].url, keys[name], DEFAULT_MODEL, args.connections, 1, 1)
            for round_number in range(args.rounds):
                order = names[round_number % len(names) :] + names[: round_number % len(names)]
                for name in order:
                    result = run_wrk(
                        targets[name].url,
                        keys[name],
                        DEFAULT_MODEL,
                        args.connections,
                        1,
                        args.duration,
                    )
                    rps[name].append(result.rps)
                    p50[name].append(result.latency_ms["p50"])
                    if name in (PG_LOCAL, PG_REDIS):  # latency without queueing
                        single = run_wrk(
                            targets[name].url, keys[name], DEFAULT_MODEL, 1, 1, args.duration
                        )
                        p50_single[name].append(single.latency_ms["p50"])
                        errors += single.socket_errors + single.non_2xx
                    errors += result.socket_errors + result.non_2xx
                    print(f"round {round_number + 1}: {name}: {result.rps:.0f} req/s", flush=True)
                time.sleep(0.2)
            micro = limiter_micro(services.prefix) if services is not None else {}
        finally:
            for service in reversed(started):
                service.stop()
            if services is not None:
                services.drop()
    medians = {name: statistics.median(values) for name, values in rps.items()}
    ratios = [two / one for one, two in zip(rps["1 replica"], rps["2 replicas"], strict=True)]
    print()
    print(f"req/s at {args.connections} connections, median of {args.rounds} rounds:")
    for name, value in medians.items():
        print(f"  {name:44} {value:7.0f}")
    print(f"  {'2 replicas / 1 replica':44} {statistics.median(ratios):7.2f}")
    if PG_REDIS in rps:
        added = [r - p for p, r in zip(p50[PG_LOCAL], p50[PG_REDIS], strict=True)]
        ratio = [r / p for p, r in zip(rps[PG_LOCAL], rps[PG_REDIS], strict=True)]
        shared_ratio = [s / o for o, s in zip(rps["2 replicas"], rps[SHARED], strict=True)]
        print(f"  {SHARED} / 2 replicas (SQLite)  {statistics.median(shared_ratio):5.2f}")
        print()
        single = [r - p for p, r in zip(p50_single[PG_LOCAL], p50_single[PG_REDIS], strict=True)]
        print("shared limiter (Redis) against per-process limiting, one replica, paired rounds:")
        print(f"  p50 latency, 1 connection: {statistics.median(p50_single[PG_LOCAL]):.3f} ms "
              f"per process, {statistics.median(p50_single[PG_REDIS]):.3f} ms shared; "
              f"added {statistics.median(single):+.3f} ms (goal <= 0.3)")  # fmt: skip
        print(f"  p50 latency, {args.connections} connections: "
              f"{statistics.median(p50[PG_LOCAL]):.2f} ms per process, "
              f"{statistics.median(p50[PG_REDIS]):.2f} ms shared; "
              f"added {statistics.median(added):+.3f} ms (mostly queueing)")  # fmt: skip
        print(f"  throughput: {statistics.median(ratio):.2f} x (goal >= 0.85)")
        print("  acquire() alone, in-process: " + ", ".join(
            f"{name} {us:.1f} us" for name, us in micro.items()))  # fmt: skip
    print(f"errors (non-2xx or socket): {errors}")
    print(
        f"note: wrk, the upstream, HAProxy and the replicas share {os.cpu_count()} core(s); "
        "a second replica can only use what the others leave."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

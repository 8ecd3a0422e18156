"""Scale-out: throughput of 1 vs 2 apipod replicas behind HAProxy, in one run.

    python bench/replicas.py [--rounds 5] [--duration 5]      (make bench-replicas)

It starts the fast upstream, two apipod replicas sharing one SQLite file (as
`scripts/replicas.sh` and `docker-compose.scale.yml` run them), and two HAProxy
instances from Debian's package: one in front of replica 1 alone, one in front of
both. wrk drives each at 16 connections, alternating (A B, B A, ...), and the table
reports medians and the 2/1 ratio, plus replica 1 reached directly, so HAProxy's own
cost shows.

Read the ratio with the machine in mind: with two cores, wrk, the upstream, HAProxy
and the replicas all compete for the same CPUs, so a second replica cannot double
throughput here; on a host with a core per replica it can.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from load import run_wrk
from services import (
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    for tool in ("wrk", "haproxy"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed (Debian/Ubuntu: apt-get install {tool})")
    admin_secret = secrets.token_urlsafe(24)
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
            rps: dict[str, list[float]] = {name: [] for name in targets}
            errors = 0
            names = list(targets)
            run_wrk(targets["2 replicas"].url, key, DEFAULT_MODEL, args.connections, 1, 2)
            for round_number in range(args.rounds):
                order = names[round_number % len(names) :] + names[: round_number % len(names)]
                for name in order:
                    result = run_wrk(
                        targets[name].url, key, DEFAULT_MODEL, args.connections, 1, args.duration
                    )
                    rps[name].append(result.rps)
                    errors += result.socket_errors + result.non_2xx
                    print(f"round {round_number + 1}: {name}: {result.rps:.0f} req/s", flush=True)
                time.sleep(0.2)
        finally:
            for service in reversed(started):
                service.stop()
    medians = {name: statistics.median(values) for name, values in rps.items()}
    ratios = [two / one for one, two in zip(rps["1 replica"], rps["2 replicas"], strict=True)]
    print()
    print(f"req/s at {args.connections} connections, median of {args.rounds} rounds:")
    for name, value in medians.items():
        print(f"  {name:24} {value:7.0f}")
    print(f"  2 replicas / 1 replica  {statistics.median(ratios):7.2f}")
    print(f"errors (non-2xx or socket): {errors}")
    print(
        f"note: wrk, the upstream, HAProxy and the replicas share {os.cpu_count()} core(s); "
        "a second replica can only use what the others leave."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

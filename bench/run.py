"""Benchmark apipod against bare mitmdump and the upstream itself, in one run.

    python -m bench.run [--rounds 5] [--duration 5] [--quick] [--profile 10]

`make bench` runs this. It starts, each in its own process:

- a fast stand-in upstream (`bench/upstream.py`),
- apipod, exactly as `make run` starts it (`python -m apipod_proxy.serve` in a work
  folder, which execs `mitmdump -q --mode reverse:URL -s addons/apipod.py ...`),
- bare mitmdump of the same version with no addon
  (`mitmdump -q --mode reverse:URL --listen-port P`),

then drives them with wrk and an asyncio SSE client, prints a table and writes the
same figures as JSON to `bench/results/<UTC timestamp>.json`.

This file only ties the parts together: `services.py` starts and costs the
processes (with the tests' process harness, `tests/support/harness.py`), `load.py` drives
them round by round, `report.py` turns the rounds into the summary and the table.

Why it is built this way:

- **Ratios, not absolute numbers.** The machine is small and shared, so absolute
  figures drift from run to run. Apipod is compared with bare mitmdump (what the addon
  costs) and with the upstream reached directly (what the proxy costs in all), all
  measured in the same run; later runs are compared by those ratios.
- **Alternation.** Each round measures every target once, in a rotated order
  (A B C, B C A, C A B, ...), so slow drift (thermal, neighbours, caches) hits all
  targets alike. Each figure is the median over rounds; ratios and differences are
  taken per round first (paired), then their median.
- **Separate processes.** The upstream runs in its own process so its CPU is neither
  the proxy's nor the load generator's. Nothing is pinned: with two cores, the load
  generator, the upstream and the proxy share them, and the output says so.
- **CPU per request** comes from /proc/PID/stat (utime + stime of the whole process,
  all threads) before and after a wrk run, divided by the requests wrk completed. It
  is the figure least disturbed by the shared cores. The event-loop (main) thread's
  share and the context switches per request come from /proc/PID/task/*: mitmproxy
  serves everything on that one thread, so its CPU is what caps throughput, and
  switches show hand-offs to apipod's database threads.
- **Chunk lag** is arrival time minus the send time the upstream writes into each
  chunk, on the same clock. The streams start staggered over one chunk interval, so
  their chunks do not all arrive in the same instant (real streams are not in step).
- **Memory** is VmRSS from /proc/PID/status, taken after a warm-up and again once
  apipod has served at least --soak-requests requests and --soak-streams streams in
  total (the measurement rounds count; a top-up tops the totals off).
- **Profiles on request.** `--profile SECONDS` records apipod and bare mitmdump under
  the same load with py-spy (speedscope files beside the JSON) and summarises the
  event-loop thread's hottest functions and this repository's share of them.
- **It never fails on a number.** Errors (non-2xx answers, broken streams) are counted
  and reported; only a service that does not start, or a missing wrk, stops the run.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench.load import DEFAULTS, Bench, Settings, progress
from bench.report import SHARED_CORES_NOTE, environment, rounded, summarize, table, write_result
from bench.services import BENCH, DEFAULT_MODEL, BenchError, create_key, services

DEFAULT_RESULTS = BENCH / "results"


def parse_args(argv: Sequence[str] | None = None) -> tuple[Settings, Path, bool]:
    parser = argparse.ArgumentParser(
        description="Benchmark apipod against bare mitmdump and the upstream directly.",
        epilog="The defaults take about 4 minutes; --quick about 20 seconds.",
    )
    full = {name: value for name, (value, _) in DEFAULTS.items()}
    quick = {name: value for name, (_, value) in DEFAULTS.items()}
    parser.add_argument("--quick", action="store_true", help=f"smoke-test sizes: {quick}")
    parser.add_argument("--rounds", type=int, help=f"rounds of A/B/C (default {full['rounds']})")
    parser.add_argument(
        "--duration", type=int, help=f"seconds per wrk measurement (default {full['duration']})"
    )
    parser.add_argument(
        "--connections", type=int, default=16, help="wrk connections for req/s (default 16)"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--streams", type=int, help=f"concurrent SSE streams (default {full['streams']})"
    )
    parser.add_argument("--chunks", type=int, help=f"chunks per stream (default {full['chunks']})")
    parser.add_argument(
        "--interval", type=float, default=0.05, help="seconds between chunks (default 0.05)"
    )
    parser.add_argument(
        "--soak-requests",
        type=int,
        help=f"requests apipod serves before the last RSS (default {full['soak_requests']})",
    )
    parser.add_argument(
        "--soak-streams",
        type=int,
        help=f"streams apipod serves before the last RSS (default {full['soak_streams']})",
    )
    parser.add_argument(
        "--warmup", type=int, help=f"warm-up seconds per target (default {full['warmup']})"
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model in the request body (default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="SECONDS",
        help="after the rounds, record apipod and bare mitmdump under load with py-spy "
        "for SECONDS each (speedscope files beside the JSON, a summary in it; needs "
        "py-spy in the venv)",
    )
    parser.add_argument(
        "--budgets",
        choices=("on", "off"),
        help="on: prices, a budget and an allow-list for the bench key, and the request "
        "log (REQUEST_LOG_DAYS=30); off: none of them (REQUEST_LOG_DAYS=0); default: "
        "apipod's defaults. Compare the apipod/bare ratios of an `on` and an `off` run",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=DEFAULT_RESULTS,
        help="where the JSON goes (default bench/results)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work folder (logs, database) and print where it is",
    )
    args = parser.parse_args(argv)
    chosen = quick if args.quick else full
    values = {
        name: chosen[name] if getattr(args, name) is None else getattr(args, name)
        for name in DEFAULTS
    }
    settings = Settings(
        connections=args.connections,
        threads=args.threads,
        interval=args.interval,
        model=args.model,
        profile=args.profile,
        quick=args.quick,
        budgets=args.budgets,
        **values,
    )
    for name in ("rounds", "duration", "connections", "threads", "streams", "chunks", "warmup"):
        if getattr(settings, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if settings.threads > settings.connections:
        parser.error("--threads must not exceed --connections")
    return settings, args.results_dir, args.keep


def plans_env(settings: Settings, workdir: Path) -> dict[str, str]:
    """apipod's environment for `--budgets`: a routing file pricing the bench model, with
    a budget (never reached) and an allow-list for the key's tier, and the request log."""
    if settings.budgets == "off":
        return {"REQUEST_LOG_DAYS": "0"}
    if settings.budgets != "on":
        return {}
    routes = workdir / "routes.toml"
    routes.write_text(
        f'[prices."{settings.model}"]\ninput = 3.0\noutput = 15.0\ncached_input = 0.3\n\n'
        f'[tiers.elite]\nbudget = 1000000000.0\nbudget_period = "month"\n'
        f'models = ["{settings.model}"]\n'
    )
    return {"ROUTES_FILE": str(routes), "REQUEST_LOG_DAYS": "30"}


def run(settings: Settings, results_dir: Path, keep: bool = False) -> Path:
    """The whole benchmark; returns the JSON file written."""
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    if not Path(sys.executable).with_name("mitmdump").exists():
        raise BenchError(f"no mitmdump beside {sys.executable}: run with the venv's python")
    started_at = datetime.now(UTC)
    env = environment()
    admin_secret = secrets.token_urlsafe(24)
    with (
        tempfile.TemporaryDirectory(prefix="apipod-bench-", delete=not keep) as tmp,
        services(Path(tmp), admin_secret, **plans_env(settings, Path(tmp))) as (
            upstream,
            apipod,
            bare,
            translated,
        ),
    ):
        if keep:
            progress(f"work folder (kept): {tmp}")
        key = create_key(apipod, admin_secret)
        bench = Bench(settings, upstream, apipod, bare, key, translated)
        progress(
            f"upstream {upstream.url}, apipod {apipod.url} (pid {apipod.pid}), "
            f"bare {bare.url} (pid {bare.pid}); warming up"
        )
        rss_start = {"apipod": apipod.rss_mb(), "bare": bare.rss_mb()}
        bench.warm_up()
        rss_before = {"apipod": apipod.rss_mb(), "bare": bare.rss_mb()}
        for number in range(settings.rounds):
            bench.run_round(number)
        progress(
            f"soak: topping apipod up to {settings.soak_requests:,} requests and "
            f"{settings.soak_streams:,} streams"
        )
        soak = bench.soak()
        rss_after = {"apipod": apipod.rss_mb(), "bare": bare.rss_mb()}
        rss = {
            f"{target}_{when}": rounded(readings[target], 1)
            for target in ("apipod", "bare")
            for when, readings in (
                ("start", rss_start),
                ("before", rss_before),
                ("after", rss_after),
            )
        }
        rss["apipod_growth"] = rounded(rss_after["apipod"] - rss_before["apipod"], 1)
        rss["requests"] = bench.apipod_requests
        rss["streams"] = bench.apipod_streams
        summary = summarize(bench.rounds, settings, rss, bench.errors, bench.incomplete_streams)
        stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
        profile = None
        if settings.profile:
            results_dir.mkdir(parents=True, exist_ok=True)
            profile = {}
            for target in ("apipod", "bare"):
                progress(f"profile: recording {target} with py-spy for {settings.profile}s")
                path = results_dir / f"{stamp}-{target}.speedscope.json"
                profile[target] = bench.profile(target, path)
    result = {
        "schema": 1,
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": env,
        "settings": asdict(settings),
        "note": SHARED_CORES_NOTE.format(cpus=env["cpus_available"]),
        "summary": summary,
        "soak": soak,
        "profile": profile,
        "rounds": bench.rounds,
    }
    path = write_result(result, results_dir, stamp)
    print(table(result))
    print(f"\nJSON: {path}")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    settings, results_dir, keep = parse_args(argv)
    try:
        run(settings, results_dir, keep)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

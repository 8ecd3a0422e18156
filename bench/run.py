"""Benchmark apipod against bare mitmdump and the upstream itself, in one run.

    python bench/run.py [--rounds 5] [--duration 5] [--quick] [--profile 10]

`make bench` runs this. It starts, each in its own process:

- a fast stand-in upstream (`bench/upstream.py`),
- apipod, exactly as `make run` starts it (`python -m apipod_proxy.serve` in a work
  folder, which execs `mitmdump -q --mode reverse:URL -s addons/apipod.py ...`),
- bare mitmdump of the same version with no addon
  (`mitmdump -q --mode reverse:URL --listen-port P`),

then drives them with wrk and an asyncio SSE client, prints a table and writes the
same figures as JSON to `bench/results/<UTC timestamp>.json`.

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
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
WRK_SCRIPT = BENCH / "post.lua"
DEFAULT_RESULTS = BENCH / "results"
CHAT_PATH = "/v1/chat/completions"
#: A plain model: apipod parses the body and passes it on unchanged. The
#: cursor-pro-sonnet alias costs the same plus one random draw and a re-serialised body;
#: try `--model cursor-pro-sonnet` to see it.
DEFAULT_MODEL = "gemini-3-flash"
UPSTREAM_KEY = "bench-upstream-key-0000"
TARGETS = ("apipod", "bare", "direct")
STREAM_TARGETS = ("apipod", "direct")
SHARED_CORES_NOTE = (
    "load generator (wrk / the SSE client), upstream and proxies share the machine's "
    "{cpus} core(s); nothing is pinned, so figures are noisy: compare ratios"
)
#: py-spy samples per second.
PROFILE_RATE = 200
#: The content of each streamed chunk: "<index>@<send time> " (see bench/upstream.py).
CHUNK_STAMP = re.compile(rb'"content": "(\d+)@(\d+\.\d+) "')


class BenchError(RuntimeError):
    """The run cannot go on (a service did not start, a tool is missing)."""


# --- settings --------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What one run measures; `--quick` only changes the defaults."""

    rounds: int
    duration: int
    connections: int
    threads: int
    streams: int
    chunks: int
    interval: float
    soak_requests: int
    soak_streams: int
    warmup: int
    model: str
    profile: int
    quick: bool


#: (full run, --quick) defaults, for the options `--quick` shortens.
DEFAULTS: dict[str, tuple[Any, Any]] = {
    "rounds": (5, 1),
    "duration": (5, 1),
    "streams": (100, 20),
    "chunks": (20, 10),
    "soak_requests": (20_000, 1_000),
    "soak_streams": (1_000, 40),
    "warmup": (2, 1),
}


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
        **values,
    )
    for name in ("rounds", "duration", "connections", "threads", "streams", "chunks", "warmup"):
        if getattr(settings, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if settings.threads > settings.connections:
        parser.error("--threads must not exceed --connections")
    return settings, args.results_dir, args.keep


# --- processes -------------------------------------------------------------------


def progress(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the table."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Service:
    """A process the harness started: its URL and the /proc readings used to cost it."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """utime + stime of the whole process (all threads), from /proc/PID/stat."""
        return stat_cpu_seconds(Path(f"/proc/{self.pid}/stat"))

    def main_thread(self) -> tuple[float, int]:
        """The main thread's CPU seconds, and context switches summed over all threads.

        mitmproxy's event loop runs on the main thread, so its share is what limits
        throughput; the rest is apipod's database pool. Context switches count thread
        hand-offs (a pool lookup wakes a worker and then the loop again).
        """
        main = stat_cpu_seconds(Path(f"/proc/{self.pid}/task/{self.pid}/stat"))
        switches = 0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread may end meanwhile
                for line in (task / "status").read_text().splitlines():
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
        return main, switches

    def rss_mb(self) -> float:
        """VmRSS from /proc/PID/status, in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise BenchError(f"{self.name}: no VmRSS in /proc/{self.pid}/status")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(
                f"{self.name} exited with {self.process.returncode}:\n{tail(self.log)}"
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def stat_cpu_seconds(stat: Path) -> float:
    """utime + stime from a /proc stat file, in seconds (SC_CLK_TCK ticks)."""
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until(service: Service, ready: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        service.check_alive()
        with contextlib.suppress(httpx.TransportError):
            if ready():
                return
        time.sleep(0.1)
    raise BenchError(f"{service.name} did not become ready in {seconds:g}s:\n{tail(service.log)}")


def start_upstream(workdir: Path) -> Service:
    """bench/upstream.py prints `listening URL` once it accepts connections."""
    log = workdir / "upstream.log"
    with open(log, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, str(BENCH / "upstream.py")],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()
    if not line.startswith("listening "):
        process.kill()
        process.wait()
        raise BenchError(f"upstream did not start:\n{tail(log)}")
    return Service("upstream", process, line.removeprefix("listening "), log)


def start_apipod(
    workdir: Path,
    upstream_url: str,
    admin_secret: str,
    name: str = "apipod",
    database: Path | None = None,
) -> Service:
    """Start apipod exactly as `make run` does, in its own folder (so no `.env` applies).

    Replicas share one `database` (bench/replicas.py); by default each has its own.
    """
    home = workdir / name
    home.mkdir()
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ANTIGRAVITY_", "ADMIN_"))},
        "ANTIGRAVITY_URL": upstream_url,
        "ANTIGRAVITY_KEY": UPSTREAM_KEY,
        "ADMIN_SECRET": admin_secret,
        "PORT": str(port),
        "DATABASE_PATH": str(database or home / "data" / "proxy.db"),
    }
    log = home / "proxy.log"
    with open(log, "wb") as out:
        # The access log (one line per request) goes to this file, as it would to a
        # container's log; serve.py execs mitmdump, so the PID is mitmdump's.
        process = subprocess.Popen(
            [sys.executable, "-m", "apipod_proxy.serve"],
            cwd=home,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    service = Service(name, process, f"http://127.0.0.1:{port}", log)
    wait_until(service, lambda: httpx.get(f"{service.url}/health", timeout=2).status_code == 200)
    return service


def start_bare(workdir: Path, upstream_url: str) -> Service:
    """Bare mitmdump: the same version and mode, no addon."""
    home = workdir / "bare"
    home.mkdir()
    port = free_port()
    mitmdump = Path(sys.executable).with_name("mitmdump")
    log = home / "mitmdump.log"
    command = [str(mitmdump), "-q", "--mode", f"reverse:{upstream_url}"]
    command += ["--listen-port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=home, stdout=out, stderr=subprocess.STDOUT)
    service = Service("bare", process, f"http://127.0.0.1:{port}", log)
    body = {"model": DEFAULT_MODEL, "messages": []}
    wait_until(
        service,
        lambda: httpx.post(service.url + CHAT_PATH, json=body, timeout=2).status_code == 200,
    )
    return service


def create_key(apipod: Service, admin_secret: str) -> str:
    """A customer key through the admin API, as an operator would create one.

    The key gets the highest per-key limit (`rpm` 1,000,000) rather than none, so the
    rate limiter still runs its whole check on every request but never refuses one: the
    bench measures the limiter's cost, not its 429s. Versions without per-key limits
    refuse the field; then the key is created without it.
    """
    url = f"{apipod.url}/admin/create-key"
    headers = {"x-admin-secret": admin_secret}
    response = httpx.post(url, headers=headers, json={"name": "bench", "rpm": 1_000_000})
    if response.status_code == 400:
        response = httpx.post(url, headers=headers, json={"name": "bench"})
    if response.status_code != 201:
        raise BenchError(f"creating a key failed: {response.status_code} {response.text}")
    return str(response.json()["api_key"])


# --- load generators -------------------------------------------------------------


@dataclass
class WrkResult:
    """One wrk run, from the JSON line `bench/post.lua` prints when it is done."""

    requests: int
    seconds: float
    socket_errors: int
    non_2xx: int
    latency_ms: dict[str, float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(
    url: str, key: str, model: str, connections: int, threads: int, seconds: int
) -> WrkResult:
    """POST chat completions for `seconds` over `connections` keep-alive connections."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    command += ["-s", str(WRK_SCRIPT), url + CHAT_PATH]
    env = {**os.environ, "BENCH_KEY": key, "BENCH_MODEL": model}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            raw = json.loads(line.removeprefix("BENCH_JSON "))
            break
    else:
        raise BenchError(
            f"wrk printed no summary (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    socket_errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors"))
    return WrkResult(
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        socket_errors=socket_errors + raw["timeouts"],
        non_2xx=raw["status_errors"],
        latency_ms={k: v / 1000 for k, v in raw["latency_us"].items()},
    )


@dataclass
class StreamResult:
    """Chunk lags of one batch of concurrent streams, in milliseconds."""

    lags_ms: list[float]
    streams: int
    incomplete: int
    seconds: float


async def _stream_batch(
    url: str, key: str, model: str, streams: int, chunks: int, interval: float
) -> StreamResult:
    body = {
        "model": model,
        "stream": True,
        "messages": [{"role": "user", "content": "Count"}],
    }
    headers = {
        "authorization": f"Bearer {key}",
        "x-standin-chunks": str(chunks),
        "x-standin-interval": str(interval),
    }
    lags: list[float] = []
    timeout = aiohttp.ClientTimeout(total=60 + chunks * interval * 4)

    async def one(session: aiohttp.ClientSession, index: int) -> bool:
        # Staggered over one interval: real streams do not tick in step.
        await asyncio.sleep(index * interval / streams)
        seen = 0
        finished = False
        async with session.post(url + CHAT_PATH, json=body, headers=headers) as response:
            if response.status != 200:
                await response.read()
                return False
            async for line in response.content:
                arrived = time.time()
                if stamp := CHUNK_STAMP.search(line):
                    lags.append((arrived - float(stamp[2])) * 1000)
                    seen += 1
                elif line.startswith(b"data: [DONE]"):
                    finished = True
        return finished and seen == chunks

    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        outcomes = await asyncio.gather(
            *(one(session, i) for i in range(streams)), return_exceptions=True
        )
    complete = sum(1 for outcome in outcomes if outcome is True)
    return StreamResult(lags, streams, streams - complete, time.monotonic() - started)


def run_streams(
    url: str, key: str, model: str, streams: int, chunks: int, interval: float
) -> StreamResult:
    return asyncio.run(_stream_batch(url, key, model, streams, chunks, interval))


# --- statistics ------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def per_request(total: float, requests: int, digits: int) -> float | None:
    return round(total / requests, digits) if requests else None


def rounded(value: float, digits: int = 3) -> float | None:
    """JSON has no NaN: a missing figure is null."""
    return None if math.isnan(value) else round(value, digits)


# --- the run ---------------------------------------------------------------------


@dataclass
class Bench:
    """The services of one run, the key, and every sample taken, round by round."""

    settings: Settings
    upstream: Service
    apipod: Service
    bare: Service
    key: str
    rounds: list[dict[str, Any]] = field(default_factory=list)
    apipod_requests: int = 0
    apipod_streams: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TARGETS, 0))
    incomplete_streams: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(STREAM_TARGETS, 0)
    )

    def server(self, target: str) -> Service:
        """The process that answers a target's requests: for `direct`, the upstream."""
        return {"apipod": self.apipod, "bare": self.bare, "direct": self.upstream}[target]

    def load(self, target: str, connections: int, seconds: int) -> dict[str, Any]:
        """One wrk run, with the answering process's CPU per request."""
        server = self.server(target)
        server.check_alive()
        cpu_before = server.cpu_seconds()
        main_before, switches_before = server.main_thread()
        result = run_wrk(
            self.server(target).url,
            self.key,
            self.settings.model,
            connections,
            min(self.settings.threads, connections),
            seconds,
        )
        cpu = server.cpu_seconds() - cpu_before
        main_after, switches_after = server.main_thread()
        self.errors[target] += result.socket_errors + result.non_2xx
        if target == "apipod":
            self.apipod_requests += result.requests
        return {
            "requests": result.requests,
            "seconds": round(result.seconds, 3),
            "rps": round(result.rps, 1),
            "socket_errors": result.socket_errors,
            "non_2xx": result.non_2xx,
            "latency_ms": {k: round(v, 3) for k, v in result.latency_ms.items()},
            "cpu_ms_per_request": per_request(cpu * 1000, result.requests, 4),
            "main_thread_cpu_ms_per_request": per_request(
                (main_after - main_before) * 1000, result.requests, 4
            ),
            "context_switches_per_request": per_request(
                switches_after - switches_before, result.requests, 2
            ),
        }

    def stream(self, target: str, streams: int | None = None) -> dict[str, Any]:
        """One batch of concurrent SSE streams, with chunk-lag percentiles."""
        server = self.server(target)
        server.check_alive()
        s = self.settings
        cpu_before = server.cpu_seconds()
        result = run_streams(
            server.url, self.key, s.model, streams or s.streams, s.chunks, s.interval
        )
        cpu = server.cpu_seconds() - cpu_before
        self.incomplete_streams[target] += result.incomplete
        if target == "apipod":
            self.apipod_streams += result.streams
        return {
            "streams": result.streams,
            "incomplete": result.incomplete,
            "chunks_received": len(result.lags_ms),
            "seconds": round(result.seconds, 3),
            "lag_ms": {
                "p50": rounded(percentile(result.lags_ms, 50)),
                "p90": rounded(percentile(result.lags_ms, 90)),
                "p99": rounded(percentile(result.lags_ms, 99)),
                "max": rounded(max(result.lags_ms, default=math.nan)),
            },
            "cpu_ms_per_stream": round(cpu * 1000 / result.streams, 3),
        }

    def warm_up(self) -> None:
        """Fill caches, pools and the key database's pages before anything is measured."""
        for target in TARGETS:
            self.load(target, self.settings.connections, self.settings.warmup)
        for target in STREAM_TARGETS:
            self.stream(target, streams=min(10, self.settings.streams))
        self.apipod_requests = self.apipod_streams = 0
        self.errors = dict.fromkeys(TARGETS, 0)
        self.incomplete_streams = dict.fromkeys(STREAM_TARGETS, 0)

    def run_round(self, number: int) -> None:
        """Every measurement once per target, in an order rotated by the round number."""
        s = self.settings
        shift = number % len(TARGETS)
        order = TARGETS[shift:] + TARGETS[:shift]
        sample: dict[str, Any] = {"order": list(order), "throughput": {}, "sequential": {}}
        for target in order:
            sample["throughput"][target] = self.load(target, s.connections, s.duration)
        for target in order:
            sample["sequential"][target] = self.load(target, 1, s.duration)
        sample["streams"] = {}
        for target in (t for t in order if t in STREAM_TARGETS):
            sample["streams"][target] = self.stream(target)
        self.rounds.append(sample)
        rps = {t: sample["throughput"][t]["rps"] for t in TARGETS}
        progress(
            f"round {number + 1}/{s.rounds}: req/s apipod {rps['apipod']:.0f}, "
            f"bare {rps['bare']:.0f}, direct {rps['direct']:.0f}; "
            f"apipod lag p50 {sample['streams']['apipod']['lag_ms']['p50']} ms"
        )

    def soak(self) -> dict[str, Any]:
        """Top apipod's totals up to the soak targets; return the load that took."""
        s = self.settings
        extra_requests = extra_streams = 0
        rates = [r["throughput"]["apipod"]["rps"] for r in self.rounds] or [500.0]
        rate = max(median(rates), 50.0)
        while self.apipod_requests < s.soak_requests:
            remaining = s.soak_requests - self.apipod_requests
            seconds = min(max(math.ceil(remaining / rate), 1), 60)
            before = self.apipod_requests
            self.load("apipod", s.connections, seconds)
            extra_requests += self.apipod_requests - before
            if self.apipod_requests == before:
                progress("soak: apipod served no request; giving up the top-up")
                break
        while self.apipod_streams < s.soak_streams:
            count = min(s.streams, s.soak_streams - self.apipod_streams)
            self.stream("apipod", streams=count)
            extra_streams += count
        return {"extra_requests": extra_requests, "extra_streams": extra_streams}

    def profile(self, target: str, path: Path) -> dict[str, Any]:
        """py-spy record of a proxy while wrk loads it: a speedscope file and its summary."""
        s = self.settings
        py_spy = Path(sys.executable).with_name("py-spy")
        if not py_spy.exists():
            progress("profile: py-spy is not in the venv (pip install py-spy); skipped")
            return {"skipped": "py-spy not installed"}
        command = [str(py_spy), "record", "--pid", str(self.server(target).pid), "--duration"]
        command += [str(s.profile), "--rate", str(PROFILE_RATE), "--format", "speedscope"]
        command += ["--output", str(path), "--nonblocking"]
        recorder = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        load = self.load(target, s.connections, s.profile + 1)
        output = recorder.communicate(timeout=s.profile + 60)[0].decode(errors="replace")
        if recorder.returncode != 0 or not path.exists():
            progress(f"profile: py-spy failed:\n{output}")
            return {"skipped": f"py-spy exit {recorder.returncode}"}
        return {"speedscope": str(path), "rps_while_profiled": load["rps"], **profile_summary(path)}


def frame_label(frame: dict[str, Any]) -> str:
    """`function (file)`, the file shortened to its package, repository or stdlib path."""
    file = str(frame.get("file", ""))
    if "site-packages/" in file:
        file = file.split("site-packages/", 1)[1]
    elif file.startswith(f"{ROOT}/"):
        file = file.removeprefix(f"{ROOT}/")
    else:
        file = re.sub(r"^.*/lib/python3\.\d+/", "", file)
    return f"{frame.get('name', '?')} ({file})"


def is_ours(frame: dict[str, Any]) -> bool:
    """A frame from this repository's proxy code (src/ or addons/), not its venv."""
    file = str(frame.get("file", ""))
    return file.startswith((f"{ROOT}/src/", f"{ROOT}/addons/"))


def profile_summary(path: Path, top: int = 15) -> dict[str, Any]:
    """Where the event loop's time goes, from py-spy's speedscope file.

    mitmproxy serves every connection on the main thread's event loop, so its samples
    are the ones that limit throughput; other threads (apipod's database pool) are only
    counted. `self` is the innermost function of a sample, `apipod_code` the share of
    samples with any frame from this repository (hooks and what they call), and
    `apipod_functions` this repository's functions by inclusive share.
    """
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    labels = [frame_label(f) for f in frames]
    ours = [is_ours(f) for f in frames]
    threads: dict[str, int] = {}
    own: Counter[str] = Counter()
    ours_within: Counter[str] = Counter()
    total = with_ours = 0
    for profile in data["profiles"]:
        threads[profile["name"]] = len(profile["samples"])
        if "MainThread" not in profile["name"]:
            continue
        for stack in profile["samples"]:
            if not stack:
                continue
            total += 1
            own[labels[stack[-1]]] += 1
            mine = {labels[i] for i in stack if ours[i]}
            with_ours += bool(mine)
            ours_within.update(mine)

    def share(count: int) -> float:
        return round(100 * count / total, 1) if total else 0.0

    return {
        "main_thread_samples": total,
        "thread_samples": threads,
        "apipod_code_pct": share(with_ours),
        "self_pct": [[share(c), label] for label, c in own.most_common(top)],
        "apipod_functions_pct": [[share(c), label] for label, c in ours_within.most_common(top)],
    }


def summarize(bench: Bench, rss: dict[str, Any]) -> dict[str, Any]:
    """Medians over rounds; ratios and differences are paired within each round first."""
    rounds = bench.rounds
    s = bench.settings

    def med(get: Callable[[dict[str, Any]], float | None]) -> float | None:
        values = [get(r) for r in rounds]
        return rounded(median([math.nan if v is None else v for v in values]))

    def tp(target: str) -> Callable[[dict[str, Any]], float]:
        return lambda r: r["throughput"][target]["rps"]

    def lat(target: str, pct: str) -> Callable[[dict[str, Any]], float]:
        return lambda r: r["sequential"][target]["latency_ms"][pct]

    def added_latency(target: str, pct: str) -> Callable[[dict[str, Any]], float]:
        return lambda r: lat(target, pct)(r) - lat("direct", pct)(r)

    def lag(target: str, pct: str) -> Callable[[dict[str, Any]], float | None]:
        return lambda r: r["streams"][target]["lag_ms"][pct]

    def added_lag(pct: str) -> Callable[[dict[str, Any]], float | None]:
        def get(r: dict[str, Any]) -> float | None:
            a, d = lag("apipod", pct)(r), lag("direct", pct)(r)
            return None if a is None or d is None else a - d

        return get

    def cpu(
        target: str, phase: str = "throughput", figure: str = "cpu_ms_per_request"
    ) -> Callable[[dict[str, Any]], float | None]:
        return lambda r: r[phase][target][figure]

    def stream_cpu(target: str) -> Callable[[dict[str, Any]], float]:
        return lambda r: r["streams"][target]["cpu_ms_per_stream"]

    def cpu_ratio(r: dict[str, Any]) -> float | None:
        a, b = cpu("apipod")(r), cpu("bare")(r)
        return None if a is None or not b else a / b

    return {
        "throughput": {
            "connections": s.connections,
            "rps": {t: med(tp(t)) for t in TARGETS},
            "apipod_over_bare": med(lambda r: ratio(tp("apipod")(r), tp("bare")(r))),
            "apipod_over_direct": med(lambda r: ratio(tp("apipod")(r), tp("direct")(r))),
            "bare_over_direct": med(lambda r: ratio(tp("bare")(r), tp("direct")(r))),
        },
        "latency_sequential_ms": {
            "p50": {t: med(lat(t, "p50")) for t in TARGETS},
            "p99": {t: med(lat(t, "p99")) for t in TARGETS},
            "added_p50": {t: med(added_latency(t, "p50")) for t in ("apipod", "bare")},
            "added_p99": {t: med(added_latency(t, "p99")) for t in ("apipod", "bare")},
        },
        "stream_lag_ms": {
            "streams": s.streams,
            "chunks": s.chunks,
            "interval_ms": round(s.interval * 1000, 1),
            "p50": {t: med(lag(t, "p50")) for t in STREAM_TARGETS},
            "p99": {t: med(lag(t, "p99")) for t in STREAM_TARGETS},
            "added_p50": {"apipod": med(added_lag("p50"))},
            "added_p99": {"apipod": med(added_lag("p99"))},
        },
        "cpu_ms_per_request": {
            "apipod": med(cpu("apipod")),
            "bare": med(cpu("bare")),
            "upstream": med(cpu("direct")),
            "apipod_over_bare": med(cpu_ratio),
            "apipod_main_thread": med(cpu("apipod", figure="main_thread_cpu_ms_per_request")),
            "bare_main_thread": med(cpu("bare", figure="main_thread_cpu_ms_per_request")),
            "apipod_sequential": med(cpu("apipod", "sequential")),
            "bare_sequential": med(cpu("bare", "sequential")),
        },
        "context_switches_per_request": {
            t: med(cpu(t, figure="context_switches_per_request")) for t in ("apipod", "bare")
        },
        "cpu_ms_per_stream": {t: med(stream_cpu(t)) for t in STREAM_TARGETS},
        "rss_mb": rss,
        "errors": dict(bench.errors),
        "incomplete_streams": dict(bench.incomplete_streams),
    }


# --- environment and output ------------------------------------------------------


def git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment() -> dict[str, Any]:
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    wrk_version = (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else ""
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "mitmproxy": importlib.metadata.version("mitmproxy"),
        "aiohttp": importlib.metadata.version("aiohttp"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "wrk": wrk_version.split(" [")[0],
    }


def fmt(value: float | None, spec: str = ".0f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table(result: dict[str, Any]) -> str:
    """The human-readable report: the same figures as the JSON's `summary`."""
    env, s, m = result["environment"], result["settings"], result["summary"]
    tp, lat, lag = m["throughput"], m["latency_sequential_ms"], m["stream_lag_ms"]
    cpu, rss = m["cpu_ms_per_request"], m["rss_mb"]
    ms = ".2f"
    rows: list[tuple[str, ...]] = [
        ("", "apipod", "bare", "direct", "apipod/bare", "apipod/direct"),
        (
            f"req/s, {tp['connections']} connections",
            *(fmt(tp["rps"][t]) for t in TARGETS),
            fmt(tp["apipod_over_bare"], ".2f"),
            fmt(tp["apipod_over_direct"], ".3f"),
        ),
        ("latency p50, sequential (ms)", *(fmt(lat["p50"][t], ms) for t in TARGETS)),
        ("latency p99, sequential (ms)", *(fmt(lat["p99"][t], ms) for t in TARGETS)),
        (
            "  added over direct, p50 (ms)",
            *(fmt(lat["added_p50"][t], "+.2f") for t in ("apipod", "bare")),
        ),
        (
            "  added over direct, p99 (ms)",
            *(fmt(lat["added_p99"][t], "+.2f") for t in ("apipod", "bare")),
        ),
        (
            "SSE chunk lag p50 (ms)",
            fmt(lag["p50"]["apipod"], ms),
            "n/a",
            fmt(lag["p50"]["direct"], ms),
        ),
        (
            "SSE chunk lag p99 (ms)",
            fmt(lag["p99"]["apipod"], ms),
            "n/a",
            fmt(lag["p99"]["direct"], ms),
        ),
        ("  added over direct, p50 (ms)", fmt(lag["added_p50"]["apipod"], "+.2f")),
        ("  added over direct, p99 (ms)", fmt(lag["added_p99"]["apipod"], "+.2f")),
        (
            "CPU ms/request (proxy process)",
            fmt(cpu["apipod"], ".3f"),
            fmt(cpu["bare"], ".3f"),
            fmt(cpu["upstream"], ".3f") + "*",
            fmt(cpu["apipod_over_bare"], ".2f"),
        ),
        (
            "  of which event-loop thread",
            fmt(cpu["apipod_main_thread"], ".3f"),
            fmt(cpu["bare_main_thread"], ".3f"),
        ),
        (
            "context switches/request",
            fmt(m["context_switches_per_request"]["apipod"], ".1f"),
            fmt(m["context_switches_per_request"]["bare"], ".1f"),
        ),
    ]
    rows = [row + ("",) * (len(rows[0]) - len(row)) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        f"apipod bench: {s['rounds']} round(s) x {s['duration']} s, medians; "
        f"mitmproxy {env['mitmproxy']}, Python {env['python']}, {env['nproc']} CPU(s), "
        f"commit {(env['git_commit'] or '?')[:10]}{' (dirty)' if env['git_dirty'] else ''}",
        f"note: {result['note']}",
        "",
    ]
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines += [
        "",
        "* direct column of CPU: the upstream's own CPU per request.",
        f"SSE: {lag['streams']} concurrent streams x {lag['chunks']} chunks every "
        f"{lag['interval_ms']:g} ms; bare mitmdump is not measured (without the addon it "
        "buffers whole responses, so its lag is the stream's length).",
        f"RSS apipod: {fmt(rss['apipod_before'], '.1f')} MiB after warm-up -> "
        f"{fmt(rss['apipod_after'], '.1f')} MiB after {rss['requests']:,} requests + "
        f"{rss['streams']:,} streams ({fmt(rss['apipod_growth'], '+.1f')} MiB); "
        f"bare mitmdump {fmt(rss['bare_before'], '.1f')} -> {fmt(rss['bare_after'], '.1f')} MiB.",
    ]
    for target, profile in (result.get("profile") or {}).items():
        if "self_pct" not in profile:
            continue
        hot = ", ".join(f"{label} {pct:g}%" for pct, label in profile["self_pct"][:6])
        lines.append(
            f"py-spy {target}, event-loop thread: this repo's code in "
            f"{profile['apipod_code_pct']:g}% of {profile['main_thread_samples']} samples; "
            f"hottest (self): {hot}"
        )
    problems = {k: v for k, v in m["errors"].items() if v}
    problems.update({f"{k} incomplete streams": v for k, v in m["incomplete_streams"].items() if v})
    if problems:
        lines.append(f"WARNING: failed requests/streams: {problems} (figures include them)")
    return "\n".join(lines)


def write_result(result: dict[str, Any], results_dir: Path, stamp: str) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{stamp}.json"
    suffix = 1
    while path.exists():
        path = results_dir / f"{stamp}-{suffix}.json"
        suffix += 1
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


@contextlib.contextmanager
def services(workdir: Path, admin_secret: str) -> Iterator[tuple[Service, Service, Service]]:
    """Start upstream, apipod and bare mitmdump; always stop them again."""
    started: list[Service] = []
    try:
        upstream = start_upstream(workdir)
        started.append(upstream)
        # One after the other: on a first run both mitmdumps would create ~/.mitmproxy.
        apipod = start_apipod(workdir, upstream.url, admin_secret)
        started.append(apipod)
        bare = start_bare(workdir, upstream.url)
        started.append(bare)
        yield upstream, apipod, bare
    finally:
        for service in reversed(started):
            service.stop()


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
        services(Path(tmp), admin_secret) as (upstream, apipod, bare),
    ):
        if keep:
            progress(f"work folder (kept): {tmp}")
        key = create_key(apipod, admin_secret)
        bench = Bench(settings, upstream, apipod, bare, key)
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
        summary = summarize(bench, rss)
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

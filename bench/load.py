"""The load a bench run puts on each target, and the samples it takes.

wrk drives plain requests (bench/post.lua prints its figures as one JSON line), an
asyncio client drives concurrent SSE streams and times each chunk, and `Bench` runs
them round by round against apipod, bare mitmdump and the upstream directly,
costing each run in CPU time from /proc (services.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.report import (
    STREAM_TARGETS,
    TARGETS,
    median,
    per_request,
    percentile,
    profile_summary,
    rounded,
)
from bench.services import BENCH, CHAT_PATH, RESPONSES_PATH, BenchError, Service

WRK_SCRIPT = BENCH / "post.lua"
#: py-spy samples per second.
PROFILE_RATE = 200
#: The content of each streamed chunk: "<index>@<send time> " (see bench/upstream.py).
CHUNK_STAMP = re.compile(rb'"content": ?"(\d+)@(\d+\.\d+) "')
#: The same stamp in a Responses `response.output_text.delta` event's `delta`. Only the
#: deltas match: the `.done` events carry the whole text in `text`.
DELTA_STAMP = re.compile(rb'"delta": ?"(\d+)@(\d+\.\d+) "')


@dataclass(frozen=True)
class StreamKind:
    """What a stream target posts, and how its client finds the stamps and the end."""

    path: str
    body: dict[str, Any]
    stamp: re.Pattern[bytes]
    #: The start of the line that ends a complete stream.
    end: bytes


#: A Chat Completions stream (passthrough, translated, direct): chunks, then [DONE].
CHAT_STREAM = StreamKind(
    CHAT_PATH,
    {"stream": True, "messages": [{"role": "user", "content": "Count"}]},
    CHUNK_STAMP,
    b"data: [DONE]",
)
#: A Responses API stream: typed events, ending with `response.completed`.
RESPONSES_STREAM = StreamKind(
    RESPONSES_PATH, {"stream": True, "input": "Count"}, DELTA_STAMP, b"event: response.completed"
)


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
    #: "on": prices, a budget and an allow-list for the bench key, and the request log;
    #: "off": none of them; None: apipod's defaults (request log on, no prices).
    budgets: str | None = None


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


def progress(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the table."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


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
    url: str,
    key: str,
    model: str,
    streams: int,
    chunks: int,
    interval: float,
    kind: StreamKind = CHAT_STREAM,
) -> StreamResult:
    body = {"model": model, **kind.body}
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
        async with session.post(url + kind.path, json=body, headers=headers) as response:
            if response.status != 200:
                await response.read()
                return False
            async for line in response.content:
                arrived = time.time()
                if stamp := kind.stamp.search(line):
                    lags.append((arrived - float(stamp[2])) * 1000)
                    seen += 1
                elif line.startswith(kind.end):
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
    url: str,
    key: str,
    model: str,
    streams: int,
    chunks: int,
    interval: float,
    kind: StreamKind = CHAT_STREAM,
) -> StreamResult:
    return asyncio.run(_stream_batch(url, key, model, streams, chunks, interval, kind))


# --- statistics ------------------------------------------------------------------


# --- the run ---------------------------------------------------------------------


@dataclass
class Bench:
    """The services of one run, the key, and every sample taken, round by round."""

    settings: Settings
    upstream: Service
    apipod: Service
    bare: Service
    key: str
    #: apipod with UPSTREAM_API=anthropic: its chat streams are translated, and it serves
    #: the `responses` target's /v1/responses streams (None: neither is measured).
    translated: Service | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    apipod_requests: int = 0
    apipod_streams: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TARGETS, 0))
    incomplete_streams: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(STREAM_TARGETS, 0)
    )

    def server(self, target: str) -> Service:
        """The process that answers a target's requests: for `direct`, the upstream."""
        services = {"apipod": self.apipod, "bare": self.bare, "direct": self.upstream}
        if self.translated is not None:
            services["translated"] = services["responses"] = self.translated
        return services[target]

    def stream_targets(self, shift: int = 0) -> list[str]:
        """The stream targets this run measures, rotated by `shift`."""
        over_translated = ("translated", "responses")
        targets = [t for t in STREAM_TARGETS if t not in over_translated or self.translated]
        shift %= len(targets)
        return targets[shift:] + targets[:shift]

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
        kind = RESPONSES_STREAM if target == "responses" else CHAT_STREAM
        result = run_streams(
            server.url, self.key, s.model, streams or s.streams, s.chunks, s.interval, kind
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
        for target in self.stream_targets():
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
        for target in self.stream_targets(number):
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

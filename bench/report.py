"""The bench's figures: statistics over rounds, the summary, the table, the JSON file.

Pure functions of what `load.py` measured (plus `environment()`, which reads the
machine and git), so they can be tested on canned rounds without running anything.
Standard library only.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import re
import statistics
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("apipod", "bare", "direct")
#: `translated`: apipod with UPSTREAM_API=anthropic, its chat streams translated from the
#: upstream's Anthropic events (compared with `apipod`, which passes them through).
#: `responses`: the same apipod serving `/v1/responses` streams, the upstream's Anthropic
#: events turned into chat chunks and those into Responses events (also against `apipod`).
STREAM_TARGETS = ("apipod", "translated", "responses", "direct")
#: Issue 19's goal for `/v1/responses` streams: at most this much lag added at p50 (ms).
RESPONSES_GOAL_P50_MS = 1.0
SHARED_CORES_NOTE = (
    "load generator (wrk / the SSE client), upstream and proxies share the machine's "
    "{cpus} core(s); nothing is pinned, so figures are noisy: compare ratios"
)


class RunShape(Protocol):
    """What the summary needs of a run's settings (load.Settings)."""

    connections: int
    streams: int
    chunks: int
    interval: float


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


# --- profiles --------------------------------------------------------------------


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


# --- the summary -----------------------------------------------------------------


def summarize(
    rounds: list[dict[str, Any]],
    s: RunShape,
    rss: dict[str, Any],
    errors: dict[str, int],
    incomplete_streams: dict[str, int],
) -> dict[str, Any]:
    """Medians over rounds; ratios and differences are paired within each round first.

    `rounds` are `load.Bench.rounds`; `errors` and `incomplete_streams` count, per
    target, the failed requests and broken streams of the measured rounds.
    """

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
        # Runs from before the translated row have no such target: a missing figure.
        return lambda r: r["streams"].get(target, {}).get("lag_ms", {}).get(pct)

    def added_lag(
        pct: str, target: str = "apipod", base: str = "direct"
    ) -> Callable[[dict[str, Any]], float | None]:
        def get(r: dict[str, Any]) -> float | None:
            a, d = lag(target, pct)(r), lag(base, pct)(r)
            return None if a is None or d is None else a - d

        return get

    def cpu(
        target: str, phase: str = "throughput", figure: str = "cpu_ms_per_request"
    ) -> Callable[[dict[str, Any]], float | None]:
        return lambda r: r[phase][target][figure]

    def stream_cpu(target: str) -> Callable[[dict[str, Any]], float | None]:
        return lambda r: r["streams"].get(target, {}).get("cpu_ms_per_stream")

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
            # What translating costs a chunk: translated minus passthrough, paired per round.
            "translation_added_p50": med(added_lag("p50", "translated", "apipod")),
            "translation_added_p99": med(added_lag("p99", "translated", "apipod")),
            # What /v1/responses costs a chunk over passthrough, paired per round.
            "responses_added_p50": med(added_lag("p50", "responses", "apipod")),
            "responses_added_p99": med(added_lag("p99", "responses", "apipod")),
            "responses_goal_p50": RESPONSES_GOAL_P50_MS,
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
        "errors": dict(errors),
        "incomplete_streams": dict(incomplete_streams),
    }


# --- environment and output ------------------------------------------------------


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
            "SSE chunk lag p50, translated (ms)",
            fmt(lag["p50"].get("translated"), ms),
            "n/a",
            "n/a",
        ),
        (
            "  added by translating, p50 (ms)",
            fmt(lag.get("translation_added_p50"), "+.2f"),
        ),
        (
            "  added by translating, p99 (ms)",
            fmt(lag.get("translation_added_p99"), "+.2f"),
        ),
        (
            "SSE chunk lag p50, /v1/responses (ms)",
            fmt(lag["p50"].get("responses"), ms),
            "n/a",
            "n/a",
        ),
        (
            "  added over passthrough, p50 (ms)",
            fmt(lag.get("responses_added_p50"), "+.2f"),
        ),
        (
            "  added over passthrough, p99 (ms)",
            fmt(lag.get("responses_added_p99"), "+.2f"),
        ),
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
        "buffers whole responses, so its lag is the stream's length). Translated: apipod "
        "with UPSTREAM_API=anthropic, the upstream's Anthropic events turned into chat "
        "chunks; 'added by translating' is its lag minus passthrough's, paired per round. "
        "/v1/responses: the same apipod serving Responses streams (Anthropic events -> chat "
        "chunks -> Responses events), lag of each output_text.delta; 'added over "
        "passthrough' paired per round the same way; goal: at most "
        f"{lag.get('responses_goal_p50', RESPONSES_GOAL_P50_MS):g} ms added at p50.",
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

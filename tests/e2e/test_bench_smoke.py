"""`python -m bench.run --quick` runs end to end and writes a complete result file.

The numbers themselves are not judged (the bench never fails on a number); this only
keeps the harness working: every service starts, every measurement produces a positive
figure, and apipod answered every request (a bench of 429s or 403s measures nothing).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("wrk") is None,
        reason="wrk is not installed (apt-get install wrk); the bench drives the proxies with it",
    ),
]

#: Figures that must be present and positive, as paths into the result's `summary`.
POSITIVE = [
    ("throughput", "rps", "apipod"),
    ("throughput", "rps", "bare"),
    ("throughput", "rps", "direct"),
    ("throughput", "apipod_over_bare"),
    ("throughput", "apipod_over_direct"),
    ("latency_sequential_ms", "p50", "apipod"),
    ("latency_sequential_ms", "p50", "bare"),
    ("latency_sequential_ms", "p50", "direct"),
    ("latency_sequential_ms", "p99", "apipod"),
    ("latency_sequential_ms", "p99", "bare"),
    ("latency_sequential_ms", "p99", "direct"),
    ("stream_lag_ms", "p50", "apipod"),
    ("stream_lag_ms", "p50", "direct"),
    ("stream_lag_ms", "p99", "apipod"),
    ("stream_lag_ms", "p99", "direct"),
    ("stream_lag_ms", "p50", "translated"),
    ("stream_lag_ms", "p99", "translated"),
    ("stream_lag_ms", "p50", "responses"),
    ("stream_lag_ms", "p99", "responses"),
    ("cpu_ms_per_request", "apipod"),
    ("cpu_ms_per_request", "bare"),
    ("cpu_ms_per_request", "upstream"),
    ("cpu_ms_per_request", "apipod_over_bare"),
    ("cpu_ms_per_request", "apipod_main_thread"),
    ("cpu_ms_per_request", "bare_main_thread"),
    ("rss_mb", "apipod_before"),
    ("rss_mb", "apipod_after"),
    ("rss_mb", "bare_before"),
    ("rss_mb", "bare_after"),
    ("rss_mb", "requests"),
    ("rss_mb", "streams"),
]
#: Differences can be negative on a noisy machine; they must only be numbers.
NUMBERS = [
    ("latency_sequential_ms", "added_p50", "apipod"),
    ("latency_sequential_ms", "added_p99", "apipod"),
    ("latency_sequential_ms", "added_p50", "bare"),
    ("latency_sequential_ms", "added_p99", "bare"),
    ("stream_lag_ms", "added_p50", "apipod"),
    ("stream_lag_ms", "added_p99", "apipod"),
    ("stream_lag_ms", "translation_added_p50"),
    ("stream_lag_ms", "translation_added_p99"),
    ("stream_lag_ms", "responses_added_p50"),
    ("stream_lag_ms", "responses_added_p99"),
    ("rss_mb", "apipod_growth"),
    ("context_switches_per_request", "apipod"),
    ("context_switches_per_request", "bare"),
]
ENVIRONMENT = ["mitmproxy", "python", "nproc", "git_commit", "wrk"]


def dig(data: dict[str, object], path: tuple[str, ...]) -> object:
    for part in path:
        assert isinstance(data, dict) and part in data, f"summary lacks {'.'.join(path)}"
        data = data[part]  # type: ignore[assignment]
    return data


@pytest.mark.timeout(180)
def test_quick_bench_writes_every_figure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--results-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [path] = tmp_path.glob("*.json")
    result = json.loads(path.read_text())
    summary = result["summary"]

    for figure in POSITIVE:
        value = dig(summary, figure)
        assert isinstance(value, int | float) and value > 0, f"{'.'.join(figure)} = {value!r}"
    for figure in NUMBERS:
        value = dig(summary, figure)
        assert isinstance(value, int | float), f"{'.'.join(figure)} = {value!r}"
    for name in ENVIRONMENT:
        assert result["environment"][name], f"environment lacks {name}"
    assert "share" in result["note"]
    assert summary["errors"] == {"apipod": 0, "bare": 0, "direct": 0}, done.stdout
    assert summary["incomplete_streams"] == {
        "apipod": 0,
        "translated": 0,
        "responses": 0,
        "direct": 0,
    }, done.stdout
    assert "SSE chunk lag p50, /v1/responses (ms)" in done.stdout
    assert str(path) in done.stdout
    assert "req/s" in done.stdout

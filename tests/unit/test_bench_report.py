"""Unit tests for bench/report.py: the summary and the table, on canned rounds."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench import report

SHAPE = SimpleNamespace(connections=16, streams=100, chunks=20, interval=0.05)
RSS = {
    "apipod_start": 70.0,
    "apipod_before": 78.9,
    "apipod_after": 84.8,
    "bare_start": 65.0,
    "bare_before": 70.1,
    "bare_after": 71.0,
    "apipod_growth": 5.9,
    "requests": 29_402,
    "streams": 1_000,
}
NO_ERRORS = {"apipod": 0, "bare": 0, "direct": 0}
NO_BROKEN = {"apipod": 0, "direct": 0}


def load(rps: float, p50: float, p99: float, cpu: float, switches: float = 1.0) -> dict[str, Any]:
    """One wrk sample as `load.Bench.load` records it (only the figures the summary reads)."""
    return {
        "rps": rps,
        "latency_ms": {"p50": p50, "p99": p99},
        "cpu_ms_per_request": cpu,
        "main_thread_cpu_ms_per_request": cpu * 0.9,
        "context_switches_per_request": switches,
    }


def stream(p50: float | None, p99: float | None, cpu: float = 3.0) -> dict[str, Any]:
    return {"lag_ms": {"p50": p50, "p99": p99}, "cpu_ms_per_stream": cpu}


def round_(
    rps: tuple[float, float, float],
    lat50: tuple[float, float, float],
    lag50: tuple[float | None, float | None] = (2.0, 0.3),
    responses_behind: float = 0.5,
) -> dict[str, Any]:
    """A round: (apipod, bare, direct) req/s and p50 latency; (apipod, direct) lag p50.
    The translated streams lag 0.4 ms behind apipod's passthrough ones, the /v1/responses
    streams `responses_behind` ms; p99s are ten times the p50s."""
    targets = ("apipod", "bare", "direct")
    cpu = {"apipod": 1.5, "bare": 2.0, "direct": 0.1}
    return {
        "order": list(targets),
        "throughput": {t: load(r, 10.0, 20.0, cpu[t]) for t, r in zip(targets, rps, strict=True)},
        "sequential": {
            t: load(100.0, p, p * 2, cpu[t] + 0.1) for t, p in zip(targets, lat50, strict=True)
        },
        "streams": {
            "apipod": stream(lag50[0], None if lag50[0] is None else lag50[0] * 10),
            "translated": stream(
                None if lag50[0] is None else lag50[0] + 0.4,
                None if lag50[0] is None else (lag50[0] + 0.4) * 10,
            ),
            "responses": stream(
                None if lag50[0] is None else lag50[0] + responses_behind,
                None if lag50[0] is None else (lag50[0] + responses_behind) * 10,
            ),
            "direct": stream(lag50[1], None if lag50[1] is None else lag50[1] * 10),
        },
    }


#: Three rounds where the median of the ratios (0.9) differs from the ratio of the
#: medians (600 / 500 = 1.2): the summary must pair within a round.
ROUNDS = [
    round_((600.0, 500.0, 10_000.0), (1.8, 2.0, 0.1)),
    round_((450.0, 500.0, 9_000.0), (1.7, 2.1, 0.2), (3.0, 0.5), responses_behind=0.7),
    round_((900.0, 1_000.0, 11_000.0), (2.0, 1.9, 0.1), (None, 0.4)),
]
#: The third round has /v1/responses figures but no passthrough ones to pair them with:
#: its responses p50 (5.0) counts in that median, not in the added lag.
ROUNDS[2]["streams"]["responses"] = stream(5.0, 50.0)


@pytest.fixture
def summary() -> dict[str, Any]:
    return report.summarize(ROUNDS, SHAPE, RSS, NO_ERRORS, NO_BROKEN)


# --- statistics ------------------------------------------------------------------------


def test_percentile_interpolates_between_closest_ranks() -> None:
    assert report.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert report.percentile([5.0, 1.0, 3.0], 100) == 5.0
    assert report.percentile([7.0], 99) == 7.0
    assert math.isnan(report.percentile([], 50))


def test_median_skips_missing_figures_and_rounded_makes_them_null() -> None:
    assert report.median([1.0, math.nan, 3.0]) == 2.0
    assert math.isnan(report.median([math.nan]))
    assert report.rounded(math.nan) is None
    assert report.rounded(1.23456) == 1.235
    assert report.ratio(1.0, 0.0) != report.ratio(1.0, 0.0)  # NaN, not a ZeroDivisionError
    assert report.per_request(10.0, 0, 2) is None


# --- summarize ---------------------------------------------------------------------------


def test_throughput_is_the_median_per_target(summary: dict[str, Any]) -> None:
    assert summary["throughput"]["rps"] == {"apipod": 600.0, "bare": 500.0, "direct": 10_000.0}
    assert summary["throughput"]["connections"] == 16


def test_ratios_are_paired_within_each_round(summary: dict[str, Any]) -> None:
    # Per round: 600/500 = 1.2, 450/500 = 0.9, 900/1000 = 0.9 -> median 0.9.
    assert summary["throughput"]["apipod_over_bare"] == 0.9
    assert summary["throughput"]["apipod_over_direct"] == report.rounded(
        sorted([600 / 10_000, 450 / 9_000, 900 / 11_000])[1]
    )


def test_added_latency_is_paired_with_direct_in_the_same_round(summary: dict[str, Any]) -> None:
    latency = summary["latency_sequential_ms"]
    assert latency["p50"] == {"apipod": 1.8, "bare": 2.0, "direct": 0.1}
    # apipod - direct per round: 1.7, 1.5, 1.9 -> 1.7; bare: 1.9, 1.9, 1.8 -> 1.9.
    assert latency["added_p50"] == {"apipod": 1.7, "bare": 1.9}
    assert latency["added_p99"] == {"apipod": 3.4, "bare": 3.8}


def test_a_round_without_a_lag_figure_is_left_out_of_the_lag_medians(
    summary: dict[str, Any],
) -> None:
    lag = summary["stream_lag_ms"]
    assert lag["p50"] == {"apipod": 2.5, "translated": 2.9, "responses": 3.7, "direct": 0.4}
    # apipod - direct where both exist: 1.7 and 2.5 -> 2.1.
    assert lag["added_p50"] == {"apipod": 2.1}
    # translated - passthrough, paired per round.
    assert (lag["translation_added_p50"], lag["translation_added_p99"]) == (0.4, 4.0)
    assert (lag["streams"], lag["chunks"], lag["interval_ms"]) == (100, 20, 50.0)


def test_responses_lag_over_passthrough_is_paired_per_round(summary: dict[str, Any]) -> None:
    lag = summary["stream_lag_ms"]
    # /v1/responses p50: 2.0 + 0.5, 3.0 + 0.7 and 5.0 -> 3.7 (p99s: 25, 37, 50 -> 37).
    assert (lag["p50"]["responses"], lag["p99"]["responses"]) == (3.7, 37.0)
    # Minus passthrough in the same round: 0.5 and 0.7 -> 0.6 (p99: 5 and 7 -> 6), not
    # the difference of the medians (3.7 - 2.5 = 1.2).
    assert (lag["responses_added_p50"], lag["responses_added_p99"]) == (0.6, 6.0)
    assert lag["responses_goal_p50"] == report.RESPONSES_GOAL_P50_MS == 1.0


def test_a_run_from_before_the_responses_row_has_null_responses_figures() -> None:
    rounds = [
        {**r, "streams": {t: v for t, v in r["streams"].items() if t != "responses"}}
        for r in ROUNDS
    ]
    lag = report.summarize(rounds, SHAPE, RSS, NO_ERRORS, NO_BROKEN)["stream_lag_ms"]
    assert lag["p50"]["responses"] is None
    assert (lag["responses_added_p50"], lag["responses_added_p99"]) == (None, None)
    assert lag["translation_added_p50"] == 0.4


def test_cpu_figures_and_their_ratio(summary: dict[str, Any]) -> None:
    cpu = summary["cpu_ms_per_request"]
    assert (cpu["apipod"], cpu["bare"], cpu["upstream"]) == (1.5, 2.0, 0.1)
    assert cpu["apipod_over_bare"] == 0.75
    assert cpu["apipod_main_thread"] == 1.35
    assert cpu["apipod_sequential"] == 1.6
    assert summary["cpu_ms_per_stream"] == {
        "apipod": 3.0,
        "translated": 3.0,
        "responses": 3.0,
        "direct": 3.0,
    }


def test_errors_rss_and_broken_streams_are_carried_over() -> None:
    errors = {"apipod": 3, "bare": 0, "direct": 0}
    summary = report.summarize(ROUNDS, SHAPE, RSS, errors, {"apipod": 1, "direct": 0})
    assert summary["errors"] == errors
    assert summary["incomplete_streams"] == {"apipod": 1, "direct": 0}
    assert summary["rss_mb"] is RSS


def test_no_rounds_give_null_figures_not_an_exception() -> None:
    summary = report.summarize([], SHAPE, RSS, NO_ERRORS, NO_BROKEN)
    assert summary["throughput"]["rps"]["apipod"] is None
    assert summary["latency_sequential_ms"]["added_p50"]["apipod"] is None


# --- the table -----------------------------------------------------------------------------


def result_of(summary: dict[str, Any], profile: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "environment": {
            "mitmproxy": "12.3.1",
            "python": "3.12.1",
            "nproc": 2,
            "git_commit": "0123456789abcdef",
            "git_dirty": False,
        },
        "settings": {"rounds": 3, "duration": 5},
        "note": report.SHARED_CORES_NOTE.format(cpus=2),
        "summary": summary,
        "profile": profile,
    }


def rows(table: str) -> dict[str, list[str]]:
    """Table rows by their label (the first of two alike): the cells after it."""
    found: dict[str, list[str]] = {}
    for line in table.splitlines():
        label, _, rest = line.strip().partition("  ")
        found.setdefault(label, rest.split())
    return found


def test_table_shows_the_summary_figures(summary: dict[str, Any]) -> None:
    table = report.table(result_of(summary))
    lines = table.splitlines()
    assert lines[0].startswith("apipod bench: 3 round(s) x 5 s, medians; mitmproxy 12.3.1")
    assert "commit 0123456789" in lines[0] and "(dirty)" not in lines[0]
    assert lines[1].startswith("note: load generator")
    cells = rows(table)
    assert cells["req/s, 16 connections"] == ["600", "500", "10000", "0.90", "0.060"]
    assert cells["latency p50, sequential (ms)"] == ["1.80", "2.00", "0.10"]
    assert cells["added over direct, p50 (ms)"][:2] == ["+1.70", "+1.90"]
    assert cells["SSE chunk lag p50 (ms)"] == ["2.50", "n/a", "0.40"]
    assert cells["SSE chunk lag p50, /v1/responses (ms)"] == ["3.70", "n/a", "n/a"]
    assert cells["CPU ms/request (proxy process)"] == ["1.500", "2.000", "0.100*", "0.75"]
    assert "RSS apipod: 78.9 MiB after warm-up -> 84.8 MiB after 29,402 requests" in table
    assert "(+5.9 MiB)" in table
    assert "WARNING" not in table


def test_table_header_lines_up_with_its_columns(summary: dict[str, Any]) -> None:
    table = report.table(result_of(summary)).splitlines()
    header = next(line for line in table if "apipod/bare" in line)
    row = next(line for line in table if line.startswith("req/s"))
    # Numbers are right-aligned under their column names.
    assert header.index("direct") + len("direct") == row.index("10000") + len("10000")


def test_table_shows_the_responses_rows_and_states_their_goal(summary: dict[str, Any]) -> None:
    lines = report.table(result_of(summary)).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("SSE chunk lag p50, /v1/resp"))
    # The two rows under it are its own (the translated row has rows of the same shape).
    assert lines[at + 1].split() == ["added", "over", "passthrough,", "p50", "(ms)", "+0.60"]
    assert lines[at + 2].split() == ["added", "over", "passthrough,", "p99", "(ms)", "+6.00"]
    note = "\n".join(lines[at:])
    assert "Anthropic events -> chat chunks -> Responses events" in note
    assert "goal: at most 1 ms added at p50" in note


def test_table_shows_missing_figures_as_a_dash() -> None:
    summary = report.summarize([], SHAPE, RSS, NO_ERRORS, NO_BROKEN)
    assert rows(report.table(result_of(summary)))["req/s, 16 connections"][:3] == ["-"] * 3


def test_table_warns_about_failed_requests_and_broken_streams(summary: dict[str, Any]) -> None:
    summary = {
        **summary,
        "errors": {"apipod": 2, "bare": 0, "direct": 0},
        "incomplete_streams": {"apipod": 0, "direct": 1},
    }
    table = report.table(result_of(summary))
    assert "WARNING: failed requests/streams: {'apipod': 2, 'direct incomplete streams': 1}" in (
        table
    )


def test_table_summarises_a_profile(summary: dict[str, Any]) -> None:
    profile = {
        "apipod": {
            "apipod_code_pct": 9.5,
            "main_thread_samples": 2000,
            "self_pct": [[12.5, "select (selectors.py)"], [3.0, "requestheaders (addon.py)"]],
        },
        "bare": {"skipped": "py-spy not installed"},
    }
    table = report.table(result_of(summary, profile))
    assert (
        "py-spy apipod, event-loop thread: this repo's code in 9.5% of 2000 samples; "
        "hottest (self): select (selectors.py) 12.5%, requestheaders (addon.py) 3%"
    ) in table
    assert "py-spy bare" not in table


def test_write_result_never_overwrites(tmp_path: Path, summary: dict[str, Any]) -> None:
    first = report.write_result({"summary": summary}, tmp_path, "20260101T000000Z")
    second = report.write_result({"summary": summary}, tmp_path, "20260101T000000Z")
    assert first.name == "20260101T000000Z.json"
    assert second.name == "20260101T000000Z-1.json"

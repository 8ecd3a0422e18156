"""The soak in small (`make soak` runs the full one): load while keys churn."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import soak

pytestmark = pytest.mark.slow


def test_short_soak_loses_nothing(tmp_path: Path) -> None:
    report = soak(tmp_path, streams=40, plain=300, connections=16)
    print(f"soak: {report}")
    assert report.errors == []
    assert (report.streams_ok, report.plain_ok) == (40, 300)
    assert report.keys_churned > 0
    assert report.counted == report.served
    assert report.fds[1] <= report.fds[0] + 4
    assert report.rss_kb[1] - report.rss_kb[0] < 40 * 1024

"""Live rates for the dashboard (`GET /admin/stats`), from the in-process metrics.

Counter totals become rates from the samples the dashboard's polls take; the proxy's
own answers (`/health`, `/metrics`, `/admin/*`, the pages) are left out of them, so
that a polling dashboard does not show up as traffic. A leaf: it imports only
`metrics` and `keys`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .. import clock
from ..metrics import Metrics

#: Rates are averaged over the samples of about this many seconds.
RATE_WINDOW = 15.0


@dataclasses.dataclass(frozen=True, slots=True)
class Totals:
    """Counter totals since the process started (API requests only, in snapshots)."""

    requests: float
    client_errors: float
    server_errors: float
    tokens: float


def _totals(metrics: Metrics) -> Totals:
    requests = client = server = tokens = 0.0
    for family in metrics.requests.collect():
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            requests += sample.value
            status = sample.labels.get("status", "")
            if status.startswith("4"):
                client += sample.value
            elif status.startswith("5"):
                server += sample.value
    for family in metrics.tokens.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                tokens += sample.value
    return Totals(requests, client, server, tokens)


def _gauge(gauge: Any) -> float:
    return sum(s.value for family in gauge.collect() for s in family.samples)


class LiveStats:
    """Turns counter totals into rates from the samples the dashboard's polls take.

    Sampling happens only when someone asks, so an unwatched proxy does no work.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._samples: deque[tuple[float, Totals]] = deque()
        self._lock = threading.Lock()
        self._started = clock()
        # Answers to /health, /metrics, /admin/* and the pages, which the metrics count
        # like any request: the live figures subtract them, so that a dashboard polling
        # the proxy does not show up as traffic.
        self._internal = [0, 0, 0]  # requests, 4xx, 5xx

    def count_internal(self, status: int) -> None:
        with self._lock:  # handlers run on several DB threads
            internal = self._internal
            internal[0] += 1
            if 400 <= status < 500:
                internal[1] += 1
            elif status >= 500:
                internal[2] += 1

    def _api_totals(self, metrics: Metrics) -> Totals:
        total = _totals(metrics)
        with self._lock:
            requests, client, server = self._internal
        return Totals(
            max(total.requests - requests, 0),
            max(total.client_errors - client, 0),
            max(total.server_errors - server, 0),
            total.tokens,
        )

    def snapshot(self, metrics: Metrics) -> dict[str, Any]:
        now, totals = self._clock(), self._api_totals(metrics)
        with self._lock:
            samples = self._samples
            samples.append((now, totals))
            # The base is the oldest sample inside the window, or else the one before now.
            while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW:
                samples.popleft()
            then, before = samples[0]
        elapsed = now - then
        requests = totals.requests - before.requests
        rates: dict[str, float | None] = {
            "requests_per_second": None,
            "tokens_per_second": None,
            "error_rate": None,
            "client_error_rate": None,
        }
        if elapsed >= 0.5:
            rates["requests_per_second"] = round(requests / elapsed, 3)
            rates["tokens_per_second"] = round((totals.tokens - before.tokens) / elapsed, 1)
            if requests > 0:
                server = totals.server_errors - before.server_errors
                client = totals.client_errors - before.client_errors
                rates["error_rate"] = round(server / requests, 4)
                rates["client_error_rate"] = round(client / requests, 4)
            else:
                rates["error_rate"] = rates["client_error_rate"] = 0.0
        return {
            "window_seconds": round(elapsed, 1),
            **rates,
            "active_streams": int(_gauge(metrics.active_streams)),
            "uptime_seconds": round(now - self._started),
            "totals": {
                "requests": int(totals.requests),
                "client_errors": int(totals.client_errors),
                "server_errors": int(totals.server_errors),
                "tokens": int(totals.tokens),
            },
            "time": clock.now_text(),
        }

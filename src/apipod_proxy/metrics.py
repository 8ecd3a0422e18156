"""Prometheus metrics, served on `GET /metrics` behind the admin secret.

A private registry (not prometheus-client's global one), so a reloaded addon or a
test that builds several addons never registers a metric twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Container, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .errors import CODES
from .upstream.quota import Cooldowns

#: Distinct model labels kept; clients choose model names, and every label value is a
#: time series held forever, so past this many the rest are counted as "other".
MAX_MODEL_LABELS = 100

#: LLM requests run from milliseconds (errors, cached answers) to minutes (long streams).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: The `code` labels of `apipod_refusals_total`: the proxy's own (errors.CODES), else "other".
REFUSAL_CODES = frozenset(code.code for code in CODES)
#: The proxy's own error bodies are small; a larger body is not read for its code.
MAX_REFUSAL_BODY = 16 * 1024


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "apipod_requests",
            "Requests answered, by routed model and HTTP status.",
            ["model", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "apipod_request_duration_seconds",
            "Time from request headers to the last byte of the response.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.upstream_ttfb = Histogram(
            "apipod_upstream_ttfb_seconds",
            "Time from forwarding a request to the upstream's response headers.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.active_streams = Gauge(
            "apipod_active_streams", "SSE responses being streamed now.", registry=registry
        )
        self.tokens = Counter(
            "apipod_tokens",
            "Tokens reported by the upstream, by routed model and kind (prompt, completion).",
            ["model", "kind"],
            registry=registry,
        )
        self.auth_failures = Counter(
            "apipod_auth_failures",
            "Requests refused by key checks, by reason.",
            ["reason"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "apipod_rate_limited", "Requests refused by the per-key rate limit.", registry=registry
        )
        self.refusals = Counter(
            "apipod_refusals",
            "Requests the proxy answered with an error of its own without forwarding them, "
            "by code (insufficient_quota: a budget; upstream_quota_exhausted: every target "
            "cooling).",
            ["code"],
            registry=registry,
        )
        self.database_up = Gauge(
            "apipod_database_up",
            "1 when the database answered the check made at this scrape, else 0.",
            registry=registry,
        )

        self._models: set[str] = set()

    def watch_cooldowns(self, cooldowns: Cooldowns) -> None:
        """Export `apipod_model_cooldown{model}`, read from `cooldowns` at each scrape."""
        self.registry.register(CooldownCollector(cooldowns))

    def model_label(self, model: str, known: Container[str] | None = None) -> str:
        """The label for `model`: itself, "-" for none, or "other" when it is not `known`
        (clients choose model names: only those of the routing table or the upstream's
        list earn a series) or past MAX_MODEL_LABELS."""
        if not model:
            return "-"
        if model in self._models:
            return model
        if (known is not None and model not in known) or len(self._models) >= MAX_MODEL_LABELS:
            return "other"
        self._models.add(model)
        return model

    def count_refusal(self, body: bytes | None) -> None:
        """Count one of the proxy's own error answers by the `code` in its JSON `body`."""
        code = "other"
        if body and len(body) <= MAX_REFUSAL_BODY:
            try:
                error = json.loads(body).get("error")
                code = error["code"] if error["code"] in REFUSAL_CODES else "other"
            except (ValueError, AttributeError, KeyError, TypeError):
                pass
        self.refusals.labels(code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CooldownCollector(Collector):
    """`apipod_model_cooldown{model}`: seconds until a model whose upstream quota ran out
    is back in alias rotation; 0 once it is (models seen cooling keep their series)."""

    def __init__(self, cooldowns: Cooldowns) -> None:
        self.cooldowns = cooldowns
        self._seen: dict[str, None] = {}

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("apipod_model_cooldown", "", labels=["model"])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "apipod_model_cooldown",
            "Seconds until a model out of upstream quota is back in alias rotation (0: it is).",
            labels=["model"],
        )
        now = time.time()
        active = self.cooldowns.active(now)
        for model in active:
            if len(self._seen) < MAX_MODEL_LABELS:
                self._seen.setdefault(model, None)
        for model in list(self._seen):
            family.add_metric([model], max(0.0, round(active.get(model, now) - now, 1)))
        yield family

"""Unit tests for apipod_proxy.metrics: private registries and the exposition text."""

from __future__ import annotations

import sqlite3

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apipod_proxy.metrics import CONTENT_TYPE, Metrics
from tests.support.gateway import ADMIN_SECRET, make_flow


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_two_instances_do_not_collide() -> None:
    first, second = Metrics(), Metrics()  # a shared registry would raise "Duplicated"
    first.requests.labels(model="m", status="200").inc()
    first.requests.labels(model="m", status="200").inc()
    second.requests.labels(model="m", status="200").inc()
    assert sample(first, "apipod_requests_total", model="m", status="200") == 2
    assert sample(second, "apipod_requests_total", model="m", status="200") == 1


def test_metrics_stay_out_of_the_global_registry() -> None:
    metrics = Metrics()
    metrics.rate_limited.inc()
    assert b"apipod_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


def rendered_samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """render() parsed back: (sample name, labels) -> value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def test_render_contains_every_metric_after_use() -> None:
    metrics = Metrics()
    metrics.requests.labels(model="gemini-3-flash", status="429").inc()
    metrics.duration.observe(0.3)
    metrics.upstream_ttfb.observe(0.02)
    metrics.active_streams.inc()
    metrics.tokens.labels(model="gemini-3-flash", kind="prompt").inc(120)
    metrics.auth_failures.labels(reason="expired").inc()
    metrics.rate_limited.inc()
    assert isinstance(metrics.render(), bytes)
    samples = rendered_samples(metrics)
    expected = {
        ("apipod_requests_total", frozenset({("model", "gemini-3-flash"), ("status", "429")})): 1,
        ("apipod_request_duration_seconds_count", frozenset()): 1,
        ("apipod_request_duration_seconds_bucket", frozenset({("le", "0.5")})): 1,
        ("apipod_request_duration_seconds_bucket", frozenset({("le", "0.25")})): 0,
        ("apipod_upstream_ttfb_seconds_count", frozenset()): 1,
        ("apipod_upstream_ttfb_seconds_bucket", frozenset({("le", "0.025")})): 1,
        ("apipod_active_streams", frozenset()): 1,
        ("apipod_tokens_total", frozenset({("model", "gemini-3-flash"), ("kind", "prompt")})): 120,
        ("apipod_auth_failures_total", frozenset({("reason", "expired")})): 1,
        ("apipod_rate_limited_total", frozenset()): 1,
    }
    for key, value in expected.items():
        assert samples.get(key) == value, key


def test_render_of_a_fresh_instance_has_no_labelled_samples() -> None:
    text = Metrics().render().decode()
    assert "# TYPE apipod_requests_total counter" in text
    assert "apipod_requests_total{" not in text
    assert "apipod_active_streams 0.0" in text.splitlines()


def test_active_streams_goes_up_and_down() -> None:
    metrics = Metrics()
    metrics.active_streams.inc()
    metrics.active_streams.inc()
    metrics.active_streams.dec()
    assert sample(metrics, "apipod_active_streams") == 1


def test_content_type_is_prometheus_text() -> None:
    assert CONTENT_TYPE.startswith("text/plain")


def test_refusals_count_the_proxys_own_codes_and_nothing_else() -> None:
    metrics = Metrics()
    metrics.count_refusal(b'{"error": {"code": "insufficient_quota", "message": "spent"}}')
    metrics.count_refusal(b'{"type": "error", "error": {"code": "insufficient_quota"}}')
    metrics.count_refusal(b'{"error": {"code": "made-up\\n{x=1}"}}')  # never a label of its own
    metrics.count_refusal(b"not json")
    metrics.count_refusal(None)
    assert sample(metrics, "apipod_refusals_total", code="insufficient_quota") == 2
    assert sample(metrics, "apipod_refusals_total", code="other") == 3


def test_database_up_follows_the_scrapes_check(
    make_gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = make_gateway()
    store = gateway.addon.gateway.store

    def scrape() -> str:
        flow = make_flow("GET", "/metrics", b"", [(b"x-admin-secret", ADMIN_SECRET.encode())])
        gateway.send(flow)
        assert flow.response is not None and flow.response.status_code == 200
        return flow.response.get_text()

    assert "apipod_database_up 1.0" in scrape().splitlines()

    def down() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "ping", down)
    assert "apipod_database_up 0.0" in scrape().splitlines()

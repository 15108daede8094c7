"""Buffered counters and the delivery histogram render what prometheus_client's own would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import DELIVERY_BUCKETS, Metrics


def samples(text: str, family: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    for metric in text_string_to_metric_families(text):
        if metric.name == family:
            return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in metric.samples}
    raise AssertionError(f"{family} not rendered")


@settings(max_examples=200)
@given(st.lists(st.floats(min_value=0, max_value=30, allow_nan=False) | st.sampled_from(DELIVERY_BUCKETS), max_size=50))
def test_the_delivery_histogram_matches_prometheus_clients(values: list[float]) -> None:
    ours = Metrics()
    registry = CollectorRegistry()
    reference = Histogram("ktp_delivery_duration_seconds", "x", buckets=DELIVERY_BUCKETS, registry=registry)
    for value in values:
        ours.delivery_duration.observe(value)
        reference.observe(value)
    got = samples(ours.render().decode(), "ktp_delivery_duration_seconds")
    expected = samples(generate_latest(registry).decode(), "ktp_delivery_duration_seconds")
    expected = {key: value for key, value in expected.items() if not key[0].endswith("_created")}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), key


def test_buffered_counts_are_rendered_at_each_scrape() -> None:
    metrics = Metrics()
    counters = metrics.topic("orders")
    assert metrics.topic("orders") is counters
    counters.consumed.inc(500)
    counters.skipped("routed_to_sandbox").inc(499)
    counters.attempts("ok").inc()
    counters.delivered.inc()
    text = metrics.render().decode()
    assert 'ktp_records_consumed_total{topic="orders"} 500.0' in text
    assert 'ktp_records_skipped_total{reason="routed_to_sandbox",topic="orders"} 499.0' in text
    assert 'ktp_delivery_attempts_total{outcome="ok",topic="orders"} 1.0' in text
    counters.delivered.inc()
    assert 'ktp_records_delivered_total{topic="orders"} 2.0' in metrics.render().decode()
    metrics.track_in_flight(lambda: 7)
    assert "ktp_deliveries_in_flight 7.0" in metrics.render().decode()

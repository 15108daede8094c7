"""Every metric of the sidecar, built in one place with one prefix and fixed label names.

Each sidecar owns a :class:`Metrics` with its own registry, so several sidecars in one process
(tests, the demo) do not share counters. Label values are bounded sets (topics, partitions,
reasons); tenants are never labels.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "ktp_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class TopicCounters:
    """The per-record counters of one topic, their label children looked up once: ``labels()``
    validates and locks on every call, which the hot path would pay per record."""

    __slots__ = ("_attempts", "_metrics", "_skipped", "consumed", "delivered", "topic")

    def __init__(self, metrics: Metrics, topic: str) -> None:
        self._metrics = metrics
        self.topic = topic
        self.consumed = metrics.records_consumed.labels(topic)
        self.delivered = metrics.records_delivered.labels(topic)
        self._skipped: dict[str, Counter] = {}
        self._attempts: dict[str, Counter] = {}

    def __repr__(self) -> str:
        return f"TopicCounters(topic={self.topic!r})"

    def skipped(self, reason: str) -> Counter:
        """``ktp_records_skipped_total{topic, reason}``."""
        child = self._skipped.get(reason)
        if child is None:
            child = self._skipped[reason] = self._metrics.records_skipped.labels(self.topic, reason)
        return child

    def attempts(self, outcome: str) -> Counter:
        """``ktp_delivery_attempts_total{topic, outcome}``."""
        child = self._attempts.get(outcome)
        if child is None:
            child = self._attempts[outcome] = self._metrics.delivery_attempts.labels(self.topic, outcome)
        return child


class Metrics:
    """The ``ktp_*`` metrics of one sidecar."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.records_consumed = Counter(
            PREFIX + "records_consumed", "Records fetched from Kafka.", ["topic"], registry=r
        )
        self.records_delivered = Counter(
            PREFIX + "records_delivered", "Records the app took (2xx).", ["topic"], registry=r
        )
        self.records_skipped = Counter(
            PREFIX + "records_skipped",
            "Records not forwarded because another version handles them, by reason.",
            ["topic", "reason"],
            registry=r,
        )
        self.records_dropped = Counter(
            PREFIX + "records_dropped",
            "Records done without delivery: the app said DROP, or dead-lettering is off.",
            ["topic", "reason"],
            registry=r,
        )
        self.bad_input = Counter(
            PREFIX + "bad_input",
            "Record parts we could not use as they were (bad baggage, unsafe header values).",
            ["topic", "kind"],
            registry=r,
        )
        self.delivery_attempts = Counter(
            PREFIX + "delivery_attempts",
            "POSTs to the app, by outcome (ok, http_<status>, timeout, connection_error, ...).",
            ["topic", "outcome"],
            registry=r,
        )
        self.delivery_duration = Histogram(
            PREFIX + "delivery_duration_seconds",
            "Time of one POST to the app, answer included.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.dead_letters = Counter(
            PREFIX + "dead_letters", "Records written to the dead-letter topic.", ["topic", "reason"], registry=r
        )
        self.consumer_lag = Gauge(
            PREFIX + "consumer_lag",
            "High watermark minus the next offset to fetch, per partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.partition_stalled = Gauge(
            PREFIX + "partition_stalled",
            "1 while records wait and the partition's commit position has not moved for "
            "--stall-timeout seconds (see /readyz detail), else 0.",
            ["topic", "partition"],
            registry=r,
        )
        self.commits = Counter(PREFIX + "commits", "Offset commits, by result.", ["result"], registry=r)
        self.route_tenants = Gauge(PREFIX + "route_tenants", "Tenants with a live route in the table.", registry=r)
        self.route_table_version = Gauge(PREFIX + "route_table_version", "Route table version.", registry=r)
        self.route_source_errors = Counter(
            PREFIX + "route_source_errors", "Failures reading the route source.", registry=r
        )
        self.app_healthy = Gauge(PREFIX + "app_healthy", "1 when the app answers its health check.", registry=r)
        self.in_flight = Gauge(PREFIX + "deliveries_in_flight", "Deliveries started and not done.", registry=r)
        # Outcomes are fixed words (ok, bad_header, too_large, broker_timeout, ...), never topics:
        # a publish request names any topic it likes.
        self.publish_requests = Counter(
            PREFIX + "publish_requests", "Requests to the publish endpoint, by outcome.", ["outcome"], registry=r
        )
        self.publish_duration = Histogram(
            PREFIX + "publish_duration_seconds",
            "Time of one publish request, the broker's acknowledgement included.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )

        self._topics: dict[str, TopicCounters] = {}

    def topic(self, topic: str) -> TopicCounters:
        """The per-record counters of ``topic`` (made once per topic)."""
        counters = self._topics.get(topic)
        if counters is None:
            counters = self._topics[topic] = TopicCounters(self, topic)
        return counters

    def track_in_flight(self, count: Callable[[], float]) -> None:
        """``ktp_deliveries_in_flight`` is read from ``count`` at each scrape, rather than set
        twice per delivery."""
        self.in_flight.set_function(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)

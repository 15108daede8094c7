"""Every metric of the sidecar, built in one place with one prefix and fixed label names.

Each sidecar owns a :class:`Metrics` with its own registry, so several sidecars in one process
(tests, the demo) do not share counters. Label values are bounded sets (topics, partitions,
reasons); tenants are never labels.

The counters counted per record or per delivery (:class:`TopicCounters`) and the delivery
duration histogram are added up in plain numbers and handed to prometheus_client when the
metrics are rendered (:meth:`Metrics.render`, i.e. at each scrape): a prometheus_client
increment validates and takes a lock, several times the cost of the addition itself, and the
deliver path did a handful per record.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

PREFIX = "ktp_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DELIVERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class BufferedCounter:
    """One labelled counter's increments, added up here and given to the counter at scrape time
    (:meth:`flush`)."""

    __slots__ = ("_child", "count")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self.count = 0.0

    def __repr__(self) -> str:
        return f"BufferedCounter(pending={self.count})"

    def inc(self, amount: float = 1) -> None:
        self.count += amount

    def flush(self) -> None:
        if self.count:
            self._child.inc(self.count)
            self.count = 0.0


class DurationHistogram(Collector):
    """A histogram without labels whose observations are counted in plain numbers and exposed
    by :meth:`collect` (the registry calls it at each scrape)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(float(b) for b in buckets)
        # One count per bucket (a value falls in the first whose bound is >= it), then +Inf.
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def __repr__(self) -> str:
        return f"DurationHistogram({self.name!r}, count={sum(self.counts)})"

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            cumulative += count
            # The label as prometheus_client writes it (Go's float format): 0.0005, 1.0, +Inf.
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.sum)


class CountsCollector(Collector):
    """A counter family read from a mapping ``{label value: count}`` kept elsewhere (no
    Prometheus call on the path that counts)."""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.counts: Mapping[str, int] = {}

    def __repr__(self) -> str:
        return f"CountsCollector({self.name!r}, {dict(self.counts)!r})"

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, count in sorted(self.counts.items()):
            family.add_metric([value], count)
        yield family


class TopicCounters:
    """The per-record counters of one topic: label children looked up once (``labels()``
    validates and locks on every call) and buffered (see the module doc)."""

    __slots__ = ("_attempts", "_metrics", "_skipped", "attempts_ok", "consumed", "delivered", "topic")

    def __init__(self, metrics: Metrics, topic: str) -> None:
        self._metrics = metrics
        self.topic = topic
        self.consumed = metrics.buffered(metrics.records_consumed.labels(topic))
        self.delivered = metrics.buffered(metrics.records_delivered.labels(topic))
        self._skipped: dict[str, BufferedCounter] = {}
        self._attempts: dict[str, BufferedCounter] = {}
        # attempts("ok"), the outcome of nearly every attempt, looked up once.
        self.attempts_ok = self.attempts("ok")

    def __repr__(self) -> str:
        return f"TopicCounters(topic={self.topic!r})"

    def skipped(self, reason: str) -> BufferedCounter:
        """``ktp_records_skipped_total{topic, reason}``."""
        counter = self._skipped.get(reason)
        if counter is None:
            m = self._metrics
            counter = self._skipped[reason] = m.buffered(m.records_skipped.labels(self.topic, reason))
        return counter

    def attempts(self, outcome: str) -> BufferedCounter:
        """``ktp_delivery_attempts_total{topic, outcome}``."""
        counter = self._attempts.get(outcome)
        if counter is None:
            m = self._metrics
            counter = self._attempts[outcome] = m.buffered(m.delivery_attempts.labels(self.topic, outcome))
        return counter


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
        self.delivery_duration = DurationHistogram(
            PREFIX + "delivery_duration_seconds", "Time of one POST to the app, answer included.", DELIVERY_BUCKETS
        )
        r.register(self.delivery_duration)
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
        self.bulk_requests = Counter(
            PREFIX + "bulk_requests",
            "Bulk POSTs to the app (--bulk-max-records), by outcome (ok, partial, malformed_answer, "
            "http_<status>, timeout, ...).",
            ["topic", "outcome"],
            registry=r,
        )
        self.bulk_entries = Counter(
            PREFIX + "bulk_entries", "Entries sent in bulk POSTs, resent ones included.", ["topic"], registry=r
        )
        self.bulk_unknown_entries = Counter(
            PREFIX + "bulk_unknown_entries",
            "Entry ids in the app's bulk answers that were not in the bulk (ignored).",
            ["topic"],
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

        self._route_catch_ups = CountsCollector(
            PREFIX + "route_catch_ups",
            "Round trips to the route source before deciding records its table did not cover, by "
            "reason (record_ahead_of_clock, table_behind, no_lead, retry).",
            "reason",
        )
        r.register(self._route_catch_ups)

        self._topics: dict[str, TopicCounters] = {}
        self._buffered: list[BufferedCounter] = []

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

    def track_route_catch_ups(self, counts: Mapping[str, int]) -> None:
        """``ktp_route_catch_ups_total{reason}`` is read from ``counts`` (kept by the route
        source) at each scrape."""
        self._route_catch_ups.counts = counts

    def buffered(self, child: Counter) -> BufferedCounter:
        """A buffered counter for ``child``, flushed by :meth:`render`."""
        counter = BufferedCounter(child)
        self._buffered.append(counter)
        return counter

    def render(self) -> bytes:
        """The Prometheus text exposition, buffered counts included."""
        for counter in self._buffered:
            counter.flush()
        return generate_latest(self.registry)

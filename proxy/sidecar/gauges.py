"""Per-partition gauges (consumer lag, stalled) and the stalled partitions shown by ``/readyz``."""

from __future__ import annotations

import time
from typing import Any

from aiokafka import TopicPartition

from proxy.listener.kafka import KafkaListener
from proxy.listener.partitions import Partitions
from proxy.listener.progress import StallDetector
from proxy.metrics import Metrics
from proxy.routes.table import RouteTable


class PartitionGauges:
    """Keeps ``ktp_consumer_lag``, ``ktp_partition_stalled`` and the route-table gauges current."""

    def __init__(
        self,
        metrics: Metrics,
        listener: KafkaListener,
        partitions: Partitions,
        table: RouteTable,
        stall_timeout: float,
    ) -> None:
        self.metrics = metrics
        self.listener = listener
        self.partitions = partitions
        self.table = table
        self.stall_timeout = stall_timeout
        self.stalls: StallDetector[TopicPartition] = StallDetector(stall_timeout)
        self._gauged: set[TopicPartition] = set()

    def __repr__(self) -> str:
        return f"PartitionGauges(gauged={len(self._gauged)}, stall_timeout={self.stall_timeout})"

    def update(self) -> None:
        """Refresh every gauge; partitions no longer assigned lose theirs."""
        m = self.metrics
        now = time.monotonic()
        for tp in self._gauged - self.partitions.tps():
            # Revoked: its new owner reports it; a frozen last value would mislead alerts.
            labels = (tp.topic, str(tp.partition))
            m.consumer_lag.remove(*labels)
            m.partition_stalled.remove(*labels)
            self.stalls.forget(tp)
            self._gauged.discard(tp)
        for state in self.partitions:
            tp = state.tp
            highwater = self.listener.highwater(tp)
            position = state.offsets.position
            if highwater is None or position is None:
                continue
            lag = max(highwater - position, 0)
            self.stalls.observe(tp, position, lag, now)
            labels = (tp.topic, str(tp.partition))
            m.consumer_lag.labels(*labels).set(lag)
            m.partition_stalled.labels(*labels).set(1 if self.stalls.is_stalled(tp, now) else 0)
            self._gauged.add(tp)
        m.route_tenants.set(len(self.table))
        m.route_table_version.set(self.table.version)

    def stalled_detail(self) -> dict[str, Any]:
        """Stalled partitions, for ``/readyz``, with why each is not fetched."""
        self.update()
        now = time.monotonic()
        stalled = {
            f"{tp.topic}[{tp.partition}]": {
                "seconds": round(stall.seconds, 1),
                "position": stall.position,
                "lag": stall.lag,
                "paused": sorted(self._pause_reasons(tp)),
            }
            for tp, stall in sorted(self.stalls.stalled(now).items(), key=lambda item: item[0])
        }
        return {"stalled_partitions": stalled, "stall_timeout": self.stall_timeout}

    def _pause_reasons(self, tp: TopicPartition) -> set[str]:
        """Why ``tp`` is not fetched: the listener's pauses, and backpressure."""
        reasons = set(self.listener.paused(tp))
        if tp in self.partitions.blocked:
            reasons.add("backpressure")
        return reasons

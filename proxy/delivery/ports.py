"""What delivery needs from the parts around it, as narrow interfaces.

The dispatcher is written against these, not against the Kafka listener, the health checker or
the HTTP client, so its retry, ordering and backpressure logic can be exercised with small
stand-ins; the sidecar passes the real parts (:class:`~proxy.listener.kafka.KafkaListener`,
:class:`~proxy.upstream.health.AppHealth`, :class:`~proxy.upstream.http.HttpUpstream`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from aiokafka import TopicPartition

from proxy.upstream.http import AppAnswer


class Upstream(Protocol):
    """The app: one POST per delivery. Raises ``AppConnectError`` when nothing listens,
    ``AppTimeout`` when the app does not answer in time, ``AppUnavailable`` otherwise."""

    async def post(self, body: bytes, headers: Mapping[str, str]) -> AppAnswer: ...


class Health(Protocol):
    """Whether the app can take deliveries now."""

    @property
    def healthy(self) -> bool: ...

    async def wait_healthy(self) -> None: ...

    def mark_unhealthy(self, why: str) -> None: ...


class Pauser(Protocol):
    """Pauses fetching of partitions for a named reason (a partition is fetched again once no
    reason holds)."""

    def pause(self, tps: Iterable[TopicPartition], reason: str) -> None: ...

    def resume(self, tps: Iterable[TopicPartition], reason: str) -> None: ...

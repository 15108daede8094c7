"""KafkaListener: our downstream. One aiokafka consumer with manual commits, rebalance callbacks
and partition pauses that several parts may ask for at once.

A partition is paused while any reason holds (``app_unhealthy``, ``backpressure``,
``retrying``); pausing rather than not polling keeps heartbeats and rebalances going.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from proxy.kafka import KafkaConnection

log = logging.getLogger(__name__)

PartitionsCallback = Callable[[frozenset[TopicPartition]], Awaitable[None]]
Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, listener: KafkaListener) -> None:
        self._listener = listener

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._listener._revoked(frozenset(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._listener._assigned(frozenset(assigned))


class KafkaListener:
    """Consumes ``topics`` in consumer group ``group``; nothing is committed automatically."""

    def __init__(
        self,
        connection: KafkaConnection,
        *,
        group: str,
        topics: tuple[str, ...],
        on_assigned: PartitionsCallback,
        on_revoked: PartitionsCallback,
        auto_offset_reset: str = "latest",
        client_id: str = "ktp-sidecar",
        group_instance_id: str | None = None,
        consumer_options: dict[str, Any] | None = None,
    ) -> None:
        self.connection = connection
        self.group = group
        self.topics = topics
        self.joined = False
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._pauses: dict[TopicPartition, set[str]] = defaultdict(set)
        self._consumer_kwargs: dict[str, Any] = dict(
            group_id=group,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset=auto_offset_reset,
            **(consumer_options or {}),
        )
        self._consumer: AIOKafkaConsumer | None = None

    def __repr__(self) -> str:
        return f"KafkaListener(group={self.group!r}, topics={self.topics!r}, joined={self.joined})"

    @property
    def consumer(self) -> AIOKafkaConsumer:
        """The underlying consumer, for seeks and offset look-ups by the runtime."""
        assert self._consumer is not None, "KafkaListener.start() was not called"
        return self._consumer

    async def start(self) -> None:
        """Connect and join the group. A failed start leaves nothing open, so it can be retried."""
        consumer = AIOKafkaConsumer(**self.connection.client_kwargs(), **self._consumer_kwargs)
        consumer.subscribe(list(self.topics), listener=_Rebalance(self))
        # Set before start(): the group may be joined, and the rebalance callbacks run, before
        # start() returns.
        self._consumer = consumer
        try:
            await consumer.start()
        except BaseException:
            self._consumer = None
            await consumer.stop()
            raise

    async def stop(self) -> None:
        """Leave the group and close. Commit before calling this."""
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def fetch(self, timeout_ms: int, max_records: int) -> Batch:
        result: Batch = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return result

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await self.consumer.commit(offsets)

    async def committed(self, tp: TopicPartition) -> int | None:
        result: int | None = await self.consumer.committed(tp)
        return result

    def assignment(self) -> frozenset[TopicPartition]:
        if self._consumer is None:
            return frozenset()
        return frozenset(self._consumer.assignment())

    def highwater(self, tp: TopicPartition) -> int | None:
        if self._consumer is None:
            return None
        result: int | None = self._consumer.highwater(tp)
        return result

    def pause(self, tps: Iterable[TopicPartition], reason: str) -> None:
        assigned = self.assignment()
        newly = []
        for tp in tps:
            reasons = self._pauses[tp]
            if not reasons and tp in assigned:
                newly.append(tp)
            reasons.add(reason)
        if newly:
            self.consumer.pause(*newly)

    def resume(self, tps: Iterable[TopicPartition], reason: str) -> None:
        assigned = self.assignment()
        freed = []
        for tp in tps:
            reasons = self._pauses.get(tp)
            if not reasons or reason not in reasons:
                continue
            reasons.discard(reason)
            if not reasons and tp in assigned:
                freed.append(tp)
        if freed:
            self.consumer.resume(*freed)

    def paused(self, tp: TopicPartition) -> frozenset[str]:
        return frozenset(self._pauses.get(tp, ()))

    async def _revoked(self, revoked: frozenset[TopicPartition]) -> None:
        log.info("partitions revoked: %s", _fmt(revoked))
        try:
            await self._on_revoked(revoked)
        finally:
            for tp in revoked:
                self._pauses.pop(tp, None)

    async def _assigned(self, assigned: frozenset[TopicPartition]) -> None:
        log.info("partitions assigned: %s", _fmt(assigned))
        self.joined = True
        await self._on_assigned(assigned)
        # Pauses asked for before the assignment (e.g. app unhealthy) take effect now.
        held = [tp for tp in assigned if self._pauses.get(tp)]
        if held:
            self.consumer.pause(*held)


def _fmt(tps: Iterable[TopicPartition]) -> str:
    return ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)) or "none"

"""Where a new sandbox group starts reading.

A sandbox group with no committed offset starts at ``effective_from`` of the earliest route that
sends a tenant to this sandbox, so a sandbox pod started after its route still gets every record
of its tenants; with no such route, at the baseline group's committed offsets (so it does not
replay history nor skip what baseline has not handled yet).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from proxy.kafka import KafkaConnection
from proxy.listener.kafka import KafkaListener

log = logging.getLogger(__name__)


def format_offsets(offsets: Mapping[TopicPartition, int | None]) -> str:
    """``orders[0]@12, orders[1]@None`` for logs, rather than aiokafka's TopicPartition reprs."""
    return ", ".join(f"{tp.topic}[{tp.partition}]@{offset}" for tp, offset in sorted(offsets.items())) or "none"


async def committed_offsets(
    connection: KafkaConnection, group: str, tps: list[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """Another group's committed offsets (OffsetFetch), without joining it."""
    consumer = AIOKafkaConsumer(**connection.client_kwargs(), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {tp: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()


async def position_new_sandbox_group(
    listener: KafkaListener,
    assigned: frozenset[TopicPartition],
    *,
    routed_since: Callable[[], int | None],
    connection: KafkaConnection,
    baseline_group: str,
) -> None:
    """Seek the partitions of ``assigned`` that have no committed offset in the sandbox's group.
    ``routed_since()`` is the earliest ``effective_from`` of a route to this sandbox, if any."""
    committed = await listener.committed_many(sorted(assigned))
    fresh = [tp for tp, offset in committed.items() if offset is None]
    if not fresh:
        return
    since = routed_since()
    if since is not None:
        positions = await listener.offsets_at(since, fresh)
        listener.seek(positions)
        log.info("new sandbox group starts at routes' effective_from %d: %s", since, format_offsets(positions))
        return
    baseline = await committed_offsets(connection, baseline_group, fresh)
    listener.seek({tp: offset for tp, offset in baseline.items() if offset is not None})
    log.info("new sandbox group starts at the baseline group's offsets: %s", format_offsets(baseline))

"""Ordering modes (``--ordering``), by name: which lane a record is delivered in.

A *lane* is a queue delivered one record at a time, in order; records of different lanes run
concurrently (up to ``max_in_flight``). The mode maps a record to its lane's key:

- ``partition``: one lane per partition (records of a partition in offset order);
- ``key``:       one lane per (partition, key): keys of one partition run concurrently;
- ``none``:      one lane per record.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, TypeAlias

from aiokafka import TopicPartition

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

LaneKey: TypeAlias = "Callable[[TopicPartition, ConsumerRecord[bytes, bytes]], Hashable]"


def by_partition(tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> Hashable:
    """One lane per partition."""
    key: Hashable = tp
    return key


def by_key(tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> Hashable:
    """One lane per (partition, record key)."""
    return (tp, record.key)


def unordered(tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> Hashable:
    """One lane per record."""
    return (tp, record.offset)


ORDERINGS: dict[str, LaneKey] = {"partition": by_partition, "key": by_key, "none": unordered}
"""Ordering mode name -> the lane key of a record."""

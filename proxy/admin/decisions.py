"""RecentDecisions: the last decisions of the sidecar, for ``GET /decisions``. Pure, no I/O.

The sidecar decides up to hundreds of thousands of records a second and ``/decisions`` shows the
last few hundred, so a batch hands over only its last :attr:`RecentDecisions.size` records, as
plain offsets and times (a record itself could hold a megabyte value), with the decisions it
already has. Nothing is done per record.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from proxy.routing.filter import Decided

DEFAULT_SIZE = 256


class _Record(Protocol):
    @property
    def offset(self) -> int: ...

    @property
    def timestamp(self) -> int: ...


class RecentDecisions:
    """The last ``size`` decisions, over all partitions."""

    __slots__ = ("_batches", "_held", "size")

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        # (topic, partition, offsets, timestamps, decided) per batch, oldest first.
        self._batches: deque[tuple[str, int, list[int], list[int], Sequence[Decided]]] = deque()
        self._held = 0

    def __repr__(self) -> str:
        return f"RecentDecisions(size={self.size}, held={self._held})"

    def __len__(self) -> int:
        return min(self._held, self.size)

    def add(self, topic: str, partition: int, records: Sequence[_Record], decided: Sequence[Decided]) -> None:
        """One partition's batch and its decisions, in the same order."""
        size = self.size
        if len(records) > size:
            records, decided = records[-size:], decided[-size:]
        self._batches.append(
            (topic, partition, [r.offset for r in records], [r.timestamp for r in records], decided)
        )
        self._held += len(records)
        batches = self._batches
        while self._held - len(batches[0][2]) >= size:
            self._held -= len(batches.popleft()[2])

    def view(self) -> list[dict[str, Any]]:
        """The last decisions, newest first, as ``/decisions`` shows them."""
        shown: list[dict[str, Any]] = []
        for topic, partition, offsets, timestamps, decided in reversed(self._batches):
            for offset, timestamp, entry in zip(reversed(offsets), reversed(timestamps), reversed(decided)):
                if len(shown) == self.size:
                    return shown
                shown.append({
                    "topic": topic,
                    "partition": partition,
                    "offset": offset,
                    "timestamp": timestamp,
                    "tenant": entry.lookup.tenant,
                    "decision": "deliver" if entry.deliver else "skip",
                    "reason": entry.decision.reason,
                })
        return shown

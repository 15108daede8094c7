"""Stalled partitions: records wait and the done watermark does not move. Pure logic, no I/O.

A partition is *stalled* when its lag (high watermark minus the commit position) has stayed above
zero and its commit position has not moved for ``after`` seconds. With the position stuck the lag
can only stay or grow, so this is "no progress while lag grows" without needing new records to
arrive. An idle partition (lag 0) is never stalled, however long it waits.

Typical causes: a record retried for a long time (``Retry-After``, a slow backoff), an app that
hangs without refusing connections, a dead-letter topic that cannot be written. The sidecar
reports stalled partitions in ``/readyz`` detail and as ``ktp_partition_stalled``.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

DEFAULT_STALL_TIMEOUT = 60.0
P = TypeVar("P", bound=Hashable)


@dataclass(slots=True)
class _Progress:
    position: int | None
    lag: int
    # Since when records have waited with the position unchanged; None while idle or moving.
    waiting_since: float | None


@dataclass(frozen=True, slots=True)
class Stall:
    """One stalled partition: how long it has not moved and how many records wait."""

    seconds: float
    position: int | None
    lag: int


class StallDetector(Generic[P]):
    """Fed with each partition's commit position and lag over time; tells which are stalled."""

    def __init__(self, after: float = DEFAULT_STALL_TIMEOUT) -> None:
        if not after > 0:
            raise ValueError(f"stall timeout must be > 0, got {after}")
        self.after = after
        self._partitions: dict[P, _Progress] = {}

    def __repr__(self) -> str:
        return f"StallDetector(after={self.after}, partitions={len(self._partitions)})"

    def observe(self, partition: P, position: int | None, lag: int, now: float) -> None:
        """Record a partition's commit position and lag at time ``now`` (monotonic seconds)."""
        seen = self._partitions.get(partition)
        if seen is None:
            self._partitions[partition] = _Progress(position, lag, now if lag > 0 else None)
            return
        if lag <= 0:
            seen.waiting_since = None
        elif position != seen.position or seen.waiting_since is None:
            # Moved (or records just started waiting): the clock starts again from here.
            seen.waiting_since = now
        seen.position = position
        seen.lag = lag

    def forget(self, partition: P) -> None:
        """The partition was revoked: whoever owns it next reports on it."""
        self._partitions.pop(partition, None)

    def stalled(self, now: float) -> dict[P, Stall]:
        """Partitions stalled at ``now``."""
        return {
            partition: Stall(now - seen.waiting_since, seen.position, seen.lag)
            for partition, seen in self._partitions.items()
            if seen.waiting_since is not None and now - seen.waiting_since >= self.after
        }

    def is_stalled(self, partition: P, now: float) -> bool:
        seen = self._partitions.get(partition)
        return seen is not None and seen.waiting_since is not None and now - seen.waiting_since >= self.after

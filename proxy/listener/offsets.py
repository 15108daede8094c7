"""Commit watermarks: which offset of a partition may be committed.

Records of a partition may finish out of order (``key`` and ``none`` ordering, retries), but a
Kafka commit says "everything before this offset is done". So per partition we track the records
being delivered that are not done yet, and the commit position is the first of them, or one past
the last record fetched when none is outstanding. Skipped records are done the moment they are
decided and are never tracked one by one: a batch tells :meth:`PartitionOffsets.fetched_through`
where it ended. Pure logic, no I/O.
"""

from __future__ import annotations

from collections import deque


class PartitionOffsets:
    """Outstanding records of one partition and the position that may be committed."""

    __slots__ = ("_done", "_fetched_to", "_order", "committed", "position")

    def __init__(self, committed: int | None = None) -> None:
        # Offsets being delivered, in offset order (records are tracked as fetched), and the
        # done ones among them that wait for an earlier one.
        self._order: deque[int] = deque()
        self._done: dict[int, bool] = {}
        # One past the last record fetched, None before the first.
        self._fetched_to: int | None = None
        # Next offset to commit: everything below it is done. None until something is fetched.
        self.position: int | None = committed
        self.committed: int | None = committed

    def __repr__(self) -> str:
        return (
            f"PartitionOffsets(position={self.position}, committed={self.committed}, "
            f"outstanding={self.pending})"
        )

    @property
    def pending(self) -> int:
        """Records being delivered and not done (in flight, queued, or done and waiting for an
        earlier one)."""
        return len(self._order)

    @property
    def dirty(self) -> bool:
        """Whether ``position`` moved past what was last committed."""
        return self.position is not None and self.position != self.committed

    def begin(self, offset: int) -> None:
        """Track a fetched record that is not done yet (it is being delivered)."""
        if not self._order:
            # Everything fetched before it is done; below the first record fetched since the
            # assignment, everything is too (it sits at the committed offset, or where a reset
            # or seek put the consumer). Knowing this now gives a lag even when that very first
            # record is stuck.
            self.position = offset
        self._order.append(offset)
        self._done[offset] = False
        self._fetched_to = offset + 1

    def fetched_through(self, offset: int) -> None:
        """Every record fetched up to ``offset`` is either tracked by :meth:`begin` or done (a
        skipped record is done when it is decided). Once per batch, after its records."""
        self._fetched_to = offset + 1
        if not self._order:
            self.position = offset + 1

    def done(self, offset: int) -> None:
        """A tracked record is done (delivered, dead-lettered or dropped)."""
        done = self._done
        if done.get(offset) is not False:
            return  # abandoned by a revoke, or a duplicate completion
        done[offset] = True
        order = self._order
        while order and done[order[0]]:
            del done[order.popleft()]
        self.position = order[0] if order else self._fetched_to

    def abandon(self) -> None:
        """Forget outstanding records (partition revoked); the position stays where it is."""
        self._order.clear()
        self._done.clear()

    def mark_committed(self, position: int) -> None:
        self.committed = position

"""Commit watermarks: which offset of a partition may be committed.

Records of a partition may finish out of order (``key`` and ``none`` ordering, retries), but a
Kafka commit says "everything before this offset is done". So per partition we track the
records that are not done yet, and the commit position is the first of them (or one past the
last done record when none is outstanding). Pure logic, no I/O.
"""

from __future__ import annotations


class PartitionOffsets:
    """Outstanding records of one partition and the position that may be committed."""

    __slots__ = ("_outstanding", "committed", "position")

    def __init__(self, committed: int | None = None) -> None:
        # offset -> done? Insertion order is offset order: records are tracked as fetched.
        self._outstanding: dict[int, bool] = {}
        # Next offset to commit: everything below it is done. None until something is done.
        self.position: int | None = committed
        self.committed: int | None = committed

    def __repr__(self) -> str:
        return (
            f"PartitionOffsets(position={self.position}, committed={self.committed}, "
            f"outstanding={self.pending})"
        )

    @property
    def pending(self) -> int:
        """Records tracked and not done (in flight, queued or waiting for an earlier one)."""
        return len(self._outstanding)

    @property
    def dirty(self) -> bool:
        """Whether ``position`` moved past what was last committed."""
        return self.position is not None and self.position != self.committed

    def begin(self, offset: int) -> None:
        """Track a fetched record that is not done yet (it is being delivered)."""
        if self.position is None:
            # The first record fetched since the assignment sits at the consumer's position
            # (the committed offset, or where a reset or seek put it): everything below it is
            # done. Knowing this now gives a lag even when that very first record is stuck.
            self.position = offset
        self._outstanding[offset] = False

    def done_now(self, offset: int) -> None:
        """A fetched record that is done at once (skipped). Cheap when nothing is outstanding."""
        if self._outstanding:
            self._outstanding[offset] = True
            self._advance()
        else:
            self.position = offset + 1

    def done(self, offset: int) -> None:
        """A tracked record is done (delivered, dead-lettered or dropped)."""
        if offset not in self._outstanding:
            return  # abandoned by a revoke, or a duplicate completion
        self._outstanding[offset] = True
        self._advance()

    def _advance(self) -> None:
        outstanding = self._outstanding
        while outstanding:
            first = next(iter(outstanding))
            if not outstanding[first]:
                return
            del outstanding[first]
            self.position = first + 1

    def abandon(self) -> None:
        """Forget outstanding records (partition revoked); the position stays where it is."""
        self._outstanding.clear()

    def mark_committed(self, position: int) -> None:
        self.committed = position

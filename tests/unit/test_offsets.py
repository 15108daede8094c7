"""Commit watermark: only done records, in order, ever fall below the commit position."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.listener.offsets import PartitionOffsets


def test_skips_with_nothing_outstanding_move_the_position() -> None:
    offsets = PartitionOffsets()
    offsets.done_now(0)
    offsets.done_now(1)
    assert offsets.position == 2 and offsets.dirty
    offsets.mark_committed(2)
    assert not offsets.dirty


def test_gap_holds_the_position() -> None:
    offsets = PartitionOffsets()
    offsets.begin(10)
    offsets.done_now(11)
    offsets.begin(12)
    offsets.done(12)
    # Nothing is done past the first fetched record: the position stays at it.
    assert offsets.position == 10 and offsets.pending == 3
    offsets.done(10)
    assert offsets.position == 13 and offsets.pending == 0


def test_first_fetched_record_sets_the_position() -> None:
    offsets = PartitionOffsets()
    offsets.begin(40)
    assert offsets.position == 40 and offsets.pending == 1
    offsets.done(40)
    assert offsets.position == 41


def test_abandon_keeps_position_and_ignores_late_completions() -> None:
    offsets = PartitionOffsets(committed=5)
    offsets.begin(5)
    offsets.begin(6)
    offsets.done(6)
    offsets.abandon()
    offsets.done(5)
    assert offsets.position == 5


@settings(max_examples=500)
@given(st.data())
def test_position_is_first_not_done(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 60))
    # Offsets with gaps (compaction, transaction markers), each delivered or skipped.
    gaps = data.draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    positions = [sum(gaps[: i + 1]) for i in range(n)]
    delivered = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    offsets = PartitionOffsets()
    done: set[int] = set()
    outstanding = []
    for offset, deliver in zip(positions, delivered):
        if deliver:
            offsets.begin(offset)
            outstanding.append(offset)
        else:
            offsets.done_now(offset)
            done.add(offset)
    order = data.draw(st.permutations(outstanding))
    for offset in order:
        offsets.done(offset)
        done.add(offset)
        not_done = [o for o in positions if o not in done]
        if not_done:
            first = not_done[0]
            expected = max((o for o in positions if o < first), default=None)
            # Below the first fetched record everything is done (committed, reset or sought).
            assert offsets.position == (positions[0] if expected is None else expected + 1)
        else:
            assert offsets.position == positions[-1] + 1
    assert offsets.position == positions[-1] + 1 and offsets.pending == 0

"""Commit watermark: only done records, in order, ever fall below the commit position."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.listener.partitions import PartitionOffsets


def test_skips_with_nothing_outstanding_move_the_position() -> None:
    offsets = PartitionOffsets()
    offsets.fetched_through(0)
    offsets.fetched_through(1)
    assert offsets.position == 2 and offsets.dirty
    offsets.mark_committed(2)
    assert not offsets.dirty


def test_gap_holds_the_position() -> None:
    offsets = PartitionOffsets()
    offsets.begin(10)
    offsets.fetched_through(11)
    offsets.begin(12)
    offsets.done(12)
    # Nothing is done past the first fetched record: the position stays at it. The skipped
    # record is done and not tracked; the delivered one waits for the first.
    assert offsets.position == 10 and offsets.pending == 2
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
            offsets.fetched_through(offset)
            done.add(offset)
    order = data.draw(st.permutations(outstanding))
    for offset in order:
        offsets.done(offset)
        done.add(offset)
        not_done = [o for o in positions if o not in done]
        # Everything below the first record not done is done (below the first fetched record:
        # committed, reset or sought), and nothing at or after it is committed.
        assert offsets.position == (not_done[0] if not_done else positions[-1] + 1)
    assert offsets.position == positions[-1] + 1 and offsets.pending == 0


@settings(max_examples=300)
@given(st.data())
def test_batches_of_skips_marked_once_give_the_same_positions(data: st.DataObject) -> None:
    """The sidecar tracks delivered records one by one and a batch's skips with one
    fetched_through at its end: positions are the same as marking each skip as it comes."""
    n = data.draw(st.integers(1, 60))
    delivered = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    cuts = sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=5))) if n > 1 else []
    each, batched = PartitionOffsets(), PartitionOffsets()
    start = 0
    for end in [*cuts, n]:
        for offset in range(start, end):
            if delivered[offset]:
                each.begin(offset)
                batched.begin(offset)
            else:
                each.fetched_through(offset)
        batched.fetched_through(end - 1)
        assert batched.position == each.position
        start = end
    for offset in data.draw(st.permutations([o for o in range(n) if delivered[o]])):
        each.done(offset)
        batched.done(offset)
        assert batched.position == each.position


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_records_begun_and_done_together_give_the_positions_of_one_at_a_time(data: st.DataObject) -> None:
    # begin_many/done_many (a fetched batch, a bulk) against begin/done per record.
    one, many = PartitionOffsets(), PartitionOffsets()
    next_offset = 0
    outstanding: list[int] = []
    for _ in range(data.draw(st.integers(1, 12))):
        if outstanding and data.draw(st.booleans()):
            chosen = sorted(data.draw(st.lists(st.sampled_from(outstanding), min_size=1, unique=True)))
            for offset in chosen:
                one.done(offset)
            many.done_many(chosen)
            if data.draw(st.booleans()):
                many.done_many(chosen)  # done twice: ignored
            outstanding = [o for o in outstanding if o not in chosen]
        else:
            gap = data.draw(st.integers(0, 2))  # skipped records before the batch
            batch = list(range(next_offset + gap, next_offset + gap + data.draw(st.integers(0, 5))))
            for offset in batch:
                one.begin(offset)
            many.begin_many(batch)
            next_offset += gap + len(batch)
            one.fetched_through(next_offset)
            many.fetched_through(next_offset)
            outstanding += batch
        assert (many.position, many.pending) == (one.position, one.pending)
    one.abandon()
    many.abandon()
    many.done_many(outstanding)  # late completions after a revoke
    assert many.position == one.position

"""Route lead: what a reader may rely on, learnt from the records; the writer's rule that keeps it
true when leads differ or change (lowered, older writers without a lead, replicas racing)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.routes.lead import (
    CATCH_UP_AHEAD_OF_CLOCK,
    CATCH_UP_NO_LEAD,
    CATCH_UP_TABLE_BEHIND,
    DEFAULT_LEAD_MARGIN_MS,
    LEAD_MEMORY_MS,
    LeadTracker,
    catch_up_reason,
    covered_until,
)

MARGIN = DEFAULT_LEAD_MARGIN_MS


def test_no_record_or_an_older_writer_means_no_lead() -> None:
    tracker = LeadTracker()
    assert tracker.lead_ms(10_000) == 0
    assert covered_until(10_000, tracker.lead_ms(10_000)) == 10_000  # catch up as without a lead
    tracker.observe(1000, 9_000, 10_000)
    assert tracker.lead_ms(10_000) == 1000
    tracker.observe(None, None, 10_500)  # an older route service, still running: lead 0
    assert tracker.lead_ms(11_000) == 0
    # Once its statement is older than the memory and newer records state a lead, it is forgotten.
    tracker.observe(1000, 10_600 + LEAD_MEMORY_MS, 11_600 + LEAD_MEMORY_MS)
    assert tracker.lead_ms(10_700 + LEAD_MEMORY_MS) == 1000


def test_the_smallest_recent_lead_wins_and_the_latest_always_counts() -> None:
    tracker = LeadTracker()
    tracker.observe(500, 1_000, 1_500)
    tracker.observe(2000, 2_000, 4_000)
    assert tracker.lead_ms(3_000) == 500  # a replica with 500 ms wrote recently
    assert tracker.lead_ms(1_000 + LEAD_MEMORY_MS + 1) == 2000
    tracker.observe(300, 5_000, 5_300)
    assert tracker.lead_ms(10 * LEAD_MEMORY_MS) == 300  # the latest record, however old


def test_a_writer_with_a_smaller_lead_honours_the_fleets_until_its_statement_is_read() -> None:
    tracker = LeadTracker()
    tracker.observe(1000, 1_000, 2_000)
    # Lowering to 200 ms: the first write still takes effect a full second later...
    first = tracker.effective_from_ms(200, 3_000)
    assert first == 4_000
    tracker.observe(200, 3_000, first)
    # ...and later ones after it, so a reader that has not read the lowering record yet (and
    # still assumes 1 s) is covered by the record before: effective times only grow.
    assert tracker.effective_from_ms(200, 3_010) == first + 1
    assert tracker.effective_from_ms(200, 5_000) == 5_200
    # A writer with a larger lead uses its own.
    assert tracker.effective_from_ms(3000, 5_000) == 8_000


def test_catch_up_reasons() -> None:
    now = 100_000
    assert catch_up_reason(now + 5_000, now, 1000) == CATCH_UP_AHEAD_OF_CLOCK
    assert catch_up_reason(now, now, 0) == CATCH_UP_NO_LEAD
    assert catch_up_reason(now, now, 1000) == CATCH_UP_TABLE_BEHIND


@dataclass
class Write:
    own_lead: int | None  # None: an older route service, no lead stated
    stamped: int
    acked: int
    effective: int = 0


write_plan = st.lists(
    st.tuples(
        st.sampled_from([0, 100, 250, 500, 1000, 2000]),  # the writer's own --route-lead
        st.integers(0, 400),  # time since the previous stamp
        st.integers(0, MARGIN),  # stamp → broker acknowledgement, within the margin
        st.integers(0, 600),  # how stale the writer's view is (replicas racing)
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=600, deadline=None)
@given(older=st.integers(0, 3), plan=write_plan)
def test_no_reader_ever_decides_a_record_a_route_it_has_not_read_applies_to(
    older: int, plan: list[tuple[int, int, int, int]]
) -> None:
    """Writers (possibly several replicas with different leads, each seeing the topic with some
    delay; first a few writes of an older service without a lead) stamp routes by the rule of
    :class:`LeadTracker`. For every reader, cut anywhere in topic order and complete through a
    time just before the next record's acknowledgement: every route it has not read takes effect
    after the last record time it decides locally (``covered_until``). Writes are acknowledged
    within the margin; the views are no staler than the lead memory."""
    writes: list[Write] = []
    clock = 1_000_000
    for i in range(older):
        clock += 50
        writes.append(Write(None, clock, clock + 1, clock))
    first: Write | None = None
    for own, gap, delay, staleness in plan:
        clock += gap
        # The first write with a lead follows the older service's last one (an upgrade), and
        # later writes follow the first (see above).
        clock = max(clock, 1 + max((w.acked for w in writes if first is None or w is first), default=0))
        view = LeadTracker()
        # A replica sees the topic as it was a little while ago, but never an empty topic once
        # the first write with a lead is stored: leads change on a running fleet (see the
        # routes docs: two replicas with different leads racing on their very first writes is
        # the case this does not cover).
        seen_writes = [w for w in writes if w.acked < clock - staleness or (w is first and w.acked < clock)]
        for seen in sorted(seen_writes, key=lambda w: w.acked):
            view.observe(seen.own_lead, seen.stamped, seen.effective)
        writes.append(Write(own, clock, clock + delay, view.effective_from_ms(own, clock)))
        if first is None:
            first = writes[-1]
    topic = sorted(writes, key=lambda w: w.acked)
    for cut in range(len(topic) + 1):
        reader = LeadTracker()
        for read in topic[:cut]:
            reader.observe(read.own_lead, read.stamped, read.effective)
        if cut == len(topic):
            continue
        synced_at = topic[cut].acked - 1  # complete through just before the first unread
        if cut and synced_at < topic[cut - 1].acked:
            continue  # two acknowledged at once: no time lies between them
        lead = reader.lead_ms(synced_at)
        if lead <= MARGIN:
            # No usable lead: the reader relies on its sync time alone and catches up for every
            # newer record, as without a lead; a write still in flight then is the known gap.
            assert covered_until(synced_at, lead, MARGIN) == synced_at
            continue
        covered = covered_until(synced_at, lead, MARGIN)
        for unread in topic[cut:]:
            assert unread.effective > covered, (cut, unread, covered, reader)

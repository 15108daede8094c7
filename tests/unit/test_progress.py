"""Stalled partitions: stuck with records waiting is stalled; idle or moving is not."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.listener.progress import StallDetector


def test_stuck_with_records_waiting_is_stalled_after_the_timeout() -> None:
    detector = StallDetector(after=10)
    detector.observe("p0", 5, 3, now=0)
    detector.observe("p0", 5, 7, now=9)
    assert detector.stalled(9.0) == {}
    detector.observe("p0", 5, 9, now=10)
    stall = detector.stalled(10.0)["p0"]
    assert (stall.seconds, stall.position, stall.lag) == (10, 5, 9)
    assert detector.is_stalled("p0", 10.0)


def test_progress_restarts_the_clock() -> None:
    detector = StallDetector(after=10)
    detector.observe("p0", 5, 3, now=0)
    detector.observe("p0", 6, 3, now=8)
    assert detector.stalled(17.0) == {}
    assert "p0" in detector.stalled(18.0)


def test_an_idle_partition_is_never_stalled() -> None:
    detector = StallDetector(after=1)
    for t in range(100):
        detector.observe("p0", 5, 0, now=t)
    assert detector.stalled(1000.0) == {}


def test_records_arriving_at_an_idle_partition_start_the_clock_then() -> None:
    detector = StallDetector(after=10)
    detector.observe("p0", 5, 0, now=0)
    detector.observe("p0", 5, 2, now=50)
    assert detector.stalled(59.0) == {}
    assert "p0" in detector.stalled(60.0)


def test_forget_drops_a_revoked_partition() -> None:
    detector = StallDetector(after=1)
    detector.observe("p0", 5, 3, now=0)
    detector.forget("p0")
    assert detector.stalled(100.0) == {}


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        StallDetector(after=0)


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5), st.floats(0, 5)), min_size=1, max_size=50))
def test_stalled_only_after_a_timeout_without_movement(steps: list[tuple[int, int, float]]) -> None:
    """Against a direct statement of the rule: stalled at t iff lag > 0 at every observation in
    the last ``after`` seconds and the position was the same at all of them, back to one at
    least ``after`` seconds ago with lag > 0."""
    after = 4.0
    detector = StallDetector(after=after)
    now = 0.0
    history: list[tuple[float, int, int]] = []
    for position_step, lag, dt in steps:
        now += dt
        position = (history[-1][1] if history else 0) + (1 if position_step == 0 else 0)
        detector.observe("p", position, lag, now)
        history.append((now, position, lag))
        # The run of observations ending now with lag > 0 and the current position.
        start = None
        for t, p, l in reversed(history):
            if l <= 0 or p != position:
                break
            start = t
        expected = start is not None and now - start >= after
        assert detector.is_stalled("p", now) == expected

"""LogThrottle: first line at once, then at most one per interval per subject, with a count."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.logthrottle import MAX_SUBJECTS, LogThrottle, held_back


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_line_then_one_per_interval_with_the_count() -> None:
    clock = Clock()
    throttle = LogThrottle(10.0, clock=clock)
    assert throttle.allow("a") == 0
    assert [throttle.allow("a") for _ in range(5)] == [None] * 5
    assert throttle.allow("b") == 0  # subjects are throttled apart
    clock.now += 10.0
    assert throttle.allow("a") == 5
    assert throttle.allow("a") is None
    throttle.forget("a")
    assert throttle.allow("a") == 0


def test_held_back_suffix() -> None:
    assert held_back(0) == ""
    assert held_back(3) == " (3 more like this not logged)"


def test_subjects_are_bounded() -> None:
    throttle = LogThrottle(10.0, clock=Clock())
    for subject in range(MAX_SUBJECTS * 2):
        throttle.allow(subject)
    assert len(throttle._state) <= MAX_SUBJECTS


@given(st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), max_size=200))
def test_every_call_is_logged_or_counted(gaps: list[float]) -> None:
    """Nothing is lost: lines logged plus the counts they carry equal the calls made, and two
    logged lines are never closer than the interval."""
    clock = Clock()
    throttle = LogThrottle(10.0, clock=clock)
    logged_at: list[float] = []
    counted = 0
    for gap in gaps:
        clock.now += gap
        held = throttle.allow()
        if held is not None:
            logged_at.append(clock.now)
            counted += held
    clock.now += 10.5  # past the interval, floating-point sums included
    final = throttle.allow() if gaps else 0
    assert final is not None
    assert len(logged_at) + counted + final == len(gaps)
    assert all(b - a >= 10.0 for a, b in zip(logged_at, logged_at[1:]))

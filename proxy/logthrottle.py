"""LogThrottle: at most one log line per subject every so often, counting the ones held back.

A failure that repeats every second (an unreadable routes file polled each second, an app that
times out on every delivery) must stay visible without flooding the log: the first occurrence is
logged, later ones at most once per ``interval``, each saying how many were held back meanwhile.
Pure bookkeeping (the clock is injectable), so it is unit-tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

DEFAULT_INTERVAL = 30.0
# Subjects are few (partitions, files, URLs); past this many the oldest state is forgotten, so a
# stream of distinct subjects cannot grow memory.
MAX_SUBJECTS = 1024


class LogThrottle:
    """``allow(subject)`` says whether to log now, and how many lines were held back since."""

    def __init__(self, interval: float = DEFAULT_INTERVAL, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._state: dict[Hashable, tuple[float, int]] = {}

    def __repr__(self) -> str:
        return f"LogThrottle(interval={self.interval}, subjects={len(self._state)})"

    def allow(self, subject: Hashable = None) -> int | None:
        """None: hold this line back. Else log it; the value is how many were held back since
        the last line logged for ``subject``."""
        now = self._clock()
        state = self._state.get(subject)
        if state is not None and now - state[0] < self.interval:
            self._state[subject] = (state[0], state[1] + 1)
            return None
        if state is None and len(self._state) >= MAX_SUBJECTS:
            self._state.pop(next(iter(self._state)))
        self._state[subject] = (now, 0)
        return state[1] if state is not None else 0

    def forget(self, subject: Hashable = None) -> None:
        """The failure is over: its next occurrence is logged at once."""
        self._state.pop(subject, None)


def held_back(count: int) -> str:
    """The suffix of a throttled line: empty, or how many like it were not logged."""
    return f" ({count} more like this not logged)" if count else ""

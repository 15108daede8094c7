"""What an app's answer means and how long to wait before trying again. Pure logic, no I/O.

App answers:

- 2xx: done, unless a Dapr-style JSON body says ``{"status": "RETRY"}`` or ``"DROP"``;
- 408, 429, 5xx, timeouts: retried with exponential backoff and jitter, ``Retry-After`` honoured;
  dead-lettered when attempts run out;
- 404 and every other status: dead-lettered at once.

A connection that cannot be made at all (the app is not listening) is not the record's fault: it
costs no attempt, and the sidecar waits for the app's health instead (see ``upstream/health.py``).
"""

from __future__ import annotations

import enum
import json
import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

DEFAULT_MAX_ATTEMPTS = 10
DEFAULT_BACKOFF_INITIAL = 0.1
DEFAULT_BACKOFF_MAX = 10.0
# An app may ask for a longer pause with Retry-After, but not for an unbounded one.
MAX_RETRY_AFTER = 60.0
RETRIED_STATUSES = frozenset({408, 429})


class Outcome(enum.Enum):
    """What to do with a record after one attempt."""

    DONE = "done"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Verdict:
    """An attempt's outcome and the reason recorded with it (metric label, dead-letter header)."""

    outcome: Outcome
    reason: str


OK = Verdict(Outcome.DONE, "ok")  # the answer to nearly every delivery: not made anew each time


def classify(status: int, body: bytes = b"", content_type: str = "") -> Verdict:
    """Classify an app's HTTP answer."""
    if 200 <= status < 300:
        if body and content_type.startswith("application/json"):
            answer = _dapr_status(body)
            if answer == "RETRY":
                return Verdict(Outcome.RETRY, "app_retry")
            if answer == "DROP":
                return Verdict(Outcome.DROP, "app_drop")
        return OK
    if status in RETRIED_STATUSES or 500 <= status < 600:
        return Verdict(Outcome.RETRY, f"http_{status}")
    return Verdict(Outcome.DEAD_LETTER, f"http_{status}")


def _dapr_status(body: bytes) -> str | None:
    if len(body) > 4096:
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(parsed, dict):
        status = parsed.get("status")
        if isinstance(status, str):
            return status.upper()
    return None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(when - now, 0.0), MAX_RETRY_AFTER)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter: after n failed attempts wait c/2 + U(0, c/2) where
    c = min(maximum, initial * 2**(n-1)), or the app's ``Retry-After`` when it gave one."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    initial: float = DEFAULT_BACKOFF_INITIAL
    maximum: float = DEFAULT_BACKOFF_MAX

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts

    def delay(self, attempts: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after ``attempts`` failed attempts."""
        if retry_after is not None:
            return retry_after
        ceiling = min(self.maximum, self.initial * 2.0 ** max(attempts - 1, 0))
        # Half fixed, half jitter: never zero (a hot loop against a failing app), still spread.
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)

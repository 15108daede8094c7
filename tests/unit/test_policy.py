"""App answers → outcomes; backoff bounds; Retry-After."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from proxy.delivery.policy import MAX_RETRY_AFTER, Outcome, RetryPolicy, classify, parse_retry_after


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, Outcome.DONE), (204, Outcome.DONE), (408, Outcome.RETRY), (429, Outcome.RETRY), (500, Outcome.RETRY),
     (503, Outcome.RETRY), (400, Outcome.DEAD_LETTER), (404, Outcome.DEAD_LETTER), (413, Outcome.DEAD_LETTER),
     (301, Outcome.DEAD_LETTER)],
)
def test_classify_status(status: int, outcome: Outcome) -> None:
    assert classify(status).outcome is outcome


def test_dapr_style_body() -> None:
    assert classify(200, b'{"status": "RETRY"}', "application/json").outcome is Outcome.RETRY
    assert classify(200, b'{"status": "drop"}', "application/json").outcome is Outcome.DROP
    assert classify(200, b'{"status": "SUCCESS"}', "application/json").outcome is Outcome.DONE
    assert classify(200, b"not json", "application/json").outcome is Outcome.DONE
    assert classify(200, b'{"status": "RETRY"}', "text/plain").outcome is Outcome.DONE


def test_retry_after() -> None:
    now = 1_000_000.0
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after("100000", now) == MAX_RETRY_AFTER
    assert parse_retry_after(formatdate(now + 5, usegmt=True), now) == pytest.approx(5.0, abs=1)
    assert parse_retry_after("garbage", now) is None and parse_retry_after(None, now) is None


def test_backoff_grows_within_bounds() -> None:
    policy = RetryPolicy(max_attempts=5, initial=0.1, maximum=1.0)
    rng = random.Random(1)
    for attempts in range(1, 12):
        ceiling = min(1.0, 0.1 * 2 ** (attempts - 1))
        delay = policy.delay(attempts, rng=rng)
        assert ceiling / 2 <= delay <= ceiling
    assert policy.delay(3, retry_after=7.0) == 7.0
    assert not policy.exhausted(4) and policy.exhausted(5)

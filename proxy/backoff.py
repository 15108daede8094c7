"""Retrying with exponential backoff: one helper for every loop that waits between attempts.

A :class:`Backoff` starts at ``initial`` seconds, doubles after every wait up to ``maximum``, and
starts over on :meth:`~Backoff.reset` (after a success). :func:`retry_connect` is the connect loop
built on it: any failure is retried (a client library may raise more than its own error type on
a refusal it cannot parse), except the exception types named fatal (a wrong setting does not heal
by retrying). Cancelling the caller stops either at once.

The delivery retry policy (jittered, ``Retry-After``) is :class:`proxy.delivery.policy.RetryPolicy`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Backoff:
    """Doubling delays between ``initial`` and ``maximum`` seconds."""

    __slots__ = ("initial", "maximum", "delay")

    def __init__(self, initial: float, maximum: float) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {initial} and {maximum}")
        self.initial = initial
        self.maximum = maximum
        self.delay = initial
        """The next wait, in seconds (for log messages before :meth:`wait`)."""

    def __repr__(self) -> str:
        return f"Backoff(initial={self.initial}, maximum={self.maximum}, delay={self.delay})"

    def advance(self) -> float:
        """The current delay; the next one doubles (up to ``maximum``)."""
        delay = self.delay
        self.delay = min(delay * 2, self.maximum)
        return delay

    async def wait(self) -> None:
        """Sleep the current delay, then double it."""
        await asyncio.sleep(self.advance())

    def reset(self) -> None:
        """Start over from ``initial`` (after a success)."""
        self.delay = self.initial


async def retry_connect(
    attempt: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    failed: Callable[[Exception, float], Awaitable[None]],
    fatal: tuple[type[Exception], ...] = (),
) -> T:
    """Await ``attempt()`` until it succeeds. After each failure, ``failed(exc, delay)`` cleans up
    and reports, then the loop sleeps ``delay``. Exceptions of a ``fatal`` type propagate."""
    while True:
        try:
            return await attempt()
        except fatal:
            raise
        except Exception as exc:
            await failed(exc, backoff.delay)
            await backoff.wait()

"""proxy.backoff: the delays and the connect loop (sleep patched out, so the tests are instant)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.backoff import Backoff, retry_connect


@given(
    initial=st.floats(min_value=0.001, max_value=10.0),
    factor=st.floats(min_value=1.0, max_value=100.0),
    steps=st.integers(min_value=1, max_value=40),
)
def test_delays_double_up_to_the_maximum(initial: float, factor: float, steps: int) -> None:
    maximum = initial * factor
    backoff = Backoff(initial, maximum)
    expected = initial
    for _ in range(steps):
        assert backoff.advance() == expected
        expected = min(expected * 2, maximum)
    assert backoff.delay == expected <= maximum
    backoff.reset()
    assert backoff.delay == initial


@pytest.mark.parametrize(("initial", "maximum"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_rejects_bad_bounds(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError):
        Backoff(initial, maximum)


async def test_retry_connect_retries_until_success(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    failures: list[tuple[str, float]] = []
    attempts = iter([KeyError("scram"), OSError("refused"), RuntimeError("x"), None])

    async def attempt() -> str:
        exc = next(attempts)
        if exc is not None:
            raise exc
        return "connected"

    async def failed(exc: Exception, delay: float) -> None:
        failures.append((type(exc).__name__, delay))

    result = await retry_connect(attempt, backoff=Backoff(0.5, 1.5), failed=failed)
    assert result == "connected"
    assert failures == [("KeyError", 0.5), ("OSError", 1.0), ("RuntimeError", 1.5)]
    assert slept == [0.5, 1.0, 1.5]


async def test_retry_connect_lets_fatal_errors_through() -> None:
    async def attempt() -> None:
        raise ValueError("bad setting")

    async def failed(exc: Exception, delay: float) -> None:
        raise AssertionError("a fatal error is not retried")

    with pytest.raises(ValueError, match="bad setting"):
        await retry_connect(attempt, backoff=Backoff(1, 2), failed=failed, fatal=(ValueError,))

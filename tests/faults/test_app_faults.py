"""Faults on the app's side of the sidecar, against the real broker and a real app: failing
answers, an app that goes away under load, a record the app never takes, a very long retry."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.sidecar.runtime import REVOKE_TIMEOUT, Sidecar
from proxy.testing.app import Received, RecordingApp
from tests.conftest import eventually, sidecar_config
from tests.faults.harness import ROUTES, account, produce_now, produce_steadily, read_topic

Reply = tuple[int, dict[str, str], bytes]
OK: Reply = (200, {}, b"")


def routes_file(tmp_path: Path) -> str:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    return str(path)


def metric(sidecar: Sidecar, line_start: str) -> float:
    """The value of the one sample whose line starts with ``line_start`` (0 if absent)."""
    for line in sidecar.metrics.render().decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("ordering", ["partition", "key", "none"])
async def test_5xx_every_100th_call(bootstrap_servers: str, topic: str, tmp_path: Path, ordering: str) -> None:
    n = 3000

    def every_100th_fails(_: Received, call: int) -> Reply:
        return (500, {}, b"flaky") if call % 100 == 0 else OK

    await produce_now(bootstrap_servers, topic, range(n))
    async with RecordingApp(answer=every_100th_fails) as app:
        config = sidecar_config(bootstrap_servers, topic, app.url, routes_file(tmp_path), ordering=ordering, max_in_flight=16)
        async with Sidecar(config) as sidecar:
            await app.wait_for(n, timeout=40)
            await asyncio.sleep(0.5)  # a duplicate would arrive now
            failed = metric(sidecar, f'ktp_delivery_attempts_total{{outcome="http_500",topic="{topic}"}}')
    dead = len(await read_topic(bootstrap_servers, f"{topic}.dlq"))
    order = None if ordering == "none" else ordering
    result = account(
        f"5xx every 100th call ({ordering})", app.received, range(n), order=order, dead_lettered=dead,
        note=f"{app.calls} calls, {failed:.0f} answered 500",
    )
    assert (result.lost, result.duplicated, result.unexpected, dead) == (0, 0, 0, 0)
    assert failed == app.calls // 100 >= n // 100  # every failure was retried, none was lost
    if order is not None:
        assert result.out_of_order == 0
    if ordering != "partition":
        # Keys (or records) of one partition really ran concurrently: by partition the arrival
        # order is broken, which is what these modes allow.
        by_partition = account("", app.received, range(n), report=False).out_of_order
        assert by_partition and by_partition > 0


async def test_app_down_for_10s_under_load(bootstrap_servers: str, topic: str, tmp_path: Path) -> None:
    n, rate = 3000, 200.0
    async with RecordingApp() as app:
        # Few attempts: an app that is down must not use them up (it costs no attempt, the
        # sidecar waits for the app's health), or records would be dead-lettered.
        config = sidecar_config(bootstrap_servers, topic, app.url, routes_file(tmp_path), max_attempts=3)
        async with Sidecar(config) as sidecar:
            load = asyncio.create_task(produce_steadily(bootstrap_servers, topic, range(n), rate))
            await app.wait_for(400, timeout=30)
            await app.stop()
            down_at = len(app.received)
            await asyncio.sleep(1.0)
            ready_while_down, checks = sidecar.readiness()
            await asyncio.sleep(9.0)
            await app.start()  # same port
            await load
            await app.wait_for(n, timeout=40)
            await asyncio.sleep(0.5)
            attempts = sidecar.metrics.render().decode()
    dead = len(await read_topic(bootstrap_servers, f"{topic}.dlq"))
    result = account(
        "app down 10s under load", app.received, range(n), dead_lettered=dead,
        note=f"app stopped after {down_at} deliveries",
    )
    assert not ready_while_down and checks["app_healthy"] is False
    assert (result.lost, result.unexpected, result.out_of_order, dead) == (0, 0, 0, 0)
    assert "ktp_dead_letters_total{" not in attempts
    # A delivery in flight when the app went away may have been taken before the connection
    # broke: at most one duplicate per concurrent delivery.
    assert result.duplicated <= config.max_in_flight


async def test_poison_record_is_dead_lettered_once_and_never_again(
    bootstrap_servers: str, topic: str, tmp_path: Path
) -> None:
    n, poison, max_attempts = 2000, 700, 4
    poison_calls: list[Received] = []

    def refuse_poison(seen: Received, _: int) -> Reply:
        if seen.body == str(poison).encode():
            poison_calls.append(seen)
            return 500, {}, b"cannot process"
        return OK

    headers = {poison: [("baggage", b"tenant=9"), ("x-trace", b"\x00poison")]}
    await produce_steadily(bootstrap_servers, topic, range(n), 20000.0, headers=headers)
    routes = routes_file(tmp_path)
    async with RecordingApp(answer=refuse_poison) as app:
        config = sidecar_config(bootstrap_servers, topic, app.url, routes, max_attempts=max_attempts)
        async with Sidecar(config) as sidecar:
            await app.wait_for(n - 1, timeout=30)

            async def dead_lettered() -> bool:
                return metric(sidecar, f'ktp_dead_letters_total{{reason="http_500",topic="{topic}"}}') == 1

            await eventually(dead_lettered, what="the poison record dead-lettered")
        # A restart in the same group: the dead-lettered record was committed as done.
        await produce_now(bootstrap_servers, topic, range(n, n + 200))
        async with Sidecar(config):
            await app.wait_for(n - 1 + 200, timeout=30)
            await asyncio.sleep(1.0)  # time for the poison record to come back, if it were to
    letters = await read_topic(bootstrap_servers, f"{topic}.dlq")
    result = account(
        "poison record, restart", app.received, set(range(n + 200)) - {poison}, dead_lettered=len(letters),
        note=f"poison attempted {len(poison_calls)}x, max-attempts={max_attempts}",
    )
    assert (result.lost, result.duplicated, result.out_of_order, result.unexpected) == (0, 0, 0, 0)
    assert len(poison_calls) == max_attempts
    assert len(letters) == 1
    letter = letters[0]
    origin = poison_calls[0]
    got = dict(letter.headers)
    assert letter.value == str(poison).encode() and letter.key == f"k{poison % 37}".encode()
    assert got["baggage"] == b"tenant=9" and got["x-trace"] == b"\x00poison"
    assert got["ktp-dead-letter-reason"] == b"http_500"
    assert got["ktp-dead-letter-attempts"] == str(max_attempts).encode()
    assert got["ktp-dead-letter-status"] == b"500"
    assert got["ktp-dead-letter-topic"] == topic.encode()
    assert got["ktp-dead-letter-partition"] == str(origin.partition).encode()
    assert got["ktp-dead-letter-offset"] == str(origin.offset).encode()


async def test_a_long_retry_holds_neither_heartbeats_nor_a_rebalance(
    bootstrap_servers: str, topic: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The app asks for a 30 s pause on one record. The sidecar stays in the group well past its
    2 s session timeout, other partitions keep flowing, and when a second member joins the
    rebalance does not wait for the pause: the record is delivered long before 30 s."""
    n, stuck, retry_after = 1000, 10, 30
    refused: list[tuple[float, Received]] = []

    def pause_once(seen: Received, _: int) -> Reply:
        if seen.body == str(stuck).encode() and not refused:
            refused.append((time.monotonic(), seen))
            return 503, {"retry-after": str(retry_after)}, b"later"
        return OK

    caplog.set_level(logging.INFO, logger="proxy.listener.kafka")
    await produce_now(bootstrap_servers, topic, range(n))
    routes = routes_file(tmp_path)
    async with RecordingApp("first", answer=pause_once) as first_app, RecordingApp("second") as second_app:
        first = Sidecar(sidecar_config(bootstrap_servers, topic, first_app.url, routes))
        async with first:
            await until(lambda: bool(refused), what="the app asked for a pause")
            await asyncio.sleep(5.0)  # 2.5 session timeouts
            assignments = sum(1 for r in caplog.records if "partitions assigned" in r.getMessage())
            during_pause = list(first_app.received)
            second = Sidecar(sidecar_config(bootstrap_servers, topic, second_app.url, routes))
            joined_at = time.monotonic()
            async with second:
                await until(lambda: bool(second.listener.assignment()), what="second member assigned")
                rebalanced_in = time.monotonic() - joined_at
                both = lambda: first_app.received + second_app.received
                await until(lambda: any(r.body == str(stuck).encode() for r in both()), what="paused record delivered")
                delivered_after = time.monotonic() - refused[0][0]
                await until(lambda: len(both()) >= n, what="all delivered")
    deliveries = both()
    result = account(
        "long retry (Retry-After 30s)", deliveries, range(n),
        note=f"rebalance took {rebalanced_in:.1f}s, paused record delivered after {delivered_after:.1f}s",
    )
    assert (result.lost, result.duplicated, result.unexpected, result.out_of_order) == (0, 0, 0, 0)
    # One assignment (the first join) while the pause ran: no session expired, no rebalance.
    assert assignments == 1
    # Meanwhile the other partitions were delivered in full, and the paused one up to the record.
    held = refused[0][1]
    for partition in range(4):
        now = sum(1 for r in during_pause if r.partition == partition)
        total = sum(1 for r in deliveries if r.partition == partition)
        assert now == (held.offset if partition == held.partition else total), partition
    # The pause ends the moment the partition is revoked: the rebalance takes Tansu's join time,
    # not the revoke timeout (a lane that slept through a revoke would be cancelled only then).
    assert rebalanced_in < REVOKE_TIMEOUT and delivered_after < retry_after / 2


async def until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    async def holds() -> bool:
        return check()

    await eventually(holds, timeout=timeout, what=what)

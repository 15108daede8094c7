"""The real ``ktp sidecar`` process killed or stopped under load, then started again."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from proxy.testing.app import RecordingApp
from tests.faults.harness import (
    SidecarProcess,
    account,
    committed_offsets,
    produce_now,
    produce_steadily,
)
from tests.faults.test_app_faults import until

MAX_IN_FLIGHT = 16


def distinct(app: RecordingApp) -> int:
    return len({r.body for r in app.received})


async def member_ids(bootstrap_servers: str, group: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        (described,) = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    # DescribeGroups v2: (error_code, group, state, protocol_type, protocol, members), and each
    # member starts with its member id.
    (entry,) = described.groups
    return [member[0] for member in entry[5]]


async def test_sigkill_mid_stream_then_restart(bootstrap_servers: str, topic: str, tmp_path: Path) -> None:
    n = 4000
    await produce_now(bootstrap_servers, topic, range(n))
    # A slow-ish app keeps records in flight and done-but-not-yet-committed when the kill comes.
    async with RecordingApp(delay=0.005) as app:
        sidecar = SidecarProcess.configure(
            bootstrap_servers, topic, app.url, tmp_path,
            KTP_MAX_IN_FLIGHT=str(MAX_IN_FLIGHT), POD_NAME="orders-0",
        )
        try:
            await sidecar.start()
            await app.wait_for(1000, timeout=40)
            # The pod's name became the static member's group.instance.id (KIP-345): the broker
            # builds the member id from it.
            members = await member_ids(bootstrap_servers, sidecar.group)
            sidecar.signal(signal.SIGKILL)
            await sidecar.wait()
            await asyncio.sleep(0.3)  # requests the app was still handling finish now
            before = list(app.received)
            committed = await committed_offsets(bootstrap_servers, sidecar.group, topic)
            # Taken by the app, not committed: what the restart may deliver again.
            window = {
                int(r.body) for r in before if committed[r.partition] is None or r.offset >= (committed[r.partition] or 0)
            }
            restarted_at = time.monotonic()
            await sidecar.start()
            await until(lambda: len(app.received) > len(before), timeout=30, what="deliveries after the restart")
            resumed_in = time.monotonic() - restarted_at
            await until(lambda: distinct(app) >= n, timeout=40, what="every record delivered")
            await asyncio.sleep(1.0)  # a late duplicate would show now
            sidecar.signal(signal.SIGTERM)
            assert await sidecar.wait() == 0, sidecar.output()
        finally:
            await sidecar.kill()
    result = account(
        "SIGKILL mid-stream, restart", app.received, range(n),
        note=f"killed after {len(before)}; uncommitted window {len(window)}; "
        f"max-in-flight {MAX_IN_FLIGHT}; delivering again {resumed_in:.1f}s after restart",
    )
    assert (result.lost, result.unexpected, result.out_of_order) == (0, 0, 0)
    counts = collections.Counter(int(r.body) for r in app.received)
    duplicated = {seq for seq, count in counts.items() if count > 1}
    # Only records the app took after the last commit come again, and each at most once.
    assert duplicated <= window and max(counts.values()) <= 2
    assert all(member.startswith("orders-0-") for member in members) and len(members) == 1, members


async def test_sigterm_under_load(bootstrap_servers: str, topic: str, tmp_path: Path) -> None:
    n, rate = 3000, 300.0
    async with RecordingApp(delay=0.002) as app:
        sidecar = SidecarProcess.configure(bootstrap_servers, topic, app.url, tmp_path)
        try:
            await sidecar.start()
            load = asyncio.create_task(produce_steadily(bootstrap_servers, topic, range(n), rate))
            await app.wait_for(1000, timeout=40)
            sidecar.signal(signal.SIGTERM)
            assert await sidecar.wait() == 0, sidecar.output()
            stopped_after = len(app.received)
            await sidecar.start()
            await load
            await until(lambda: distinct(app) >= n, timeout=40, what="every record delivered")
            await asyncio.sleep(1.0)
            sidecar.signal(signal.SIGTERM)
            assert await sidecar.wait() == 0, sidecar.output()
        finally:
            await sidecar.kill()
    result = account("SIGTERM under load, restart", app.received, range(n), note=f"stopped after {stopped_after}")
    assert (result.lost, result.duplicated, result.out_of_order, result.unexpected) == (0, 0, 0, 0)
    assert "drain timeout" not in sidecar.output()

"""The real ``ktp sidecar`` process with bulk delivery on, killed or stopped under load with
entries being retried, then started again."""

from __future__ import annotations

import asyncio
import collections
import signal
from pathlib import Path

from proxy.testing.app import Received
from proxy.testing.bulk_app import BulkRecordingApp
from tests.faults.harness import SidecarProcess, account, committed_offsets, produce_now, produce_steadily
from tests.faults.test_app_faults import until
from tests.integration.test_bulk import overtaken


def flaky(r: Received, times: int) -> str | None:
    """Every 9th record is answered RETRY the first time, every 31st is left out once."""
    s = int(r.body)
    if s % 9 == 4 and times == 0:
        return "RETRY"
    if s % 31 == 7 and times == 0:
        return None
    return "SUCCESS"


def distinct(app: BulkRecordingApp) -> int:
    return len({r.body for r in app.received})


async def test_sigkill_mid_bulk_stream_then_restart(bootstrap_servers: str, topic: str, tmp_path: Path) -> None:
    n = 4000
    await produce_now(bootstrap_servers, topic, range(n))
    # A slow-ish app keeps bulks in flight and taken-but-not-committed when the kill comes.
    async with BulkRecordingApp(status=flaky, delay=0.01) as app:
        sidecar = SidecarProcess.configure(
            bootstrap_servers, topic, app.url, tmp_path, KTP_BULK_MAX_RECORDS="32", KTP_BULK_MAX_WAIT="0.02",
        )
        try:
            await sidecar.start()
            await app.wait_until(lambda: len(app.received) >= 1000, "1000 records taken", timeout=40)
            sidecar.signal(signal.SIGKILL)
            await sidecar.wait()
            await asyncio.sleep(0.3)  # requests the app was still handling finish now
            before = list(app.received)
            bulks_before = len(app.bulks)
            committed = await committed_offsets(bootstrap_servers, sidecar.group, topic)
            window = {
                int(r.body) for r in before if committed[r.partition] is None or r.offset >= (committed[r.partition] or 0)
            }
            await sidecar.start()
            await until(lambda: distinct(app) >= n, timeout=60, what="every record taken")
            await asyncio.sleep(1.0)  # a late duplicate would show now
            sidecar.signal(signal.SIGTERM)
            assert await sidecar.wait() == 0, sidecar.output()
        finally:
            await sidecar.kill()
    result = account(
        "bulk: SIGKILL mid-stream, restart", app.received, range(n), order=None,
        note=f"killed after {len(before)}; uncommitted window {len(window)}; {app.calls} requests",
    )
    assert (result.lost, result.unexpected) == (0, 0)
    counts = collections.Counter(int(r.body) for r in app.received)
    duplicated = {seq for seq, count in counts.items() if count > 1}
    # Only entries the app took after the last commit come again, and each at most once.
    assert duplicated <= window and max(counts.values()) <= 2
    # In each life of the process: first sends in partition order, no entry sent past a retried one.
    first_life, second_life = app.bulks[:bulks_before], app.bulks[bulks_before:]
    for life in (first_life, second_life):
        sent = [r for bulk in life for r in bulk]
        assert account("first sends", sent, {int(r.body) for r in sent}, report=False).out_of_order == 0
        assert overtaken(life) == 0
    assert any(len(b) > 1 for b in second_life)


async def test_sigterm_under_load_with_bulks(bootstrap_servers: str, topic: str, tmp_path: Path) -> None:
    n, rate = 3000, 400.0
    async with BulkRecordingApp(status=flaky, delay=0.002) as app:
        sidecar = SidecarProcess.configure(
            bootstrap_servers, topic, app.url, tmp_path, KTP_BULK_MAX_RECORDS="16", KTP_BULK_MAX_WAIT="0.05",
        )
        try:
            await sidecar.start()
            load = asyncio.create_task(produce_steadily(bootstrap_servers, topic, range(n), rate))
            await app.wait_until(lambda: len(app.received) >= 1000, "1000 records taken", timeout=40)
            sidecar.signal(signal.SIGTERM)
            assert await sidecar.wait() == 0, sidecar.output()
            stopped_after = len(app.received)
            await sidecar.start()
            await load
            await until(lambda: distinct(app) >= n, timeout=40, what="every record taken")
            await asyncio.sleep(1.0)
            sidecar.signal(signal.SIGTERM)
            assert await sidecar.wait() == 0, sidecar.output()
        finally:
            await sidecar.kill()
    result = account("bulk: SIGTERM under load, restart", app.received, range(n), order=None,
                     note=f"stopped after {stopped_after}; {app.calls} requests")
    assert (result.lost, result.duplicated, result.unexpected) == (0, 0, 0)
    sent = [r for bulk in app.bulks for r in bulk]
    assert account("first sends", sent, {int(r.body) for r in sent}, report=False).out_of_order == 0
    assert overtaken(app.bulks) == 0
    assert "drain timeout" not in sidecar.output()

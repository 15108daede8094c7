"""Baseline and sandbox split a topic by tenant: each record handled exactly once."""

from __future__ import annotations

import collections
from pathlib import Path

from proxy.sidecar.runtime import Sidecar
from proxy.testing.app import RecordingApp
from tests.conftest import baggage, produce, sidecar_config

ROUTES = 'tenants:\n  "123": {orders-worker: pr-42}\n  "456": {billing: pr-9}\n'


async def test_baseline_and_sandbox_split_by_tenant(bootstrap_servers: str, topic: str, tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    tenants = ["123", "456", "789", None]
    records = [
        (f"k{i % 7}".encode(), f"{i}".encode(), baggage(tenants[i % len(tenants)])) for i in range(400)
    ]
    await produce(bootstrap_servers, topic, records)
    async with RecordingApp("baseline") as base_app, RecordingApp("sandbox") as sandbox_app:
        base = Sidecar(sidecar_config(bootstrap_servers, topic, base_app.url, str(routes)))
        sandbox = Sidecar(sidecar_config(bootstrap_servers, topic, sandbox_app.url, str(routes), sandbox="pr-42"))
        async with base, sandbox:
            await base_app.wait_for(300)
            await sandbox_app.wait_for(100)
    handled = collections.Counter(int(r.body) for r in base_app.received + sandbox_app.received)
    twice = [v for v, n in handled.items() if n > 1]
    nobody = [i for i in range(400) if i not in handled]
    print(f"baseline={len(base_app.received)} sandbox={len(sandbox_app.received)} twice={len(twice)} nobody={len(nobody)}")
    assert not twice and not nobody
    assert {int(r.body) % 4 for r in sandbox_app.received} == {0}  # tenant 123 only
    assert all(int(r.body) % 4 != 0 for r in base_app.received)

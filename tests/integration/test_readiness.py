"""/readyz against the real broker: ready means ready (every assigned partition has a start
position), and every failing check says why in words."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from proxy.sidecar.runtime import Sidecar
from proxy.testing.app import RecordingApp
from proxy.testing.broker import free_port
from tests.conftest import baggage, create_topic, produce, sidecar_config


async def readyz(session: aiohttp.ClientSession, port: int) -> tuple[int, dict]:
    async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
        return response.status, json.loads(await response.text())


async def test_readyz_says_why_kafka_is_not_reachable(tmp_path: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"
    routes = tmp_path / "routes.yaml"
    routes.write_text("tenants: {}\n")
    config = sidecar_config(closed, "orders", "http://127.0.0.1:1/events", str(routes))
    sidecar = Sidecar(config)
    starting = asyncio.create_task(sidecar.start())
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                await asyncio.sleep(0.05)
                if sidecar.admin.port == 0:
                    continue
                status, body = await readyz(session, sidecar.admin.port)
                if "not reachable" in body["reasons"].get("group_joined", ""):
                    break
            assert status == 503 and body["checks"]["group_joined"] is False
            why = body["reasons"]["group_joined"]
            assert closed in why and "KafkaConnectionError" in why and "retrying" in why, why
            assert "TCP connect to 127.0.0.1:1 failed: connection refused" in body["reasons"]["app_healthy"]
            assert "routes_synced" not in body["reasons"]  # the file was read
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await sidecar.stop()


async def test_readyz_says_why_the_routes_are_not_synced(tmp_path: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"
    config = sidecar_config(closed, "orders", "http://127.0.0.1:1/events", "unused", routes="kafka:")
    sidecar = Sidecar(config)
    starting = asyncio.create_task(sidecar.start())
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                await asyncio.sleep(0.05)
                if sidecar.admin.port == 0:
                    continue
                status, body = await readyz(session, sidecar.admin.port)
                reasons = body["reasons"]
                if "unreachable" in reasons.get("routes_synced", ""):
                    break
            assert status == 503
            assert body["checks"]["group_joined"] is False and body["checks"]["routes_synced"] is False
            assert "not connected to Kafka" in reasons["group_joined"], reasons
            assert "kafka:_ktp_routes" in reasons["routes_synced"] and closed in reasons["routes_synced"], reasons
            assert "tcp://127.0.0.1:1" in reasons["app_healthy"], reasons
            assert "stopping" not in reasons
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await sidecar.stop()


async def test_nothing_produced_after_the_first_200_is_lost(bootstrap_servers: str, unique: str, tmp_path: Path) -> None:
    """A brand-new baseline group under ``--auto-offset-reset latest``: records produced the
    moment /readyz first answers 200 are all delivered, try after try."""
    routes = tmp_path / "routes.yaml"
    routes.write_text("tenants: {}\n")
    tries, per_try = 8, 8
    lost: list[tuple[int, int]] = []
    async with RecordingApp() as app, aiohttp.ClientSession() as session:
        for attempt in range(tries):
            topic = await create_topic(bootstrap_servers, f"ready-{unique}-{attempt}", 4)
            config = sidecar_config(
                bootstrap_servers, topic, app.url, str(routes), auto_offset_reset="latest", commit_interval=0.2
            )
            async with Sidecar(config) as sidecar:
                while (await readyz(session, sidecar.admin.port))[0] != 200:
                    await asyncio.sleep(0.002)
                values = [f"{attempt}-{i}".encode() for i in range(per_try)]
                await produce(bootstrap_servers, topic, [(str(i).encode(), v, baggage(None)) for i, v in enumerate(values)])
                deadline = asyncio.get_running_loop().time() + 5
                while asyncio.get_running_loop().time() < deadline:
                    got = {r.body for r in app.received if r.topic == topic}
                    if got >= set(values):
                        break
                    await asyncio.sleep(0.05)
                lost.append((attempt, len(set(values) - {r.body for r in app.received if r.topic == topic})))
    assert all(missing == 0 for _, missing in lost), f"(try, records lost): {lost}"

"""The real ``ktp sidecar`` process: configured by KTP_* env vars, stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from proxy.testing.app import RecordingApp
from proxy.testing.broker import free_port
from tests.conftest import baggage, eventually, produce


def sidecar_env(bootstrap_servers: str, topic: str, app_url: str, routes: Path, admin_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "KTP_BOOTSTRAP_SERVERS": bootstrap_servers,
        "KTP_SERVICE": "orders-worker",
        "KTP_GROUP": f"cli-{topic}",
        "KTP_TOPICS": topic,
        "KTP_APP_URL": app_url,
        "KTP_ROUTES": f"file:{routes}",
        "KTP_AUTO_OFFSET_RESET": "earliest",
        "KTP_ADMIN_ADDR": f"127.0.0.1:{admin_port}",
        "KTP_METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "KTP_SESSION_TIMEOUT": "2",
        "KTP_COMMIT_INTERVAL": "0.2",
    }


async def start_sidecar(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "sidecar", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )


async def ready(admin_port: int) -> bool:
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{admin_port}/readyz") as response:
                return response.status == 200
    except aiohttp.ClientError:
        return False


async def test_sigterm_drains_commits_and_exits_zero(bootstrap_servers: str, topic: str, tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text('tenants:\n  "123": {orders-worker: pr-42}\n')
    await produce(bootstrap_servers, topic, [(None, str(i).encode(), baggage("9")) for i in range(200)])
    async with RecordingApp() as app:
        admin_port = free_port()
        env = sidecar_env(bootstrap_servers, topic, app.url, routes, admin_port)
        process = await start_sidecar(env)
        await eventually(lambda: ready(admin_port), what="sidecar ready")
        await app.wait_for(200)
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, output.decode()
        assert b"stopped Sidecar" in output
        # A second run in the same group resumes after the committed offsets: nothing twice.
        await produce(bootstrap_servers, topic, [(None, str(i).encode(), baggage("123")) for i in range(200, 210)])
        await produce(bootstrap_servers, topic, [(None, str(i).encode(), baggage("9")) for i in range(210, 220)])
        process = await start_sidecar(env)
        await app.wait_for(210)
        await asyncio.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, output.decode()
    bodies = sorted(int(r.body) for r in app.received)
    assert bodies == list(range(200)) + list(range(210, 220))  # tenant 123 went to its sandbox


async def test_bad_configuration_exits_2_naming_the_problem() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "sidecar", "--service", "Bad_Name",
        env={k: v for k, v in os.environ.items() if not k.startswith("KTP_")},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    text = output.decode()
    assert "--bootstrap-servers is required" in text and "--group is required" in text

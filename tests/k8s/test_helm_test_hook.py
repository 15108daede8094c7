"""The chart's `helm test` pod, run for real: its rendered script against `ktp routes serve` on
127.0.0.1 with the embedded Kafka-protocol broker (or KTP_TEST_BOOTSTRAP_SERVERS)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml
from helm_python.chart import Chart

CHART = Path(__file__).resolve().parents[2] / "charts" / "kafka-tenant-proxy"

pytestmark = pytest.mark.integration


def rendered_test_pod() -> dict[str, object]:
    with Chart.load(CHART) as chart:
        rendered = chart.render(values={}, name="ktp", namespace="kafka-tenant-proxy", revision=3)
    (pod,) = [
        d
        for d in yaml.safe_load_all(rendered["kafka-tenant-proxy/templates/tests/test-routes.yaml"])
        if d
    ]
    return pod  # type: ignore[no-any-return]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_helm_test_script_passes_against_the_real_route_service(
    bootstrap_servers: str, unique: str, tmp_path: Path
) -> None:
    container = rendered_test_pod()["spec"]["containers"][0]  # type: ignore[index]
    command, env = container["command"], {e["name"]: e["value"] for e in container["env"]}
    assert command[:2] == ["python", "-c"]
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    port = free_port()
    service = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "routes", "serve",
        "--bootstrap-servers", bootstrap_servers, "--listen", f"127.0.0.1:{port}",
        "--routes-topic", f"_ktp_routes_{unique}", "--token-file", str(token),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectorError:
                    pass
                assert service.returncode is None, (await service.communicate())[1].decode()[-2000:]
                await asyncio.sleep(0.1)
            else:
                pytest.fail("ktp routes serve never became ready")
        # The pod's script and environment, with the Service URL and token path of this run.
        script_env = {
            **os.environ,
            **env,
            "ROUTES_URL": f"http://127.0.0.1:{port}",
            "TOKEN_FILE": str(token),
        }
        hook = await asyncio.create_subprocess_exec(
            sys.executable, "-c", command[2], env=script_env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(hook.communicate(), 60)
        assert hook.returncode == 0, stderr.decode()[-3000:]
        assert "route service OK" in stdout.decode()
        assert "PUT /v1/tenants/ktp-helm-test-3 200" in stdout.decode()
    finally:
        if service.returncode is None:
            service.terminate()
            await asyncio.wait_for(service.communicate(), 30)

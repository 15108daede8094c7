"""The real processes: ``ktp routes serve`` configured by KTP_* env vars, ``ktp tenant ...``
against it, with their exit codes and messages."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import aiohttp

from proxy.routeservice.server import RouteService
from proxy.routes.records import parse_rfc3339
from proxy.routes.catchup import now_ms
from proxy.testing.broker import free_port
from tests.conftest import eventually


async def ktp(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", *args,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_routes_serve_process(bootstrap_servers: str, routes_topic: str, token_file: str) -> None:
    port = free_port()
    env = {
        **os.environ,
        "KTP_BOOTSTRAP_SERVERS": bootstrap_servers,
        "KTP_LISTEN": f"127.0.0.1:{port}",
        "KTP_ROUTES_TOPIC": routes_topic,
        "KTP_TOKEN_FILE": token_file,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "routes", "serve", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                try:
                    async with session.get(f"{url}/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, what="ktp routes serve ready")
        code, out, err = await ktp(
            "tenant", "put", "123", "--route", "orders-worker=pr-42", "--route", "billing=pr-42",
            "--server", url, "--token-file", token_file,
        )
        assert code == 0, err
        assert "123" in out and "billing=pr-42,orders-worker=pr-42" in out
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, output.decode()[-2000:]


async def test_tenant_commands(service: RouteService, token_file: str, tmp_path: object) -> None:
    env = {"KTP_SERVER": service.url, "KTP_TOKEN_FILE": token_file}
    code, out, err = await ktp("tenant", "put", "123", "--route", "orders-worker=pr-42", "--output", "json", env=env)
    assert code == 0, err
    stored = json.loads(out)
    assert stored["tenant"] == "123" and stored["routes"] == {"orders-worker": "pr-42"}

    code, out, err = await ktp("tenant", "list", env=env)
    assert code == 0 and out.splitlines()[0].split() == ["TENANT", "ROUTES", "VERSION", "EFFECTIVE_FROM"]
    assert out.splitlines()[1].split() == ["123", "orders-worker=pr-42", str(stored["version"]), stored["effective_from"]]

    code, out, err = await ktp("tenant", "get", "123", "--output", "json", env=env)
    assert code == 0 and json.loads(out) == stored

    code, out, err = await ktp("tenant", "delete", "123", env=env)
    assert code == 0 and "tenant 123 deleted" in out

    # --wait returns once the change is in force: the route lead (1 s) after it was stored.
    started = now_ms()
    code, out, err = await ktp("tenant", "put", "w", "--route", "orders-worker=pr-1", "--wait", "--output", "json", env=env)
    assert code == 0, err
    assert now_ms() >= parse_rfc3339(json.loads(out)["effective_from"]) >= started + 1000
    started = now_ms()
    code, out, err = await ktp("tenant", "delete", "w", "--wait", env=env)
    assert code == 0, err
    assert now_ms() - started >= 1000

    # Refused by the server: exit 1 with the server's reason.
    code, out, err = await ktp("tenant", "delete", "123", env=env)
    assert code == 1 and "tenant '123' not found" in err
    wrong = tmp_path / "wrong"  # type: ignore[operator]
    wrong.write_text("nope")
    code, out, err = await ktp("tenant", "put", "9", "--route", "a=b", env={**env, "KTP_TOKEN_FILE": str(wrong)})
    assert code == 1 and "401" in err and "token given was refused" in err and "--token-file" in err

    # A read without a token (reads need one by default): says both ways out, in one line.
    code, out, err = await ktp("tenant", "list", "--server", service.url)
    assert code == 1 and "401" in err, err
    assert "--token-file FILE" in err and "--public-reads true" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = await ktp("tenant", "list", env={**env, "KTP_TOKEN_FILE": str(wrong)})
    assert code == 1 and "token given was refused" in err and "--read-token-file" in err, err

    # Bad arguments: exit 2, nothing sent.
    code, out, err = await ktp("tenant", "put", "9", "--route", "a", env=env)
    assert code == 2 and "SERVICE=SANDBOX" in err
    code, out, err = await ktp("tenant", "put", "9", "--route", "a=b", env={"KTP_SERVER": service.url})
    assert code == 2 and "--token-file" in err

    # Unreachable: exit 1, saying so.
    code, out, err = await ktp("tenant", "list", "--server", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and "cannot reach the route service" in err
    assert "connection refused" in err and "ssl:default" not in err, err

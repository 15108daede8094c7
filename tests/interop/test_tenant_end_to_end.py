"""The tenant a record is routed by is the tenant the next hop sees, across real instrumentation.

A → Kafka → C → D, each service a FastAPI app under uvicorn instrumented by OpenTelemetry
(tests/interop/tenant_apps.py: no baggage code in the apps), C as two versions, baseline and
sandbox ``sbx``, each behind a real ``ktp sidecar`` process, on the real broker. Tenant ``t1`` is
routed to ``sbx`` for C. For each kind of request: exactly one version of C handled it, the one
its tenant says, D was called once with a ``baggage`` header from which a W3C reader gets that
tenant, and D's span is in the trace that was started before A.

Two sources of records: A, an instrumented Python producer (OpenTelemetry Python rewrites the
baggage it forwards: it strips blanks, decodes escapes, and keeps properties inside the value),
and records written as Java, JavaScript or confluent-kafka producers send them, byte for byte as
given (blanks at the ends, properties, escapes, non-ASCII members, two headers).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from confluent_kafka import Producer

from proxy.routing.baggage import parse
from proxy.testing.broker import free_port
from tests.conftest import create_topic, eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "c-worker"
SANDBOX = "sbx"


@dataclass(frozen=True)
class Kind:
    """One kind of request: how it enters, what C version must handle it, what D must read."""

    name: str
    baggage: list[bytes]  # the request's (via A) or the record's (direct) baggage headers
    via_a: bool
    handled_by: str
    tenant: str | None


KINDS = [
    # Through A: OpenTelemetry Python reads the request's baggage and writes it on the record.
    Kind("routed", [b"tenant=t1"], True, SANDBOX, "t1"),
    Kind("other-tenant", [b"tenant=t2"], True, "baseline", "t2"),
    Kind("no-baggage", [], True, "baseline", None),
    Kind("whitespace", [b" user=a, tenant=t1 "], True, SANDBOX, "t1"),
    Kind("percent-encoded", [b"tenant=t%31"], True, SANDBOX, "t1"),
    Kind("non-ascii-member", ["note=café, tenant=t1".encode()], True, SANDBOX, "t1"),
    # OpenTelemetry Python in A keeps the property in the value and writes tenant=t1%3Bprop%3Dx:
    # the record's tenant, for every W3C reader, is "t1;prop=x" (not routed): baseline, and D
    # sees the same tenant. One version, the tenant carried on; A's SDK chose it.
    Kind("properties-python", [b"tenant=t1;prop=x"], True, "baseline", "t1;prop=x"),
    # Written as other producers send them.
    Kind("properties", [b"tenant=t1;prop=x"], False, SANDBOX, "t1"),
    Kind("whitespace-raw", [b" user=a, tenant=t1 "], False, SANDBOX, "t1"),
    Kind("trailing-blank-raw", [b"tenant=t1 "], False, SANDBOX, "t1"),
    Kind("percent-encoded-raw", [b"tenant=t%31"], False, SANDBOX, "t1"),
    Kind("non-ascii-member-raw", ["note=café, tenant=t1".encode()], False, SANDBOX, "t1"),
    Kind("two-headers-raw", [b"user=a", b"tenant=t1"], False, SANDBOX, "t1"),
    Kind("other-tenant-raw", [b"tenant=t2;p"], False, "baseline", "t2"),
]


async def _start(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, env={**os.environ, "OTEL_PROPAGATORS": "tracecontext,baggage", **env},
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )


async def _answers(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def _uvicorn(role: str, **env: str) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    process = await _start(
        {"APP_ROLE": role, **env},
        "-m", "uvicorn", "tests.interop.tenant_apps:app", "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning",
    )
    return process, port


async def _stop(process: asyncio.subprocess.Process) -> str:
    if process.returncode is None:
        process.terminate()
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    return output.decode(errors="replace")


@pytest.fixture
async def services(bootstrap_servers: str, unique: str, tmp_path: Path) -> AsyncIterator[dict[str, int]]:
    """A, D, and C baseline and sandbox behind their sidecars, all answering; ports by name."""
    topic = f"orders-{unique}"
    routes = tmp_path / "routes.yaml"
    routes.write_text(f'tenants:\n  "t1": {{{SERVICE}: {SANDBOX}}}\n')
    await create_topic(bootstrap_servers, topic, 2)
    processes: list[asyncio.subprocess.Process] = []
    ports: dict[str, int] = {}
    try:
        d, ports["d"] = await _uvicorn("D")
        a, ports["a"] = await _uvicorn("A", APP_BOOTSTRAP=bootstrap_servers, APP_TOPIC=topic)
        processes += [d, a]
        for version in ("baseline", SANDBOX):
            c, c_port = await _uvicorn("C", APP_VERSION=version, APP_D_URL=f"http://127.0.0.1:{ports['d']}/calls")
            admin = ports[f"admin-{version}"] = free_port()
            env = {
                "KTP_BOOTSTRAP_SERVERS": bootstrap_servers, "KTP_SERVICE": SERVICE, "KTP_GROUP": f"c-{unique}",
                "KTP_TOPICS": topic, "KTP_APP_URL": f"http://127.0.0.1:{c_port}/events",
                "KTP_ROUTES": f"file:{routes}", "KTP_AUTO_OFFSET_RESET": "earliest",
                "KTP_ADMIN_ADDR": f"127.0.0.1:{admin}", "KTP_METRICS_ADDR": f"127.0.0.1:{free_port()}",
                "KTP_PUBLISH_ADDR": f"127.0.0.1:{free_port()}", "KTP_SESSION_TIMEOUT": "2",
                "KTP_COMMIT_INTERVAL": "0.2", "KTP_GROUPS_TOPIC": f"_ktp_sandbox_groups-{unique}",
            }
            if version != "baseline":
                env["KTP_SANDBOX"] = version
            processes.append(c)
            processes.append(await _start(env, "-m", "proxy", "sidecar"))
        for name, port in (("D", ports["d"]), ("A", ports["a"])):
            await eventually(lambda: _answers(f"http://127.0.0.1:{port}/docs"), 60, f"{name} answers")
        for version in ("baseline", SANDBOX):
            # ready: group joined, routes read, and its C answering
            admin = ports[f"admin-{version}"]
            await eventually(lambda: _answers(f"http://127.0.0.1:{admin}/readyz"), 60, f"C {version} ready")
        yield ports
    finally:
        outputs = [await _stop(p) for p in processes]
        for output in outputs:
            if "Traceback" in output:
                print(output)  # shown when the test fails


async def _produce_raw(bootstrap_servers: str, topic: str, records: list[tuple[str, list[bytes], str]]) -> None:
    """Records as a producer that writes headers as given (confluent-kafka, kafkajs, Java)."""
    producer = Producer({"bootstrap.servers": bootstrap_servers})
    for order, baggage_headers, traceparent in records:
        headers = [("traceparent", traceparent.encode()), *(("baggage", value) for value in baggage_headers)]
        producer.produce(topic, value=order.encode(), headers=headers)
    assert await asyncio.to_thread(producer.flush, 10) == 0


async def test_every_kind_is_handled_by_one_version_and_its_tenant_reaches_d(
    bootstrap_servers: str, unique: str, services: dict[str, int]
) -> None:
    topic = f"orders-{unique}"
    traces = {kind.name: secrets.token_hex(16) for kind in KINDS}
    async with aiohttp.ClientSession() as session:
        for kind in KINDS:
            if kind.via_a:
                headers: list[tuple[str, str]] = [("traceparent", f"00-{traces[kind.name]}-{secrets.token_hex(8)}-01")]
                headers += [("baggage", value.decode("latin-1")) for value in kind.baggage]
                async with session.post(f"http://127.0.0.1:{services['a']}/orders/{kind.name}",
                                        headers=headers) as response:
                    assert response.status == 200, await response.text()
        await _produce_raw(bootstrap_servers, topic, [
            (kind.name, kind.baggage, f"00-{traces[kind.name]}-{secrets.token_hex(8)}-01")
            for kind in KINDS if not kind.via_a
        ])

        async def d_calls() -> list[dict[str, Any]]:
            async with session.get(f"http://127.0.0.1:{services['d']}/calls") as response:
                return list(json.loads(await response.text()))

        async def all_handled() -> bool:
            return len({call["order"] for call in await d_calls()}) == len(KINDS)

        await eventually(all_handled, 90, "every order reached D")
        await asyncio.sleep(2.0)  # a second handling, were there one, would show by now
        calls = await d_calls()

    by_order: dict[str, list[dict[str, Any]]] = {}
    for call in calls:
        by_order.setdefault(call["order"], []).append(call)
    for kind in KINDS:
        seen = by_order[kind.name]
        assert [call["handled_by"] for call in seen] == [kind.handled_by], (kind, seen)
        call = seen[0]
        raw = call["baggage"]
        tenant = parse(raw.encode("latin-1")).get("tenant") if raw is not None else None
        assert (tenant or None) == kind.tenant, (kind, raw)
        assert call["trace_id"] == traces[kind.name], (kind, call)

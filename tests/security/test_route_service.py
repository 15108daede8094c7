"""The route service's access control, limits and TLS, against the real broker.

Writes need the write token; reads need the write or the read token unless ``--public-reads``;
a refused request is answered 401 and logged without the token; limits hold; HTTPS works end to
end (``ktp tenant``'s client and the sidecar's ``http(s)://`` route source).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from proxy.errors import ConfigError
from proxy.kafka import KafkaConnection, client_ssl_context
from proxy.routes.client import RouteServiceClient, RouteServiceError
from proxy.routeservice.server import RouteService, RouteServiceConfig
from proxy.routing.sources import create_route_source
from proxy.testing.tls import Pki
from tests.security.conftest import logged_text, write_secret

WRITE_TOKEN = "write-token-0c8e51d2-secret"
READ_TOKEN = "read-token-77a1f3e0-secret"
WRONG_TOKEN = "wrong-token-4be2a9c1-guess"


def config(bootstrap_servers: str, tmp_path: Path, **overrides: Any) -> RouteServiceConfig:
    topic = f"_ktp_routes-sec-{uuid.uuid4().hex[:8]}"
    values: dict[str, Any] = dict(
        kafka=KafkaConnection(bootstrap_servers=bootstrap_servers),
        listen=("127.0.0.1", 0),
        routes_topic=topic,
        groups_topic=f"{topic}-groups",
        token_file=write_secret(tmp_path / "write-token", WRITE_TOKEN),
        max_body_bytes=4096,
        drain_timeout=1.0,
    )
    values.update(overrides)
    return RouteServiceConfig(**values)


@contextlib.asynccontextmanager
async def running(cfg: RouteServiceConfig) -> AsyncIterator[RouteService]:
    async with RouteService(cfg) as service:
        yield service


async def call(
    service: RouteService,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: Any = None,
    data: bytes | None = None,
    ssl_context: ssl.SSLContext | bool = True,
) -> tuple[int, Any]:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    if body is not None:
        data = json.dumps(body).encode()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_context)) as session:
        async with session.request(
            method, URL(service.url + path, encoded=True), data=data, headers=headers
        ) as response:
            text = await response.text()
            if response.content_type != "application/json":
                return response.status, text
            return response.status, json.loads(text)


PUT = {"routes": {"orders-worker": "pr-42"}}


async def test_tokens_gate_writes_and_reads_and_refusals_are_logged_without_them(
    bootstrap_servers: str, tmp_path: Path, all_logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("proxy.routeservice.server.REFUSALS_LOGGED_PER_SECOND", 100)
    cfg = config(bootstrap_servers, tmp_path, read_token_file=write_secret(tmp_path / "read", READ_TOKEN))
    async with running(cfg) as service:
        assert (await call(service, "PUT", "/v1/tenants/t1", token=WRITE_TOKEN, body=PUT))[0] == 200
        cases = [
            # (method, path, token, expected status)
            ("PUT", "/v1/tenants/t2", None, 401),
            ("PUT", "/v1/tenants/t2", WRONG_TOKEN, 401),
            ("PUT", "/v1/tenants/t2", READ_TOKEN, 401),  # the read token cannot write
            ("DELETE", "/v1/tenants/t1", READ_TOKEN, 401),
            ("DELETE", "/v1/tenants/t1", WRONG_TOKEN, 401),
            ("GET", "/v1/tenants/t1", None, 401),
            ("GET", "/v1/tenants", WRONG_TOKEN, 401),
            ("GET", "/v1/routes", None, 401),
            ("GET", "/v1/tenants/t1", READ_TOKEN, 200),
            ("GET", "/v1/routes?since=-1", READ_TOKEN, 200),
            ("GET", "/v1/tenants", WRITE_TOKEN, 200),
            ("GET", "/healthz", None, 200),  # probes need nothing
            ("GET", "/readyz", None, 200),
        ]
        for method, path, token, expected in cases:
            status, body = await call(service, method, path, token=token, body=PUT if method == "PUT" else None)
            assert status == expected, (method, path, token, body)
            if status == 401:
                assert set(body) == {"error"} and "token" in body["error"]
        # Nothing refused was written: t2 does not exist, t1 still does.
        assert (await call(service, "GET", "/v1/tenants/t2", token=WRITE_TOKEN))[0] == 404
        assert (await call(service, "GET", "/v1/tenants/t1", token=WRITE_TOKEN))[0] == 200
    logged = logged_text(all_logs)
    refusals = [r.getMessage() for r in all_logs.records if r.getMessage().startswith("refused ")]
    assert len(refusals) == 8, refusals
    assert any("wrong token" in line and "'/v1/tenants/t2'" in line for line in refusals)
    assert any("no bearer token" in line and "GET '/v1/routes'" in line for line in refusals)
    for token in (WRITE_TOKEN, READ_TOKEN, WRONG_TOKEN):
        assert token not in logged


async def test_refusal_logging_is_rate_limited_and_counts_what_it_drops(
    bootstrap_servers: str, tmp_path: Path, all_logs: pytest.LogCaptureFixture
) -> None:
    """A token-guessing scan must not drown the log, nor go unnoticed."""
    async with running(config(bootstrap_servers, tmp_path)) as service:
        for _ in range(30):
            assert (await call(service, "DELETE", "/v1/tenants/x", token=WRONG_TOKEN))[0] == 401
        await asyncio.sleep(1.1)
        assert (await call(service, "DELETE", "/v1/tenants/x", token=WRONG_TOKEN))[0] == 401
    lines = [r.getMessage() for r in all_logs.records if r.name == "proxy.routeservice.server"]
    refused = [line for line in lines if line.startswith("refused ")]
    dropped = [line for line in lines if line.endswith("more refused requests were not logged")]
    assert 1 < len(refused) <= 11, refused  # at most 5 a second; the scan may straddle a second
    assert dropped and len(refused) + sum(int(line.split()[0]) for line in dropped) == 31
    assert WRONG_TOKEN not in logged_text(all_logs)


async def test_public_reads_open_reads_only(bootstrap_servers: str, tmp_path: Path) -> None:
    async with running(config(bootstrap_servers, tmp_path, public_reads=True)) as service:
        assert (await call(service, "PUT", "/v1/tenants/p", token=WRITE_TOKEN, body=PUT))[0] == 200
        assert (await call(service, "GET", "/v1/tenants/p"))[0] == 200
        assert (await call(service, "GET", "/v1/routes"))[0] == 200
        assert (await call(service, "PUT", "/v1/tenants/q", body=PUT))[0] == 401
        assert (await call(service, "DELETE", "/v1/tenants/p"))[0] == 401


def test_conflicting_access_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--read-token-file has no use with --public-reads"):
        config("b:9092", tmp_path, public_reads=True, read_token_file="/r")
    with pytest.raises(ConfigError, match="give both or neither"):
        config("b:9092", tmp_path, tls_certfile="/c.pem")


async def test_limits_on_tenants_names_and_bodies(bootstrap_servers: str, tmp_path: Path) -> None:
    async with running(config(bootstrap_servers, tmp_path, max_tenants=3, max_body_bytes=65536)) as service:
        for i in range(3):
            assert (await call(service, "PUT", f"/v1/tenants/n{i}", token=WRITE_TOKEN, body=PUT))[0] == 200
        status, body = await call(service, "PUT", "/v1/tenants/n3", token=WRITE_TOKEN, body=PUT)
        assert status == 409 and "--max-tenants" in body["error"]
        # Replacing an existing tenant is not a new one; a freed slot can be used again.
        assert (await call(service, "PUT", "/v1/tenants/n0", token=WRITE_TOKEN, body=PUT))[0] == 200
        assert (await call(service, "DELETE", "/v1/tenants/n1", token=WRITE_TOKEN))[0] == 204
        assert (await call(service, "PUT", "/v1/tenants/n3", token=WRITE_TOKEN, body=PUT))[0] == 200

        too_long_tenant = "t" * 257
        too_long_service = "s" * 64
        many = {f"svc-{i}": "pr-1" for i in range(257)}
        for path, body, data, status in (
            (f"/v1/tenants/{too_long_tenant}", PUT, None, 400),
            ("/v1/tenants/x", {"routes": {too_long_service: "pr-1"}}, None, 400),
            ("/v1/tenants/x", {"routes": {"orders": "p" * 64}}, None, 400),
            ("/v1/tenants/x", {"routes": many}, None, 400),
            ("/v1/tenants/x", None, b'{"routes": {"a": "' + b"b" * 70000 + b'"}}', 413),
        ):
            got, answer = await call(service, "PUT", path, token=WRITE_TOKEN, body=body, data=data)
            assert got == status, (path[:40], answer)
        status, listing = await call(service, "GET", "/v1/tenants", token=WRITE_TOKEN)
        assert status == 200 and {t["tenant"] for t in listing["tenants"]} == {"n0", "n2", "n3"}


async def test_https_for_the_api_the_cli_client_and_the_sidecar_route_source(
    bootstrap_servers: str, tmp_path: Path, pki: Pki
) -> None:
    cfg = config(
        bootstrap_servers, tmp_path,
        tls_certfile=str(pki.server.cert), tls_keyfile=str(pki.server.key),
        read_token_file=write_secret(tmp_path / "read", READ_TOKEN),
    )
    trusted = client_ssl_context(str(pki.ca), "--cafile")
    async with running(cfg) as service:
        assert service.url.startswith("https://127.0.0.1:")
        async with RouteServiceClient(service.url, token=WRITE_TOKEN, ssl_context=trusted) as client:
            stored = await client.put("tls-tenant", {"orders-worker": "pr-7"})
        # The sidecar's http(s):// route source: read token, CA, over TLS.
        source = create_route_source(
            service.url, token_file=str(tmp_path / "read"), cafile=str(pki.ca)
        )
        async with source:
            route = source.table.latest("tls-tenant")
            assert route is not None and dict(route.services) == {"orders-worker": "pr-7"}
            assert source.table.version >= stored.version
        # A client that does not trust the CA refuses the server; plain HTTP gets no answer.
        untrusting = client_ssl_context(str(pki.other_ca), "--cafile")
        async with RouteServiceClient(service.url, token=WRITE_TOKEN, ssl_context=untrusting) as client:
            with pytest.raises(RouteServiceError, match="cannot reach"):
                await client.list_tenants()
        plain = service.url.replace("https://", "http://")
        async with RouteServiceClient(plain, token=WRITE_TOKEN, timeout=3) as client:
            with pytest.raises(RouteServiceError):
                await client.list_tenants()


async def test_the_sidecar_route_source_without_the_read_token_is_refused(
    bootstrap_servers: str, tmp_path: Path
) -> None:
    async with running(config(bootstrap_servers, tmp_path)) as service:
        source = create_route_source(service.url)
        with pytest.raises(TimeoutError):
            # start() retries while refused (the table never syncs on an unauthorised answer).
            await asyncio.wait_for(source.start(), 1.5)
        await source.stop()
        assert not source.table.synced

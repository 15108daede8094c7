"""The route service's HTTP API against the real broker: round trip, auth, validation, errors."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from yarl import URL

from proxy.routes.client import RouteServiceClient, RouteServiceError, TenantNotFound
from proxy.routeservice.server import RouteService, RouteServiceConfig
from proxy.routes.records import parse_rfc3339
from proxy.routes.catchup import now_ms
from tests.routeservice.conftest import TOKEN

AUTH = {"authorization": f"Bearer {TOKEN}"}


async def call(
    service: RouteService,
    method: str,
    path: str,
    *,
    body: Any = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """One raw request; (status, JSON body or None, response). With no ``headers`` it carries the
    token (reads need one too); pass ``headers={}`` for an anonymous request."""
    if headers is None:
        headers = dict(AUTH)
    if body is not None:
        data = json.dumps(body).encode()
        headers = {"content-type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession() as session, session.request(
        method, URL(service.url + path, encoded=True), data=data, headers=headers
    ) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None, response


async def test_put_get_list_delete_round_trip(service: RouteService, client: RouteServiceClient) -> None:
    before = now_ms()
    status, stored, _ = await call(
        service, "PUT", "/v1/tenants/123", body={"routes": {"orders-worker": "pr-42"}}, headers=AUTH
    )
    assert status == 200, stored
    assert set(stored) == {"tenant", "routes", "version", "effective_from", "written_at", "lead_ms"}
    assert stored["tenant"] == "123" and stored["routes"] == {"orders-worker": "pr-42"}
    # Stored at once, in force one route lead (1 s by default) after it was written.
    assert stored["lead_ms"] == 1000
    written = parse_rfc3339(stored["written_at"])
    assert before <= written <= now_ms()
    assert parse_rfc3339(stored["effective_from"]) == written + 1000
    assert stored["effective_from"].endswith("Z") and stored["version"] >= 0

    status, got, _ = await call(service, "GET", "/v1/tenants/123")
    assert status == 200 and got == stored

    # Tenants are opaque routing keys: '/', '%', '?' and '..' travel percent-encoded.
    odd = await client.put("a/b%c?d#..", {"billing": "pr-7", "orders-worker": "pr-7"})
    assert (await client.get("a/b%c?d#..")) == odd
    replaced = await client.put("123", {"orders-worker": "pr-43"})
    assert replaced.version > stored["version"] and replaced.effective_from_ms > parse_rfc3339(stored["effective_from"])

    status, listing, _ = await call(service, "GET", "/v1/tenants")
    assert status == 200
    assert [t["tenant"] for t in listing["tenants"]] == ["123", "a/b%c?d#.."]
    assert listing["tenants"][0] == replaced.to_api()

    status, body, _ = await call(service, "DELETE", "/v1/tenants/123", headers=AUTH)
    assert status == 204 and body is None
    status, body, _ = await call(service, "GET", "/v1/tenants/123")
    assert status == 404 and "not found" in body["error"]
    status, body, _ = await call(service, "DELETE", "/v1/tenants/123", headers=AUTH)
    assert status == 404 and "not found" in body["error"]
    assert [r.tenant for r in await client.list_tenants()] == ["a/b%c?d#.."]
    with pytest.raises(TenantNotFound):
        await client.get("123")
    with pytest.raises(TenantNotFound):
        await client.delete("never-was")

    # A deleted tenant can come back, later than its deletion.
    back = await client.put("123", {"orders-worker": "pr-44"})
    assert back.version > replaced.version
    assert (await client.get("123")).routes == {"orders-worker": "pr-44"}


async def test_writes_need_the_token(service: RouteService) -> None:
    put = {"routes": {"orders-worker": "pr-42"}}
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {TOKEN}"}, {"authorization": "Bearer"}):
        for method, body in (("PUT", put), ("DELETE", None)):
            status, answer, response = await call(service, method, "/v1/tenants/t1", body=body, headers=headers)
            assert status == 401, (method, headers, answer)
            assert "token" in answer["error"]
            assert response.headers["www-authenticate"].startswith("Bearer")
    # Nothing was written; reads need the token too (no --public-reads here).
    status, answer, _ = await call(service, "GET", "/v1/tenants/t1")
    assert status == 404
    async with RouteServiceClient(service.url) as anonymous:
        with pytest.raises(RouteServiceError) as info:
            await anonymous.put("t1", {"orders-worker": "pr-42"})
        assert info.value.status == 401 and not info.value.retriable
        with pytest.raises(RouteServiceError) as info:
            await anonymous.list_tenants()
        assert info.value.status == 401


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "problem"),
    [
        ("PUT", "/v1/tenants/has%20space", {"body": {"routes": {"a": "b"}}}, 400, "tenant"),
        ("GET", "/v1/tenants/" + "x" * 257, {}, 400, "tenant"),
        ("PUT", "/v1/tenants/t", {"body": {"routes": {}}}, 400, "DELETE the tenant"),
        ("PUT", "/v1/tenants/t", {"body": {"routes": {"Orders": "pr-1"}}}, 400, "service name 'Orders'"),
        ("PUT", "/v1/tenants/t", {"body": {"routes": {"orders": "pr_1"}}}, 400, "sandbox name 'pr_1'"),
        ("PUT", "/v1/tenants/t", {"body": {"routez": {"a": "b"}}}, 400, "unknown field"),
        ("PUT", "/v1/tenants/t", {"body": ["a"]}, 400, "JSON object"),
        ("PUT", "/v1/tenants/t", {"data": b"{not json"}, 400, "not valid JSON"),
        ("PUT", "/v1/tenants/t", {"data": b"x" * 5000}, 413, "at most 4096 bytes"),
        (
            "PUT",
            "/v1/tenants/t",
            {"data": b'{"routes": {"a": "b"}}', "headers": {"content-type": "text/plain"}},
            415,
            "application/json",
        ),
        ("GET", "/v1/nope", {}, 404, "no such endpoint"),
        ("POST", "/v1/tenants/t", {}, 405, "not allowed"),
        ("GET", "/v1/routes?since=abc", {}, 400, "since"),
        ("GET", "/v1/routes?wait=3600", {}, 400, "wait"),
        ("GET", "/v1/routes?sync=perhaps", {}, 400, "sync"),
    ],
)
async def test_bad_requests_get_json_errors(
    service: RouteService, method: str, path: str, kwargs: dict[str, Any], status: int, problem: str
) -> None:
    headers = {**AUTH, "content-type": "application/json", **kwargs.pop("headers", {})}
    got, body, _ = await call(service, method, path, headers=headers, **kwargs)
    assert got == status, body
    assert isinstance(body, dict) and set(body) == {"error"} and problem in body["error"], body


async def test_routes_topic_is_created_with_one_partition_and_compaction(
    service: RouteService, bootstrap_servers: str, routes_topic: str
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        [described] = await admin.describe_topics([routes_topic])
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, routes_topic)])
    finally:
        await admin.close()
    assert len(described["partitions"]) == 1
    configs = {entry[0]: entry[1] for entry in response.resources[0][4]}
    assert configs.get("cleanup.policy") == "compact"
    status, body, _ = await call(service, "GET", "/readyz")
    assert status == 200 and body["ready"] is True


async def test_token_rotation_needs_no_restart(service: RouteService, token_file: str) -> None:
    put = {"routes": {"orders-worker": "pr-1"}}
    Path(token_file).write_text("rotated-token\n")
    status, _, _ = await call(service, "PUT", "/v1/tenants/r", body=put, headers=AUTH)
    assert status == 401
    status, _, _ = await call(service, "PUT", "/v1/tenants/r", body=put, headers={"authorization": "Bearer rotated-token"})
    assert status == 200
    # A token file gone missing keeps the last good token instead of locking writers out.
    Path(token_file).unlink()
    status, _, _ = await call(service, "DELETE", "/v1/tenants/r", headers={"authorization": "Bearer rotated-token"})
    assert status == 204


async def test_deeply_nested_json_is_a_bad_request(service_config: RouteServiceConfig) -> None:
    """100,000 nested arrays overflow a recursive parser: 400, not a 500 from a RecursionError."""
    config = dataclasses.replace(service_config, max_body_bytes=300_000)
    async with RouteService(config) as service:
        deep = b'{"routes": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        status, body, _ = await call(
            service, "PUT", "/v1/tenants/t", data=deep,
            headers={**AUTH, "content-type": "application/json"},
        )  # fmt: skip
        assert status == 400, body
        assert body == {"error": "body is JSON nested too deeply"}
        assert (await call(service, "GET", "/v1/tenants/t"))[0] == 404


async def test_a_client_that_disconnects_is_not_an_error(
    service: RouteService, caplog: pytest.LogCaptureFixture
) -> None:
    url = URL(service.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        b"PUT /v1/tenants/t HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {TOKEN}\r\ncontent-length: 4000\r\n\r\n".encode()
        + b'{"routes": {"orders"'
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await asyncio.sleep(0.3)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    # And the service still answers.
    assert (await call(service, "GET", "/v1/tenants/t"))[0] == 404


async def test_metrics_count_requests_by_route_template_without_tenant_names(
    service: RouteService,
) -> None:
    assert (await call(service, "PUT", "/v1/tenants/acme-7", body={"routes": {"orders": "pr-1"}}))[0] == 200
    assert (await call(service, "GET", "/v1/tenants/nobody"))[0] == 404
    assert (await call(service, "GET", "/v1/nope"))[0] == 404
    status, _, response = await call_text(service, "/metrics")
    assert status == 200 and response.startswith("# HELP")
    assert 'ktp_routes_requests_total{method="PUT",route="/v1/tenants/{tenant}",status="200"} 1.0' in response
    assert 'ktp_routes_requests_total{method="GET",route="/v1/tenants/{tenant}",status="404"} 1.0' in response
    assert 'ktp_routes_requests_total{method="GET",route="unmatched",status="404"} 1.0' in response
    assert "ktp_routes_tenants 1.0" in response
    assert "acme-7" not in response and "nobody" not in response


async def call_text(service: RouteService, path: str) -> tuple[int, None, str]:
    """An anonymous GET whose answer is text (metrics are open like the probes)."""
    async with aiohttp.ClientSession() as session, session.get(service.url + path) as response:
        return response.status, None, await response.text()

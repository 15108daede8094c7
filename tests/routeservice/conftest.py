"""Fixtures for the route service: a fresh routes topic per test, a token, running services."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from proxy.kafka import KafkaConnection
from proxy.routes.client import RouteServiceClient
from proxy.routeservice.server import RouteService, RouteServiceConfig

TOKEN = "s3cret-token"

ServiceFactory = Callable[[], AbstractAsyncContextManager[RouteService]]


@pytest.fixture
def routes_topic(unique: str) -> str:
    """A routes topic of this test's own (the service creates it)."""
    return f"_ktp_routes-{unique}"


@pytest.fixture
def token_file(tmp_path: Path) -> str:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return str(path)


@pytest.fixture
def service_config(bootstrap_servers: str, routes_topic: str, token_file: str) -> RouteServiceConfig:
    return RouteServiceConfig(
        groups_topic=f"{routes_topic}-groups",
        kafka=KafkaConnection(bootstrap_servers=bootstrap_servers),
        listen=("127.0.0.1", 0),
        routes_topic=routes_topic,
        token_file=token_file,
        max_body_bytes=4096,
        drain_timeout=1.0,
    )


@pytest.fixture
def route_service(service_config: RouteServiceConfig) -> ServiceFactory:
    """``async with route_service() as service:`` a replica on this test's routes topic."""

    @contextlib.asynccontextmanager
    async def start() -> AsyncIterator[RouteService]:
        service = RouteService(service_config)
        async with service:
            yield service

    return start


@pytest.fixture
async def service(route_service: ServiceFactory) -> AsyncIterator[RouteService]:
    async with route_service() as running:
        yield running


@pytest.fixture
async def client(service: RouteService) -> AsyncIterator[RouteServiceClient]:
    async with RouteServiceClient(service.url, token=TOKEN) as running:
        yield running

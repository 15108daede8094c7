"""Shared fixtures: a real Kafka-protocol broker for the whole session, one topic per test.

By default the session starts Tansu (EmbeddedBroker) on a free loopback port. Set
``KTP_TEST_BOOTSTRAP_SERVERS=host:port`` to run the same tests against an external Kafka instead.
If neither works the integration tests fail: they never skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from proxy.testing.broker import EmbeddedBroker

if TYPE_CHECKING:
    from proxy.sidecar.config import SidecarConfig

EXTERNAL = os.environ.get("KTP_TEST_BOOTSTRAP_SERVERS")


@pytest.fixture(scope="session")
def bootstrap_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if EXTERNAL:
        yield EXTERNAL
        return
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic and group names: one topic per test."""
    return uuid.uuid4().hex[:10]


async def create_topic(bootstrap_servers: str, name: str, partitions: int = 4) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    return name


@pytest.fixture
async def topic(bootstrap_servers: str, unique: str) -> AsyncIterator[str]:
    """A fresh 4-partition topic for this test."""
    yield await create_topic(bootstrap_servers, f"t-{unique}", 4)


def group_for(topic: str) -> str:
    """The baseline group :func:`sidecar_config` gives sidecars of ``topic`` by default."""
    return f"orders-{topic}"


def sidecar_config(
    bootstrap_servers: str,
    topic: str,
    app_url: str,
    routes_file: str,
    *,
    sandbox: str | None = None,
    group: str | None = None,
    **overrides: object,
) -> "SidecarConfig":
    """A sidecar config for tests: ephemeral admin/metrics ports, fast commits, earliest start.

    The group defaults to one per topic (:func:`group_for`): tests share one broker, and Tansu
    keeps a group's departed members, so a group reused by test after test can end up in a state
    where a new member's join is answered with a rejoin, forever (seen once in a full run)."""
    from proxy.kafka import KafkaConnection
    from proxy.sidecar.config import SidecarConfig

    values: dict[str, object] = dict(
        kafka=KafkaConnection(bootstrap_servers=bootstrap_servers),
        service="orders-worker",
        sandbox=sandbox,
        group=group if group is not None else group_for(topic),
        topics=(topic,),
        app_url=app_url,
        routes=f"file:{routes_file}",
        auto_offset_reset="earliest",
        admin_addr=("127.0.0.1", 0),
        metrics_addr=("127.0.0.1", 0),
        publish_addr=("127.0.0.1", 0),
        commit_interval=0.2,
        backoff_initial=0.02,
        backoff_max=0.2,
        drain_timeout=5.0,
        # Tansu holds a join for half the session timeout; short sessions keep tests fast.
        session_timeout=2.0,
        # One registry per test: a route service of another test must not reap this test's groups.
        groups_topic=f"_ktp_sandbox_groups-{topic}",
    )
    values.update(overrides)
    return SidecarConfig(**values)  # type: ignore[arg-type]


async def produce(
    bootstrap_servers: str,
    topic: str,
    records: "list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]",
) -> None:
    """Produce (key, value, headers) records and wait until the broker has all of them."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, headers=headers) for key, value, headers in records
        ]
        for future in futures:
            await future
    finally:
        await producer.stop()


def baggage(tenant: str | None) -> list[tuple[str, bytes]]:
    return [] if tenant is None else [("baggage", f"tenant={tenant}".encode())]


async def eventually(check: "Callable[[], Awaitable[bool]]", timeout: float = 20.0, what: str = "condition") -> None:
    """Poll an async check until it holds; fail naming ``what`` if it does not within ``timeout``."""
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        await asyncio.sleep(0.05)

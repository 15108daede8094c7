"""Sandbox consumer-group lifecycle: groups are deleted when no route sends records to them.

Deleting a tenant's routes should also delete the consumer groups they made. The route service
owns this because it outlives sandbox pods: when a sandbox is torn
down its pods are gone, and nothing else would clean up after them.

- A sandbox pod's sidecar *registers* its group ``G-X`` with its service and sandbox in a small
  compacted topic (``--groups-topic``, default ``_ktp_sandbox_groups``; key = group name).
- The route service's :class:`GroupReaper` periodically compares the registrations with the live
  routes. A group whose ``(service, sandbox)`` no live route names is first described
  (``DescribeGroups``): only a group the broker shows with no members (state ``Empty`` or
  ``Dead``) is deleted with ``DeleteGroups``. A group with members is left alone and looked at
  again next round: its sandbox pods are still running, and deleting their group would throw
  away their member ids and committed offsets under them. Some brokers accept ``DeleteGroups``
  for a group with members, so their refusal (``NON_EMPTY_GROUP``) cannot be the check; it
  still covers a member that joins between the describe and the delete, where brokers refuse.
  Deleted (or already missing) groups get a tombstone in the registry.

aiokafka 0.14's admin client has no ``delete_consumer_groups``, so the request is defined here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String

from proxy import compat
from proxy.errors import BrokerError, RouteError
from proxy.kafka import KafkaConnection
from proxy.routes.records import RouteRecord
from proxy.routes.topic import ensure_routes_topic
from proxy.routes.table import check_name

log = logging.getLogger(__name__)

DEFAULT_GROUPS_TOPIC = "_ktp_sandbox_groups"
DEFAULT_REAP_INTERVAL = 30.0
# Kafka error codes of DeleteGroups.
GROUP_ID_NOT_FOUND = 69
NON_EMPTY_GROUP = 68
# DescribeGroups states of a group with no members ("Dead": the broker has no such group).
EMPTY_STATES = frozenset({"Empty", "Dead"})


class DeleteGroupsResponse_v0(Response):
    API_KEY = 42
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("results", Array(("group_id", String("utf-8")), ("error_code", Int16))),
    )


class DeleteGroupsResponse_v1(Response):
    API_KEY = 42
    API_VERSION = 1
    SCHEMA = DeleteGroupsResponse_v0.SCHEMA


class DeleteGroupsRequest_v0(RequestStruct):
    API_KEY = 42
    API_VERSION = 0
    RESPONSE_TYPE = DeleteGroupsResponse_v0
    SCHEMA = Schema(("groups_names", Array(String("utf-8"))))


class DeleteGroupsRequest_v1(RequestStruct):
    API_KEY = 42
    API_VERSION = 1
    RESPONSE_TYPE = DeleteGroupsResponse_v1
    SCHEMA = DeleteGroupsRequest_v0.SCHEMA


class DeleteGroupsRequest(Request[DeleteGroupsRequest_v0 | DeleteGroupsRequest_v1]):
    """Kafka's DeleteGroups (API key 42), versions 0-1 (non-flexible encodings)."""

    API_KEY = 42

    def __init__(self, groups: list[str]) -> None:
        self.groups = groups

    def build(
        self, request_struct_class: type[DeleteGroupsRequest_v0 | DeleteGroupsRequest_v1]
    ) -> DeleteGroupsRequest_v0 | DeleteGroupsRequest_v1:
        return request_struct_class(self.groups)


@dataclass(frozen=True, slots=True)
class SandboxGroup:
    """A sandbox pod's consumer group and what it consumes for."""

    group: str
    service: str
    sandbox: str

    def encode(self) -> tuple[bytes, bytes]:
        return self.group.encode(), json.dumps(
            {"group": self.group, "service": self.service, "sandbox": self.sandbox}, sort_keys=True
        ).encode()

    @classmethod
    def decode(cls, key: bytes | None, value: bytes | None) -> SandboxGroup | None:
        """A registration, or None for a tombstone. Raises :class:`RouteError` if malformed."""
        if value is None:
            return None
        try:
            data = json.loads(value)
            group, service, sandbox = data["group"], data["service"], data["sandbox"]
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise RouteError(f"sandbox group registration {key!r} is malformed: {exc}") from exc
        if not isinstance(group, str) or (key is not None and key != group.encode()):
            raise RouteError(f"sandbox group registration {key!r} names another group")
        return cls(group, check_name("service", service), check_name("sandbox", sandbox))


def unreferenced(groups: Iterable[SandboxGroup], live: Iterable[RouteRecord]) -> list[SandboxGroup]:
    """Registered groups whose ``(service, sandbox)`` no live route names. Pure."""
    named = {(service, sandbox) for record in live for service, sandbox in record.routes.items()}
    return [g for g in groups if (g.service, g.sandbox) not in named]


async def register_sandbox_group(connection: KafkaConnection, topic: str, group: SandboxGroup) -> None:
    """Record that ``group`` exists (a sandbox sidecar calls this at start)."""
    await ensure_routes_topic(connection, topic, purpose="sandbox-group registry")
    producer = AIOKafkaProducer(**connection.client_kwargs(), acks="all", client_id="ktp-sandbox-groups")
    await producer.start()
    try:
        key, value = group.encode()
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def read_registry(connection: KafkaConnection, topic: str) -> dict[str, SandboxGroup]:
    """Every registered group, read from the start of the registry to its current end."""
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(**connection.client_kwargs(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        groups: dict[str, SandboxGroup] = {}
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            for record in batch.get(tp, []):
                name = record.key.decode("utf-8", "replace") if record.key else ""
                try:
                    registration = SandboxGroup.decode(record.key, record.value)
                except RouteError as exc:
                    log.warning("%s", exc)
                    continue
                if registration is None:
                    groups.pop(name, None)
                else:
                    groups[registration.group] = registration
        return groups
    finally:
        await consumer.stop()


@dataclass(frozen=True, slots=True)
class GroupState:
    """What DescribeGroups says of one group: its Kafka error code, state and member count."""

    error_code: int
    state: str
    members: int

    @property
    def empty(self) -> bool:
        """Seen with no members: safe to delete."""
        return self.error_code == 0 and self.members == 0 and self.state in EMPTY_STATES

    @property
    def missing(self) -> bool:
        return self.error_code == GROUP_ID_NOT_FOUND


async def describe_groups(admin: AIOKafkaAdminClient, groups: list[str]) -> dict[str, GroupState]:
    """DescribeGroups of each group at its coordinator."""
    states: dict[str, GroupState] = {}
    for response in await admin.describe_consumer_groups(groups):
        for described in response.to_object()["groups"]:
            states[described["group"]] = GroupState(
                described["error_code"], described["state"], len(described["members"])
            )
    return states


async def delete_groups(admin: AIOKafkaAdminClient, groups: list[str]) -> dict[str, int]:
    """Send DeleteGroups to each group's coordinator; the Kafka error code per group."""
    results: dict[str, int] = {}
    for group in groups:
        node = await admin.find_coordinator(group)
        response = await compat.send_admin_request(admin, DeleteGroupsRequest([group]), node)
        for group_id, code in response.results:
            results[group_id] = code
    return results


class GroupReaper:
    """Deletes sandbox groups no live route needs any more, every ``interval`` seconds."""

    def __init__(
        self,
        connection: KafkaConnection,
        *,
        topic: str = DEFAULT_GROUPS_TOPIC,
        live_routes: Callable[[], Awaitable[list[RouteRecord]]],
        interval: float = DEFAULT_REAP_INTERVAL,
    ) -> None:
        self.connection = connection
        self.topic = topic
        self.interval = interval
        self._live_routes = live_routes
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.deleted: list[str] = []

    def __repr__(self) -> str:
        return f"GroupReaper(topic={self.topic!r}, interval={self.interval}, deleted={len(self.deleted)})"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ktp-group-reaper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def poke(self) -> None:
        """Reap soon (a tenant was deleted or changed)."""
        self._wake.set()

    async def _run(self) -> None:
        ensured = False
        while True:
            try:
                if not ensured:
                    await ensure_routes_topic(self.connection, self.topic, purpose="sandbox-group registry")
                    ensured = True
                await self.reap_once()
            except (KafkaError, BrokerError, OSError) as exc:
                log.warning("sandbox group clean-up failed, retrying in %.0fs: %r", self.interval, exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()

    async def reap_once(self) -> list[str]:
        """One round; returns the groups deleted."""
        registered = await read_registry(self.connection, self.topic)
        if not registered:
            return []
        stale = unreferenced(registered.values(), await self._live_routes())
        if not stale:
            return []
        admin = AIOKafkaAdminClient(**self.connection.client_kwargs(), client_id="ktp-group-reaper")
        await admin.start()
        try:
            states = await describe_groups(admin, [g.group for g in stale])
            results = {group: GROUP_ID_NOT_FOUND for group, state in states.items() if state.missing}
            for group, state in states.items():
                if not state.empty and not state.missing:
                    log.info(
                        "sandbox group %s is unreferenced but has %d members (%s); deleting it once it has none",
                        group, state.members, state.state or f"Kafka error {state.error_code}",
                    )
            empty = [group for group, state in states.items() if state.empty]
            if empty:
                results.update(await delete_groups(admin, empty))
        finally:
            await admin.close()
        gone = [group for group, code in results.items() if code in (0, GROUP_ID_NOT_FOUND)]
        for group, code in results.items():
            if code == NON_EMPTY_GROUP:
                log.info("sandbox group %s is unreferenced but still has members; retrying later", group)
            elif code not in (0, GROUP_ID_NOT_FOUND):
                log.warning("deleting sandbox group %s failed: Kafka error %d", group, code)
        if gone:
            producer = AIOKafkaProducer(**self.connection.client_kwargs(), acks="all", client_id="ktp-group-reaper")
            await producer.start()
            try:
                for group in gone:
                    await producer.send_and_wait(self.topic, None, key=group.encode())
            finally:
                await producer.stop()
            log.info("deleted sandbox groups no route references: %s", ", ".join(gone))
            self.deleted.extend(gone)
        return gone

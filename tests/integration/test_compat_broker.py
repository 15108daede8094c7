"""proxy.compat's aiokafka calls against a real broker: a joined member's coordinator."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from proxy import compat
from proxy.routeservice.groups import delete_groups
from tests.conftest import group_for


async def test_coordinator_calls_on_a_joined_member(bootstrap_servers: str, topic: str) -> None:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap_servers, group_id=group_for(topic))
    await consumer.start()
    try:
        await compat.ensure_coordinator_known(consumer)
        assert compat.coordinator_known(consumer)
        async with asyncio.timeout(30):
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=200)
        assert not compat.membership_lost(consumer)
        assert await compat.heartbeat(consumer) is True
        with compat.fetch_context(consumer):
            await asyncio.sleep(0)
    finally:
        await consumer.stop()


async def test_admin_request_deletes_an_empty_group(bootstrap_servers: str, topic: str) -> None:
    group = group_for(topic)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap_servers, group_id=group)
    await consumer.start()
    await consumer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        codes = await delete_groups(admin, [group])
    finally:
        await admin.close()
    # The request reached the coordinator and was answered for this group (0, or "not found"
    # if the broker already dropped the empty group).
    assert group in codes

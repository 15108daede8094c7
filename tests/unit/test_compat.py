"""Each private dependency API in proxy.compat exists in the installed versions.

These fail loudly on an upgrade that drops or renames one; the real calls against a broker are
in tests/integration/test_compat_broker.py.
"""

from __future__ import annotations

import inspect

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.consumer.subscription_state import SubscriptionState

from proxy import compat


def test_group_coordinator_methods_exist() -> None:
    assert inspect.iscoroutinefunction(GroupCoordinator.ensure_coordinator_known)
    assert inspect.iscoroutinefunction(GroupCoordinator._do_heartbeat)


def test_group_coordinator_attributes_are_set_in_init() -> None:
    # generation, member_id and coordinator_id are plain instance attributes.
    source = inspect.getsource(GroupCoordinator)
    for name in ("self.generation", "self.member_id", "self.coordinator_id"):
        assert name in source, name


async def test_consumer_keeps_its_coordinator_and_subscription() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    # Not started: the coordinator does not exist yet, the subscription does.
    assert compat.group_coordinator(consumer) is None
    assert compat.membership_lost(consumer)
    assert not compat.coordinator_known(consumer)
    assert isinstance(consumer._subscription, SubscriptionState)
    with compat.fetch_context(consumer):
        pass


async def test_heartbeat_without_a_coordinator_confirms_nothing() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    assert await compat.heartbeat(consumer) is False
    with pytest.raises(compat.CompatError):
        await compat.ensure_coordinator_known(consumer)


def test_fetch_context_fails_loudly_when_missing() -> None:
    class Bare:
        pass

    with pytest.raises(compat.CompatError, match="fetch_context"):
        compat.fetch_context(Bare())  # type: ignore[arg-type]


def test_group_coordinator_fails_loudly_when_missing() -> None:
    class Bare:
        pass

    with pytest.raises(compat.CompatError, match="_coordinator"):
        compat.group_coordinator(Bare())  # type: ignore[arg-type]


def test_admin_send_request_exists() -> None:
    assert inspect.iscoroutinefunction(AIOKafkaAdminClient._send_request)
    assert list(inspect.signature(AIOKafkaAdminClient._send_request).parameters)[1:3] == ["request", "node_id"]


async def test_admin_send_request_fails_loudly_when_missing() -> None:
    class Bare:
        pass

    with pytest.raises(compat.CompatError, match="_send_request"):
        await compat.send_admin_request(Bare(), object(), 0)  # type: ignore[arg-type]


async def test_consumer_client_sends_requests_through_send() -> None:
    # The routes reader observes Fetch requests by wrapping the consumer's client ``send``.
    from aiokafka.client import AIOKafkaClient

    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    assert isinstance(consumer._client, AIOKafkaClient)
    assert inspect.iscoroutinefunction(AIOKafkaClient.send)
    seen: list[object] = []
    compat.observe_fetches(consumer, lambda sent, answer: seen.append(answer), lambda: 0)
    assert consumer._client.send.__name__ == "observed"


async def test_positions_and_first_generation_of_an_unstarted_consumer() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    assert compat.unpositioned_partitions(consumer) == frozenset()
    assert compat.first_generation_member(consumer) is None


async def test_assignment_state_keeps_positions() -> None:
    from aiokafka import TopicPartition
    from aiokafka.consumer.subscription_state import Assignment

    tp = TopicPartition("t", 0)
    assignment = Assignment([tp])
    assert assignment.tps == frozenset([tp])
    assert assignment.state_value(tp).has_valid_position is False


def test_unpositioned_partitions_fails_loudly_when_missing() -> None:
    class Bare:
        pass

    with pytest.raises(compat.CompatError, match="_subscription"):
        compat.unpositioned_partitions(Bare())  # type: ignore[arg-type]

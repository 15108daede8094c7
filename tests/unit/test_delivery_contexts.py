"""ktp-delivery contexts: usable in flight and within the grace, bounded, then gone."""

from __future__ import annotations

from proxy.delivery.contexts import DeliveryContexts

CONTEXT = (("baggage", "tenant=123"), ("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_in_flight_then_grace_then_gone() -> None:
    clock = Clock()
    contexts = DeliveryContexts(30.0, clock=clock)
    delivery = contexts.open(CONTEXT)
    assert contexts.get(delivery) == CONTEXT
    clock.now += 3600  # in flight: no expiry however long the delivery takes
    assert contexts.get(delivery) == CONTEXT
    contexts.close(delivery)
    clock.now += 29.9
    assert contexts.get(delivery) == CONTEXT
    clock.now += 0.2
    assert contexts.get(delivery) is None
    assert len(contexts) == 0
    assert contexts.get("nope") is None


def test_ids_are_unique_and_not_shared_between_sidecars() -> None:
    first, second = DeliveryContexts(), DeliveryContexts()
    ids = {first.open(()) for _ in range(100)} | {second.open(()) for _ in range(100)}
    assert len(ids) == 200


def test_finished_entries_are_bounded_oldest_first() -> None:
    clock = Clock()
    contexts = DeliveryContexts(60.0, max_finished=3, clock=clock)
    ids = [contexts.open(CONTEXT) for _ in range(5)]
    for delivery in ids:
        contexts.close(delivery)
    assert [contexts.get(d) is not None for d in ids] == [False, False, True, True, True]
    assert len(contexts) == 3


def test_expired_entries_are_pruned_as_others_finish() -> None:
    clock = Clock()
    contexts = DeliveryContexts(1.0, clock=clock)
    for _ in range(100):
        contexts.close(contexts.open(CONTEXT))
        clock.now += 0.1
    assert len(contexts) <= 11

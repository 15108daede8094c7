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


def test_a_bulk_closed_at_once_is_kept_as_if_closed_one_by_one() -> None:
    clock = [0.0]
    one = DeliveryContexts(5.0, max_finished=6, clock=lambda: clock[0])
    many = DeliveryContexts(5.0, max_finished=6, clock=lambda: clock[0])
    context = ("baggage", "tenant=1", "traceparent", "00-x")
    ids_one = list(range(one.open_many([context] * 8), one.counter + 1))
    ids_many = list(range(many.open_many([context] * 8), many.counter + 1))
    for number in ids_one[:4]:
        one.close_number(number)
    many.close_numbers(ids_many[:4])
    clock[0] = 1.0
    for number in ids_one[4:]:
        one.close_number(number)
    many.close_numbers(ids_many[4:])
    # Six finished at most, the oldest dropped first: a bulk as a whole (so at most six, here
    # four); the context reads back by name.
    kept_one = [n for n in ids_one if one.get(f"{one.prefix}{n}") is not None]
    kept_many = [n for n in ids_many if many.get(f"{many.prefix}{n}") is not None]
    assert kept_one == [3, 4, 5, 6, 7, 8] and kept_many == [5, 6, 7, 8]
    assert many.get(f"{many.prefix}8") == (("baggage", "tenant=1"), ("traceparent", "00-x"))
    assert "finished=4" in repr(many) and "in_flight=0" in repr(many)
    # A bulk expires as a whole once its grace is over.
    late = list(range(many.open_many([context] * 2), many.counter + 1))
    clock[0] = 3.0
    many.close_numbers(late)
    clock[0] = 6.5  # the bulk closed at 1.0 is past its grace, the one closed at 3.0 is not
    assert [n for n in [*ids_many, *late] if many.get(f"{many.prefix}{n}") is not None] == late

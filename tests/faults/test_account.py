"""The account itself: it must see loss, duplicates and disorder, or the fault tests prove nothing."""

from __future__ import annotations

from proxy.testing.app import Received
from tests.faults import harness


def account(*args: object, **kwargs: object) -> harness.Account:
    return harness.account(*args, report=False, **kwargs)  # type: ignore[arg-type]


def delivery(seq: int, partition: int, offset: int, key: str = "k") -> Received:
    headers = {"kafka-partition": str(partition), "kafka-offset": str(offset), "kafka-key": key}
    return Received(str(seq).encode(), headers, ())


def test_a_clean_run_counts_nothing() -> None:
    got = account("clean", [delivery(0, 0, 0), delivery(1, 1, 0), delivery(2, 0, 1)], range(3))
    assert (got.lost, got.duplicated, got.out_of_order, got.unexpected) == (0, 0, 0, 0)


def test_loss_duplicates_and_strangers_are_counted() -> None:
    got = account("bad", [delivery(0, 0, 0), delivery(0, 0, 0), delivery(0, 0, 0), delivery(9, 0, 9)], range(3))
    assert (got.lost, got.duplicated, got.unexpected) == (2, 2, 1)


def test_disorder_is_per_partition_and_ignores_redelivery() -> None:
    # A rewind to a committed offset (0, 1 again after 2) is duplication, not disorder.
    rewind = [delivery(0, 0, 0), delivery(1, 0, 1), delivery(2, 0, 2), delivery(1, 0, 1), delivery(2, 0, 2)]
    assert account("rewind", rewind, range(3)).out_of_order == 0
    swapped = [delivery(1, 0, 1), delivery(0, 0, 0), delivery(2, 1, 0)]
    assert account("swapped", swapped, range(3)).out_of_order == 1


def test_key_order_allows_keys_of_a_partition_to_interleave() -> None:
    interleaved = [delivery(1, 0, 1, "b"), delivery(0, 0, 0, "a"), delivery(2, 0, 2, "a")]
    assert account("keys", interleaved, range(3), order="key").out_of_order == 0
    assert account("keys-by-partition", interleaved, range(3)).out_of_order == 1
    assert account("keys-swapped", [delivery(2, 0, 2, "a"), delivery(0, 0, 0, "a")], [0, 2], order="key").out_of_order == 1

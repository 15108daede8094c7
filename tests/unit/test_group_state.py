"""Which DescribeGroups answers let the route service delete a sandbox group."""

from __future__ import annotations

import pytest

from proxy.routeservice.groups import GROUP_ID_NOT_FOUND, GroupState


@pytest.mark.parametrize(
    ("state", "deletable"),
    [
        (GroupState(0, "Empty", 0), True),
        (GroupState(0, "Dead", 0), True),
        (GroupState(0, "Stable", 1), False),
        (GroupState(0, "PreparingRebalance", 0), False),  # members are joining
        (GroupState(0, "CompletingRebalance", 2), False),
        (GroupState(0, "Empty", 1), False),  # a broker's state and members disagree: keep it
        (GroupState(16, "", 0), False),  # NOT_COORDINATOR: try again next round
    ],
)
def test_only_a_group_seen_empty_is_deleted(state: GroupState, deletable: bool) -> None:
    assert state.empty is deletable


def test_a_missing_group_is_gone_not_empty() -> None:
    state = GroupState(GROUP_ID_NOT_FOUND, "", 0)
    assert state.missing and not state.empty

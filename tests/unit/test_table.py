"""Route table: history ordered by effective time, deletions, wholesale replacement."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import RouteError
from proxy.routes.table import DEFAULT_HISTORY_MARGIN_MS, Route, RouteHistory, RouteTable, prune_horizon


def test_history_and_deletion() -> None:
    table = RouteTable()
    table.apply(Route.build("t", {"svc": "pr-1"}, 100))
    table.apply(Route.build("t", {"svc": "pr-2"}, 300))
    table.apply(Route.build("t", {"svc": "pr-3"}, 200))  # late arrival lands in order
    assert [table.sandbox_for("t", "svc", at) for at in (50, 100, 250, 300)] == [None, "pr-1", "pr-3", "pr-2"]
    table.apply(Route.build("t", {}, 400))
    assert table.sandbox_for("t", "svc", 400) is None and table.latest("t") is None
    assert len(table) == 0 and table.sandbox_for("t", "svc", 350) == "pr-2"


def test_same_time_rewrite_replaces() -> None:
    table = RouteTable()
    table.apply(Route.build("t", {"svc": "pr-1"}, 100))
    table.apply(Route.build("t", {"svc": "pr-2"}, 100))
    assert table.sandbox_for("t", "svc", 100) == "pr-2"


def test_replace_all_keeps_unchanged_history_and_deletes_missing() -> None:
    table = RouteTable()
    table.replace_all([Route.build("a", {"svc": "pr-1"}, 0), Route.build("b", {"svc": "pr-1"}, 0)], 0)
    version = table.version
    table.replace_all([Route.build("a", {"svc": "pr-1"}, 0)], 500)
    assert table.sandbox_for("a", "svc", 10) == "pr-1"  # unchanged: still in force from 0
    assert table.sandbox_for("b", "svc", 10) == "pr-1" and table.sandbox_for("b", "svc", 500) is None
    assert table.version == version + 1
    assert table.sandboxes() == {"pr-1"}


@pytest.mark.parametrize("bad", ["", "UPPER", "-x", "x-", "a" * 64, "a_b", "a.b"])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(RouteError, match="invalid"):
        Route.build("t", {bad: "pr-1"}, 0)
    with pytest.raises(RouteError, match="invalid"):
        Route.build("t", {"svc": bad}, 0)


@pytest.mark.parametrize("bad", ["", "a b", "x" * 257, "tab\there", "nl\n"])
def test_bad_tenants_are_refused(bad: str) -> None:
    with pytest.raises(RouteError, match="tenant"):
        Route.build(bad, {"svc": "pr-1"}, 0)


def test_routed_since_follows_the_current_run() -> None:
    table = RouteTable()
    assert table.routed_since("svc", "pr-1") is None
    table.apply(Route.build("a", {"svc": "pr-1"}, 100))
    table.apply(Route.build("a", {"svc": "pr-1", "other": "pr-1"}, 200))  # still routed: run goes on
    table.apply(Route.build("b", {"svc": "pr-2"}, 50))
    assert table.routed_since("svc", "pr-1") == 100
    table.apply(Route.build("a", {"svc": "pr-3"}, 300))
    table.apply(Route.build("a", {"svc": "pr-1"}, 400))  # a new run starts at 400
    assert table.routed_since("svc", "pr-1") == 400
    table.apply(Route.build("a", {}, 500))
    assert table.routed_since("svc", "pr-1") is None and table.routed_since("svc", "pr-2") == 50


# -- bounded history ---------------------------------------------------------------------------

TENANTS = ("a", "b", "c")
SERVICES = ("s1", "s2")
SANDBOXES = ("x", "y")

routes_strategy = st.builds(
    lambda tenant, services, at: Route.build(tenant, services, at),
    st.sampled_from(TENANTS),
    st.dictionaries(st.sampled_from(SERVICES), st.sampled_from(SANDBOXES), max_size=2),  # {}: deletion
    st.integers(0, 200),
)


@settings(max_examples=400, deadline=None)
@given(
    before=st.lists(routes_strategy, max_size=12),
    horizon=st.integers(0, 220),
    after=st.lists(routes_strategy, max_size=8),
    replayed=st.lists(st.integers(0, 11), max_size=4),
)
def test_a_pruned_table_decides_every_later_record_as_the_full_one(
    before: list[Route], horizon: int, after: list[Route], replayed: list[int]
) -> None:
    """Prune at ``horizon``, then keep applying routes (new ones, and replays of old ones, as a
    source reading a record twice does): every record at or after the horizon is decided the
    same, and the tables list the same live routes. A tenant's effective times are unique per
    record (the sources make them strictly increasing), so one (tenant, time) is one route."""
    canonical: dict[tuple[str, int], Route] = {}
    before = [canonical.setdefault((r.tenant, r.effective_from_ms), r) for r in before]
    after = [canonical.setdefault((r.tenant, r.effective_from_ms), r) for r in after]
    full, pruned = RouteTable(), RouteTable()
    for route in before:
        full.apply(route)
        pruned.apply(route)
    pruned.prune(horizon)
    later = after + [before[i] for i in replayed if i < len(before)]
    for route in later:
        full.apply(route)
        pruned.apply(route)
    for tenant in TENANTS:
        for at in range(horizon, 230):
            for service in SERVICES:
                assert pruned.sandbox_for(tenant, service, at) == full.sandbox_for(tenant, service, at), (tenant, at)
        assert pruned.latest(tenant) == full.latest(tenant)
    assert len(pruned) == len(full) and pruned.sandboxes() == full.sandboxes()
    assert pruned.history_size() <= full.history_size()


def test_prune_keeps_the_route_in_force_and_only_the_deletion_of_deleted_tenants() -> None:
    table = RouteTable()
    for at in range(0, 1000, 100):
        table.apply(Route.build("busy", {"svc": f"pr-{at}"}, at))
    table.apply(Route.build("gone", {"svc": "pr-1"}, 10))
    table.apply(Route.build("gone", {}, 20))
    version = table.version
    assert table.prune(450) == 4 + 1
    assert table.history_size() == 6 + 1 and table.version == version + 1
    # A straggler older than the horizon is decided by the oldest route kept, not as baseline.
    assert table.sandbox_for("busy", "svc", 5) == "pr-400"
    assert table.sandbox_for("busy", "svc", 450) == "pr-400" and table.sandbox_for("busy", "svc", 999) == "pr-900"
    assert table.prune(450) == 0 and table.version == version + 1
    # The deleted tenant's replayed route stays gone; a new route brings it back.
    table.apply(Route.build("gone", {"svc": "pr-1"}, 10))
    assert table.sandbox_for("gone", "svc", 500) is None
    table.apply(Route.build("gone", {"svc": "pr-2"}, 600))
    assert table.sandbox_for("gone", "svc", 600) == "pr-2"


def test_prune_horizon_is_the_oldest_pending_record_less_the_margin() -> None:
    assert prune_horizon([5_000, None, 3_000], now_ms=10_000, margin_ms=1_000) == 2_000
    assert prune_horizon([None], now_ms=10_000, margin_ms=1_000) == 9_000
    assert prune_horizon([], now_ms=10_000) == 10_000 - DEFAULT_HISTORY_MARGIN_MS


def test_route_history_prunes_to_the_oldest_batch_of_the_assigned_partitions() -> None:
    table = RouteTable()
    for at in (0, 100_000, 200_000, 300_000):
        table.apply(Route.build("t", {"svc": f"pr-{at}"}, at))
    history = RouteHistory(table, margin_ms=50_000)
    history.fetched("p0", 280_000)
    history.fetched("p1", 160_000)
    # p1 still needs the route in force at 110_000 (its oldest batch, less the margin).
    assert history.prune(["p0", "p1"], now_ms=400_000) == 1
    assert table.sandbox_for("t", "svc", 110_000) == "pr-100000"
    # p1 revoked: only p0's batch counts.
    assert history.prune(["p0"], now_ms=400_000) == 1
    assert table.history_size() == 2 and table.sandbox_for("t", "svc", 230_000) == "pr-200000"

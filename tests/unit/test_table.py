"""Route table: history ordered by effective time, deletions, wholesale replacement."""

from __future__ import annotations

import pytest

from proxy.errors import RouteError
from proxy.routes.table import Route, RouteTable


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

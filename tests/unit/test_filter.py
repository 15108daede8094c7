"""The decision rule: for any record, exactly one version of a service handles it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.routing.filter import Deliver, RouteFilter, Skip
from proxy.routes.table import Route, RouteTable
from proxy.routing.tenant import TenantExtractor, TenantLookup

SERVICE = "orders-worker"


def table_with(*routes: Route) -> RouteTable:
    table = RouteTable()
    for route in routes:
        table.apply(route)
    return table


def test_decision_table() -> None:
    table = table_with(
        Route.build("123", {SERVICE: "pr-42"}, 0),
        Route.build("456", {"billing": "pr-9"}, 0),
    )
    baseline = RouteFilter(SERVICE, None, table)
    sandbox = RouteFilter(SERVICE, "pr-42", table)
    other = RouteFilter(SERVICE, "pr-7", table)
    cases = {
        "123": (Skip("routed_to_sandbox"), Deliver("routed_here"), Skip("not_routed_here")),
        "456": (Deliver("not_routed"), Skip("not_routed_here"), Skip("not_routed_here")),
        "999": (Deliver("not_routed"), Skip("not_routed_here"), Skip("not_routed_here")),
    }
    for tenant, expected in cases.items():
        got = tuple(f.decide(TenantLookup(tenant), 1) for f in (baseline, sandbox, other))
        assert got == expected, tenant
    assert baseline.decide(TenantLookup(None), 1) == Deliver("no_tenant")
    assert sandbox.decide(TenantLookup(None), 1) == Skip("no_tenant")
    bad = TenantLookup(None, "tenant_invalid")
    assert baseline.decide(bad, 1) == Deliver("tenant_invalid")
    assert sandbox.decide(bad, 1) == Skip("tenant_invalid")


def test_decided_by_the_route_in_force_at_the_record_time() -> None:
    table = table_with(Route.build("123", {SERVICE: "pr-42"}, 1000))
    table.apply(Route.build("123", {}, 2000))  # deleted at t=2000
    sandbox = RouteFilter(SERVICE, "pr-42", table)
    baseline = RouteFilter(SERVICE, None, table)
    assert [sandbox.decide(TenantLookup("123"), t).deliver for t in (999, 1000, 1999, 2000)] == [
        False, True, True, False,
    ]
    assert [baseline.decide(TenantLookup("123"), t).deliver for t in (999, 1000, 1999, 2000)] == [
        True, False, False, True,
    ]


sandboxes = st.sampled_from(["pr-1", "pr-2", "pr-3"])
services = st.sampled_from([SERVICE, "billing", "shipping"])
changes = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),
        st.dictionaries(services, sandboxes, max_size=3),
        st.integers(0, 100),
    ),
    max_size=12,
)


@settings(max_examples=1000)
@given(changes, st.sampled_from(["a", "b", "c", "d", None]), st.integers(0, 120))
def test_exactly_one_version_delivers(history: list, tenant: str | None, at: int) -> None:
    table = table_with(*(Route.build(t, s, when) for t, s, when in history))
    versions = [RouteFilter(SERVICE, x, table) for x in (None, "pr-1", "pr-2", "pr-3")]
    delivered = [f.sandbox for f in versions if f.decide(TenantLookup(tenant), at).deliver]
    assert len(delivered) == 1, delivered


@settings(max_examples=500)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("route"), st.sampled_from(["a", "b", "c"]),
                      st.dictionaries(services, sandboxes, max_size=2), st.integers(0, 100)),
            st.tuples(st.just("record"), st.sampled_from(["a", "b", "c", None, "\xff"]), st.integers(0, 120)),
        ),
        max_size=40,
    ),
    st.sampled_from([None, "pr-1", "pr-2"]),
)
def test_memoized_decisions_are_the_rule_at_every_step(steps: list, sandbox: str | None) -> None:
    """decide_record (memoized by header, per table version, per record time) answers exactly
    what the rule answers for the same record, however routes and records interleave."""
    table = RouteTable()
    memoized = RouteFilter(SERVICE, sandbox, table)
    fresh_extractor = TenantExtractor()
    for step in steps:
        if step[0] == "route":
            _, tenant, routes, when = step
            table.apply(Route.build(tenant, routes, when))
            continue
        _, tenant, at = step
        if tenant is None:
            headers: list[tuple[str, bytes]] = [("traceparent", b"00-1-2-01")]
        elif tenant == "\xff":
            headers = [("Baggage", b"tenant=\xff")]
        else:
            headers = [("traceparent", b"00-1-2-01"), ("baggage", f"tenant={tenant},x=y".encode())]
        expected = memoized.decide(fresh_extractor.from_headers(headers), at)
        got = memoized.decide_record(headers, at)
        assert got.decision == expected and got.deliver is expected.deliver
        assert got.lookup == fresh_extractor.from_headers(headers)

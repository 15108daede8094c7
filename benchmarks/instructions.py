"""Instructions per record of the real ``ktp sidecar``, counted by callgrind: ``python -m benchmarks.instructions``.

CPU time on a shared machine moves by 20% from one run to the next; the instructions a process
executes do not (two runs of the same code agree within 0.3% here). So a change to the
per-record path is judged by this, before ``make bench`` judges it by time. The sidecar runs
under ``valgrind --tool=callgrind`` with instrumentation off until its partitions are assigned,
on until the N-th record is at the app (or consumed, for ``skip``); user-space instructions
only: the kernel's work for a socket write is not counted, so a single delivery (one write and
one read per record) costs more time per instruction than a bulk.

    python -m benchmarks.instructions                       # single and bulk, 20,000 records
    python -m benchmarks.instructions skip bulk --records 50000 --bulk-max-records 64

Needs valgrind (``apt-get install valgrind``). Uses the benchmarks' broker, topics and app.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import aiohttp

import benchmarks.main as bench_main
from benchmarks.main import Bench, parse_args
from benchmarks.processes import App
from proxy.testing.broker import EmbeddedBroker

KINDS = ("single", "bulk", "skip")


def _callgrind(out: Path, command: list[str]) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}/cg.%p.out", *command]


async def count(bench: Bench, kind: str, records: int, bulk_max_records: int) -> float:
    """Instructions per record of one ``ktp sidecar`` run of ``kind``."""
    skip = kind == "skip"
    topic = bench.topics["skip" if skip else "deliver"]
    routes = f"file:{bench.routes_skip if skip else bench.routes_deliver}"
    options = {"bulk_max_records": bulk_max_records} if kind == "bulk" else {}
    with tempfile.TemporaryDirectory(prefix="ktp-callgrind-") as out:
        plain = bench_main.ktp_command
        bench_main.ktp_command = lambda: _callgrind(Path(out), plain())  # type: ignore[assignment]
        try:
            async with App(expect=records) as app:
                sidecar = bench.sidecar(topic, app, routes, **options)
                async with sidecar:
                    await bench.assigned(sidecar)
                    assert sidecar.process is not None
                    pid = str(sidecar.process.pid)
                    subprocess.run(["callgrind_control", "--instr=on", pid], check=True, capture_output=True)
                    if skip:
                        port = int(sidecar.env["KTP_METRICS_ADDR"].rsplit(":", 1)[1])
                        check = bench.metric_reached(port, records)
                    else:
                        check = bench.app_reached(app, records)
                    await bench.until(check, sidecar, 3600)
                    subprocess.run(["callgrind_control", "--dump", pid], check=True, capture_output=True)
        finally:
            bench_main.ktp_command = plain  # type: ignore[assignment]
        total = 0
        for dump in glob.glob(f"{out}/cg.*.out*"):
            for line in Path(dump).read_text(errors="replace").splitlines():
                if line.startswith(("summary:", "totals:")):
                    total = max(total, int(line.split()[1]))
        if not total:
            raise RuntimeError("callgrind wrote no counts")
        return total / records


async def amain(kinds: list[str], records: int, bulk_max_records: int) -> None:
    args = parse_args(["--only", "skip,bulk", "--deliver-records", str(records), "--skip-records", str(records)])
    with tempfile.TemporaryDirectory(prefix="ktp-bench-") as work:
        async with EmbeddedBroker(log_path=Path(work) / "tansu.log") as broker:
            bench = Bench(args, broker.bootstrap_servers, Path(work))
            async with aiohttp.ClientSession() as bench.session:
                await bench.prepare()
                for kind in kinds:
                    per_record = await count(bench, kind, records, bulk_max_records)
                    label = f"bulks of {bulk_max_records}" if kind == "bulk" else kind
                    print(f"{label:14s} {per_record:10,.0f} instructions per record ({records:,} records)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__.split("\n")[0])
    parser.add_argument("kinds", nargs="*", help=f"of {', '.join(KINDS)} (default: single bulk)")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--bulk-max-records", type=int, default=100)
    args = parser.parse_args()
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kind(s) {', '.join(sorted(unknown))}: choose from {', '.join(KINDS)}")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind (callgrind and callgrind_control on PATH)")
    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same dict layouts run to run
    asyncio.run(amain(args.kinds or ["single", "bulk"], args.records, args.bulk_max_records))


if __name__ == "__main__":
    main()

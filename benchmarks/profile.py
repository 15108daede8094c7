"""Sampling profiles of the sidecar process with py-spy, summarised by function.

py-spy attaches to the running ``ktp sidecar`` (no code change, ``--nonblocking`` so the sidecar
is not paused) and writes collapsed stacks; :func:`summarise` turns them into each function's
share of the busy samples, self (the function itself) and total (it and what it called).
Idle samples (the event loop waiting in epoll) are not recorded.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

SAMPLE_RATE = 200


def py_spy() -> str | None:
    found = Path(sys.executable).with_name("py-spy")
    return str(found) if found.exists() else shutil.which("py-spy")


class Profiler:
    """``py-spy record`` on one process until :meth:`stop`."""

    def __init__(self, pid: int, output: Path) -> None:
        self.pid = pid
        self.output = output
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        binary = py_spy()
        if binary is None:
            raise RuntimeError("--profile needs py-spy: pip install py-spy (it is in the dev extra)")
        self.process = await asyncio.create_subprocess_exec(
            binary, "record", "--pid", str(self.pid), "--rate", str(SAMPLE_RATE), "--nonblocking",
            "--format", "raw", "--output", str(self.output),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                async with asyncio.timeout(20):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@dataclass(frozen=True, slots=True)
class Hotspot:
    function: str
    self_share: float
    total_share: float


def _function(frame: str) -> str:
    # "name (path/to/module.py:123)" -> "name (module.py)"; the line would split one function.
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[parts.index("site-packages") + 1 :]) if "site-packages" in parts else (
        "/".join(parts[-2:]) if parts else path
    )
    return f"{name} ({short})"


# Where the sidecar's busy time goes, by part: the first rule a sample's stack matches names it.
# (py-spy's stacks of resumed coroutines are often cut short, so rules look at every frame kept
# rather than at a caller that may be missing.)
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("HTTP client: request encoding, pool, connection, response parsing (proxy/upstream)",
     ("(proxy/upstream/", "HttpUpstream.", "AppConnection.", "ResponseParser.")),
    ("delivery headers (build_headers)", ("build_headers ",)),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("route filter: tenant, decision, skip offsets (Sidecar._handle)", ("Sidecar._handle ",)),
    ("dispatcher: lanes, slots, policy, offsets", ("Dispatcher.", "(proxy/delivery/", "PartitionOffsets.")),
    ("Kafka client: fetch, unpack records (aiokafka)", ("(aiokafka/",)),
    ("event loop (uvloop: I/O, callbacks), tasks, GC, the rest", ("",)),
)


def _stacks(collapsed: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if frames:
            stacks.append((frames, int(count_text)))
    return stacks


def breakdown(collapsed: Path) -> list[tuple[str, float]]:
    """Share of busy samples per :data:`CATEGORIES` entry, in that order."""
    counts = dict.fromkeys((name for name, _ in CATEGORIES), 0)
    total = 0
    for frames, count in _stacks(collapsed):
        total += count
        joined = ";".join(frames)
        for name, needles in CATEGORIES:
            if any(needle in joined for needle in needles):
                counts[name] += count
                break
    return [(name, count / total if total else 0.0) for name, count in counts.items()]


def summarise(collapsed: Path, top: int = 15) -> tuple[int, list[Hotspot], list[Hotspot]]:
    """(busy samples, top functions by self share, top functions by total share)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for raw_frames, count in _stacks(collapsed):
        frames = [_function(f) for f in raw_frames]
        samples += count
        own[frames[-1]] += count
        for function in set(frames):
            total[function] += count

    def ranked(counter: collections.Counter[str]) -> list[Hotspot]:
        return [
            Hotspot(name, own[name] / samples, total[name] / samples)
            for name, _ in counter.most_common(top)
        ]

    if not samples:
        return 0, [], []
    return samples, ranked(own), ranked(total)

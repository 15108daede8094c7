"""Child processes of a benchmark run, and what ``/proc`` says about them.

Every contender (the sidecar, each baseline loop) and the app run as separate processes, so the
CPU time and peak RSS read from ``/proc/<pid>/stat`` (utime + stime) and ``/proc/<pid>/status``
(VmHWM) are each one's own.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import aiohttp

import proxy
from proxy.testing.broker import free_port

# Where the ``proxy`` and ``benchmarks`` packages this run imported live: children import the
# same code (the ``ktp`` script would otherwise find the editable install's tree).
CODE_ROOT = Path(proxy.__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT = 20.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from ``/proc/<pid>/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # After "pid (comm) ", field 3 (state) is index 0: utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy(seconds: float) -> float:
    """Share of all cores busy over ``seconds`` (``/proc/stat``): before a run, what others use."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(total1 - total0, 1)


def status_kb(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(f"{name} not in /proc/{pid}/status")


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) in MiB."""
    return status_kb(pid, "VmHWM") / 1024


def rss_mb(pid: int) -> float:
    """Resident set size now (VmRSS) in MiB."""
    return status_kb(pid, "VmRSS") / 1024


@dataclass(frozen=True, slots=True)
class Line:
    """One output line of a child, when the bench read it, and the child's CPU time and RSS then."""

    t: float
    cpu: float
    rss_mb: float
    text: str


class Child:
    """A child process whose stdout and stderr lines are kept with their read time and the
    child's CPU time at that moment."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else clean_env()
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[Line] = []
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self._new_line = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"Child({self.name!r}, pid={self.pid})"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            env=self.env,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(self.process.stdout)),
            asyncio.create_task(self._read(self.process.stderr)),
        ]

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            now = time.monotonic()
            try:
                cpu, rss = cpu_seconds(self.pid), rss_mb(self.pid)
            except (OSError, ValueError, KeyError):
                cpu = rss = float("nan")
            text = line.decode(errors="replace").rstrip()
            self.lines.append(Line(now, cpu, rss, text))
            self.tail.append(text)
            self._new_line.set()

    async def wait_line(self, match: Callable[[str], bool], timeout: float) -> Line:
        """The first line (already read or coming) for which ``match`` holds."""
        seen = 0
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines[seen:]:
                    if match(line.text):
                        return line
                seen = len(self.lines)
                if self.process is not None and self.process.returncode is not None and all(
                    task.done() for task in self._readers
                ):
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n" + self.output())
                self._new_line.clear()
                try:
                    async with asyncio.timeout(0.2):
                        await self._new_line.wait()
                except TimeoutError:
                    pass

    async def wait_event(self, event: str, timeout: float) -> tuple[Line, dict[str, Any]]:
        """A JSON line ``{"event": event, ...}`` printed by a baseline loop."""
        line = await self.wait_line(lambda text: text.startswith("{") and f'"event": "{event}"' in text, timeout)
        return line, json.loads(line.text)

    def output(self) -> str:
        return "\n".join(self.tail)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.pid)

    async def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        assert self.process is not None
        try:
            async with asyncio.timeout(timeout):
                code = await self.process.wait()
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)
        return code

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Ask the child to stop (SIGTERM: the sidecar drains and leaves its group); kill it if it
        has not exited within the timeout."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await self.wait()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            await self.stop()


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def ktp_command() -> list[str]:
    """The real CLI: the ``ktp`` script next to this Python, else ``python -m proxy``."""
    script = Path(sys.executable).with_name("ktp")
    return [str(script)] if script.exists() else python_module("proxy")


def clean_env(**ktp: object) -> dict[str, str]:
    """This environment without any ``KTP_*`` or ``OTEL_*`` of the caller's, plus ``KTP_<NAME>``
    for each keyword, and :data:`CODE_ROOT` first on ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KTP_", "OTEL_"))}
    env.update({f"KTP_{name.upper()}": str(value) for name, value in ktp.items()})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CODE_ROOT), env.get("PYTHONPATH")]))
    return env


class App(Child):
    """The minimal app (``benchmarks.app``) on a free port."""

    def __init__(self, *, expect: int = 0, latency: bool = False) -> None:
        self.port = free_port()
        args = ["--port", str(self.port), "--expect", str(expect)] + (["--latency"] if latency else [])
        super().__init__("app", python_module("benchmarks.app", *args))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def start(self) -> None:
        await super().start()
        await self.wait_line(lambda text: text == "listening", 15)

    async def stats(self, session: aiohttp.ClientSession, full: bool = False) -> dict[str, Any]:
        async with session.get(f"http://127.0.0.1:{self.port}/stats" + ("?full" if full else "")) as r:
            result: dict[str, Any] = await r.json(content_type=None)
            return result


async def metric_total(session: aiohttp.ClientSession, url: str, name: str) -> float:
    """Sum of every series of one metric in a Prometheus text exposition."""
    async with session.get(url) as response:
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in "{ "):
            total += float(line.rsplit(" ", 1)[1])
    return total

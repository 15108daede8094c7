"""Kafka connection options shared by every command that talks to Kafka.

Security protocols ``PLAINTEXT``, ``SSL`` (with ``--ssl-certfile``/``--ssl-keyfile`` for mTLS),
``SASL_PLAINTEXT`` and ``SASL_SSL``; SASL mechanisms ``PLAIN``, ``SCRAM-SHA-256`` and
``SCRAM-SHA-512``. The SASL password comes from ``--sasl-password-file`` (read at each connect, so
a rotated Secret is picked up) or from the ``KTP_SASL_PASSWORD`` environment variable, never from
a flag value. It never appears in ``repr``, ``redacted()``, logs or error messages.

Combinations that would silently weaken what the operator asked for are refused at start-up: TLS
files with a protocol that does not use TLS (the operator believes the link is encrypted), SASL
credentials with a protocol that does not authenticate, a client key without its certificate.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.config import Option
from proxy.errors import ConfigError

log = logging.getLogger(__name__)

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
REDACTED = "<redacted>"

KAFKA_OPTIONS = (
    Option("bootstrap-servers", "Kafka bootstrap servers, comma-separated HOST:PORT", required=True),
    Option("security-protocol", "Kafka security protocol", "PLAINTEXT", choices=SECURITY_PROTOCOLS),
    Option("sasl-mechanism", "SASL mechanism", "PLAIN", choices=SASL_MECHANISMS),
    Option("sasl-username", "SASL username"),
    Option("sasl-password-file", "file holding the SASL password (or set KTP_SASL_PASSWORD)"),
    Option("sasl-password", "SASL password, from the environment only", env_only=True),
    Option("ssl-cafile", "CA bundle to verify the brokers (default: the system's CAs)"),
    Option("ssl-certfile", "client certificate (mTLS)"),
    Option("ssl-keyfile", "client key (mTLS)"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaConnection:
    """How to reach the cluster. ``client_kwargs()`` gives aiokafka's keyword arguments."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password_file: str | None = None
    # From KTP_SASL_PASSWORD; repr=False is belt and braces, __repr__ below names fields itself.
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        problems = []
        uses_tls = self.security_protocol in ("SSL", "SASL_SSL")
        uses_sasl = self.security_protocol.startswith("SASL")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            problems.append(f"--security-protocol must be one of {', '.join(SECURITY_PROTOCOLS)}")
        if self.sasl_mechanism not in SASL_MECHANISMS:
            problems.append(f"--sasl-mechanism must be one of {', '.join(SASL_MECHANISMS)}")
        tls_files = [
            flag
            for flag, value in (
                ("--ssl-cafile", self.ssl_cafile),
                ("--ssl-certfile", self.ssl_certfile),
                ("--ssl-keyfile", self.ssl_keyfile),
            )
            if value
        ]
        if tls_files and not uses_tls:
            problems.append(
                f"{', '.join(tls_files)} given but --security-protocol {self.security_protocol} does "
                "not use TLS: use SSL or SASL_SSL, or drop the TLS options"
            )
        if self.ssl_keyfile and not self.ssl_certfile:
            problems.append("--ssl-keyfile needs --ssl-certfile (the client certificate)")
        if self.sasl_password_file and self.sasl_password:
            problems.append("give the SASL password once: --sasl-password-file or KTP_SASL_PASSWORD, not both")
        has_credentials = bool(self.sasl_username or self.sasl_password_file or self.sasl_password)
        if has_credentials and not uses_sasl:
            problems.append(
                f"SASL credentials given but --security-protocol {self.security_protocol} does not "
                "authenticate with SASL: use SASL_SSL or SASL_PLAINTEXT"
            )
        if uses_sasl and not (self.sasl_username and (self.sasl_password_file or self.sasl_password)):
            problems.append(
                f"--security-protocol {self.security_protocol} needs --sasl-username and a password "
                "(--sasl-password-file or KTP_SASL_PASSWORD)"
            )
        if problems:
            raise ConfigError("; ".join(problems))

    def __repr__(self) -> str:
        return (
            f"KafkaConnection(bootstrap_servers={self.bootstrap_servers!r}, "
            f"security_protocol={self.security_protocol!r}, sasl_mechanism={self.sasl_mechanism!r}, "
            f"sasl_username={self.sasl_username!r}, sasl_password_file={self.sasl_password_file!r})"
        )

    @classmethod
    def from_options(cls, values: dict[str, Any]) -> KafkaConnection:
        return cls(**{o.dest: values.get(o.dest, o.default) for o in KAFKA_OPTIONS})

    def redacted(self) -> dict[str, Any]:
        """Every setting for a ``/config`` view: file paths are shown, the password never is."""
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "sasl_mechanism": self.sasl_mechanism if self.security_protocol.startswith("SASL") else None,
            "sasl_username": self.sasl_username,
            "sasl_password_file": self.sasl_password_file,
            "sasl_password": REDACTED if self.sasl_password else None,
            "ssl_cafile": self.ssl_cafile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
        }

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies the broker's certificate and host name (TLS 1.2+),
        with the client certificate when mTLS is configured."""
        return client_ssl_context(
            self.ssl_cafile, "--ssl-cafile", certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
        )

    def password(self) -> str:
        """The SASL password: the environment's, or the file's (re-read each time)."""
        if self.sasl_password:
            return self.sasl_password
        assert self.sasl_password_file is not None
        try:
            password = Path(self.sasl_password_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read --sasl-password-file {self.sasl_password_file!r}: {_reason(exc)}") from exc
        if not password:
            raise ConfigError(f"--sasl-password-file {self.sasl_password_file!r} is empty")
        return password

    def client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kwargs["ssl_context"] = self.ssl_context()
        if self.security_protocol.startswith("SASL"):
            if self.security_protocol == "SASL_PLAINTEXT" and self.sasl_mechanism == "PLAIN":
                # PLAIN sends the password itself; without TLS anyone on the path can read it.
                log.warning(
                    "SASL PLAIN over SASL_PLAINTEXT sends the password unencrypted; "
                    "use SASL_SSL or a SCRAM mechanism"
                )
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.password(),
            )
        return kwargs


def client_ssl_context(
    cafile: str | None,
    flag: str,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> ssl.SSLContext:
    """A TLS client context: the peer's certificate and host name are verified against
    ``cafile`` (None: the system's CAs), TLS 1.2 at least, with a client certificate for mTLS.
    A file that cannot be used is a :class:`ConfigError` naming ``flag``, never its content."""
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{flag} {cafile!r} cannot be used: {_reason(exc)}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile:
        try:
            context.load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"client certificate {certfile!r} / key {keyfile!r} cannot be used: {_reason(exc)}"
            ) from exc
    return context


def server_ssl_context(certfile: str, keyfile: str, *, flag: str = "--tls-certfile") -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 at least) for our own listeners (route service)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{flag} {certfile!r} / key {keyfile!r} cannot be used: {_reason(exc)}") from exc
    return context


def _reason(exc: BaseException) -> str:
    """What went wrong, without echoing file contents (an OSError's strerror, an SSL reason)."""
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__

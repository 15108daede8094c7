"""Kafka connection options shared by every command that talks to Kafka.

Secrets come from files (``--sasl-password-file``), never from a flag value, and never appear in
``repr`` or logs.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.config import Option
from proxy.errors import ConfigError

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

KAFKA_OPTIONS = (
    Option("bootstrap-servers", "Kafka bootstrap servers, comma-separated HOST:PORT", required=True),
    Option("security-protocol", "Kafka security protocol", "PLAINTEXT", choices=SECURITY_PROTOCOLS),
    Option("sasl-mechanism", "SASL mechanism", "PLAIN", choices=SASL_MECHANISMS),
    Option("sasl-username", "SASL username"),
    Option("sasl-password-file", "file holding the SASL password"),
    Option("ssl-cafile", "CA bundle to verify the brokers"),
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
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __repr__(self) -> str:
        return (
            f"KafkaConnection(bootstrap_servers={self.bootstrap_servers!r}, "
            f"security_protocol={self.security_protocol!r}, sasl_mechanism={self.sasl_mechanism!r}, "
            f"sasl_username={self.sasl_username!r}, sasl_password_file={self.sasl_password_file!r})"
        )

    @classmethod
    def from_options(cls, values: dict[str, Any]) -> KafkaConnection:
        return cls(**{o.dest: values[o.dest] for o in KAFKA_OPTIONS})

    def client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(cafile=self.ssl_cafile)
            if self.ssl_certfile:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
            kwargs["ssl_context"] = context
        if self.security_protocol.startswith("SASL"):
            if not self.sasl_username or not self.sasl_password_file:
                raise ConfigError(
                    f"--security-protocol {self.security_protocol} needs --sasl-username and "
                    "--sasl-password-file"
                )
            try:
                password = Path(self.sasl_password_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"cannot read --sasl-password-file: {exc.strerror}") from exc
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=password,
            )
        return kwargs

"""Fixtures for the security tests: a fresh PKI, a TLS (mTLS) broker, an authenticating broker.

Every broker here is a real Tansu process on loopback. TLS is served by
:class:`proxy.testing.tls.TlsTerminator` in front of it (Tansu 0.6.0 cannot take ``--cert`` and
``--key`` together; see :class:`proxy.testing.broker.EmbeddedBroker`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.testing.broker import EmbeddedBroker
from proxy.testing.tls import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A broker reachable only over TLS, demanding a client certificate signed by ``pki.ca``."""
    log = tmp_path_factory.mktemp("tls-broker") / "tansu.log"
    with EmbeddedBroker(
        log_path=log,
        tls_certfile=pki.server.cert,
        tls_keyfile=pki.server.key,
        tls_client_cafile=pki.ca,
    ) as broker:
        yield broker


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A broker started with Tansu's ``--authentication``: every client must pass SASL."""
    log = tmp_path_factory.mktemp("sasl-broker") / "tansu.log"
    with EmbeddedBroker(log_path=log, extra_args=("--authentication",)) as broker:
        yield broker


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record of every logger at DEBUG (aiokafka's and aiohttp's included), for tests
    that a secret appears in none of them."""
    caplog.set_level(logging.DEBUG)
    for name in ("aiokafka", "aiohttp", "proxy", "asyncio"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    """Everything logged, formatted as a handler would write it (message, args, tracebacks)."""
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    return "\n".join(formatter.format(record) for record in caplog.records)


def write_secret(path: Path, value: str) -> str:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)

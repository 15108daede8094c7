"""The sidecar against a broker reachable only over TLS with client certificates (mTLS).

What a test here shows: with ``--security-protocol SSL`` and the CA and client certificate, the
sidecar consumes, delivers, commits and dead-letters over TLS; without the client certificate,
with a CA that did not sign the broker, or in plaintext, nothing gets through.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError

from proxy.errors import ConfigError
from proxy.kafka import KafkaConnection
from proxy.sidecar.runtime import Sidecar
from proxy.testing.app import Received, RecordingApp
from proxy.testing.broker import EmbeddedBroker
from proxy.testing.tls import Pki
from tests.conftest import eventually, sidecar_config

CONNECT_TIMEOUT = 10.0


def mtls(broker: EmbeddedBroker, pki: Pki, **overrides: object) -> KafkaConnection:
    values: dict[str, object] = dict(
        bootstrap_servers=broker.bootstrap_servers,
        security_protocol="SSL",
        ssl_cafile=str(pki.ca),
        ssl_certfile=str(pki.client.cert),
        ssl_keyfile=str(pki.client.key),
    )
    values.update(overrides)
    return KafkaConnection(**values)  # type: ignore[arg-type]


async def producer_can_start(connection: KafkaConnection) -> bool:
    producer = AIOKafkaProducer(**connection.client_kwargs(), request_timeout_ms=3000)
    try:
        await asyncio.wait_for(producer.start(), CONNECT_TIMEOUT)
        return True
    except (KafkaConnectionError, TimeoutError):
        return False
    finally:
        await producer.stop()


async def test_sidecar_consumes_delivers_commits_and_dead_letters_over_mtls(
    tls_broker: EmbeddedBroker, pki: Pki, tmp_path: Path
) -> None:
    connection = mtls(tls_broker, pki)
    topic = f"tls-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**connection.client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**connection.client_kwargs(), acks="all")
    await producer.start()
    try:
        for i in range(20):
            await producer.send_and_wait(topic, str(i).encode(), key=b"k%d" % (i % 3))
        await producer.send_and_wait(topic, b"poison", key=b"p")
    finally:
        await producer.stop()
    handshakes_before = tls_broker.tls.handshakes if tls_broker.tls else 0

    def reject_poison(seen: Received, _: int) -> tuple[int, dict[str, str], bytes]:
        return (422, {}, b"no") if seen.body == b"poison" else (200, {}, b"")

    routes = tmp_path / "routes.yaml"
    routes.write_text("tenants: {}\n")
    async with RecordingApp(answer=reject_poison) as app:
        config = sidecar_config(tls_broker.bootstrap_servers, topic, app.url, str(routes), kafka=connection)
        async with Sidecar(config) as sidecar:
            await app.wait_for(20)

            async def all_done() -> bool:
                return sum(state.offsets.position or 0 for state in sidecar.partitions) == 21

            await eventually(all_done, what="every record done")
            metrics = sidecar.metrics.render().decode()
        # The stop committed over TLS: the group's offsets, read back over TLS, cover all 21.
        reader = AIOKafkaConsumer(**connection.client_kwargs(), group_id=config.consumer_group)
        await reader.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(2)]
            committed = sum([await reader.committed(tp) or 0 for tp in partitions])
        finally:
            await reader.stop()
        dlq = AIOKafkaConsumer(f"{topic}.dlq", **connection.client_kwargs(), auto_offset_reset="earliest")
        await dlq.start()
        try:
            dead = await asyncio.wait_for(dlq.getone(), 20)
        finally:
            await dlq.stop()
    assert sorted(int(r.body) for r in app.received) == list(range(20))
    assert dead.value == b"poison"
    assert committed == 21
    assert f'ktp_records_delivered_total{{topic="{topic}"}} 20.0' in metrics
    # Every connection (bootstrap, group coordinator, dead-letter producer) went through TLS.
    assert tls_broker.tls is not None and tls_broker.tls.handshakes > handshakes_before


async def test_without_a_client_certificate_the_broker_refuses(tls_broker: EmbeddedBroker, pki: Pki) -> None:
    assert tls_broker.tls is not None
    refused_before = tls_broker.tls.refused
    no_cert = mtls(tls_broker, pki, ssl_certfile=None, ssl_keyfile=None)
    assert not await producer_can_start(no_cert)
    assert tls_broker.tls.refused > refused_before


async def test_a_broker_certificate_from_another_ca_is_refused(tls_broker: EmbeddedBroker, pki: Pki) -> None:
    assert not await producer_can_start(mtls(tls_broker, pki, ssl_cafile=str(pki.other_ca)))


async def test_plaintext_to_the_tls_listener_gets_nowhere(tls_broker: EmbeddedBroker) -> None:
    plain = KafkaConnection(bootstrap_servers=tls_broker.bootstrap_servers)
    assert not await producer_can_start(plain)


async def test_the_right_settings_do_connect(tls_broker: EmbeddedBroker, pki: Pki) -> None:
    """The refusals above are not a broken broker: the same call with the right files works."""
    assert await producer_can_start(mtls(tls_broker, pki))


def test_unusable_tls_files_are_config_errors_naming_the_file(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 secret-ish\n-----END CERTIFICATE-----\n")
    for overrides, flag in (
        ({"ssl_cafile": str(tmp_path / "missing.pem")}, "--ssl-cafile"),
        ({"ssl_cafile": str(garbage)}, "--ssl-cafile"),
        ({"ssl_certfile": str(pki.client.cert), "ssl_keyfile": str(pki.server.key)}, "client certificate"),
    ):
        connection = KafkaConnection(
            bootstrap_servers="127.0.0.1:1", security_protocol="SSL",
            **{"ssl_cafile": str(pki.ca), **overrides},  # type: ignore[arg-type]
        )
        with pytest.raises(ConfigError) as info:
            connection.client_kwargs()
        assert flag in str(info.value)
        assert "secret-ish" not in str(info.value)

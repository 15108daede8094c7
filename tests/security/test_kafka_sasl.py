"""SASL: the client configuration against a broker that demands authentication, and secrets.

What Tansu 0.6.0 (the embedded broker) can show, found by running it (see docs/security.md):

- with ``--authentication`` it refuses every request before SASL, offers no ``PLAIN``, and runs a
  SCRAM exchange, answering an unknown user with an RFC 5802 ``e=`` error;
- it cannot *accept* a client here: SCRAM users are created through the Kafka API
  (``tansu user create`` sends AlterUserScramCredentials), which a broker with
  ``--authentication`` refuses before SASL, and a broker without it keeps them in memory only
  (none reached object storage when tried with S3), so a restarted, authenticating broker knows
  no user. A successful SASL login is therefore not shown against Tansu.

So these tests show that our options become aiokafka's SASL settings, that the broker sees a
SASL client (and refuses it), that an unauthenticated client gets nothing, and that the password
is in no log line, repr, ``/config`` answer or error message on the way.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from proxy.cli import build_parser
from proxy.config import resolve
from proxy.errors import ConfigError
from proxy.kafka import KAFKA_OPTIONS, REDACTED, KafkaConnection
from proxy.sidecar.config import SIDECAR_OPTIONS, SidecarConfig
from proxy.sidecar.runtime import Sidecar
from proxy.testing.app import RecordingApp
from proxy.testing.broker import EmbeddedBroker
from proxy.testing.tls import Pki
from tests.conftest import sidecar_config
from tests.security.conftest import logged_text, write_secret

PASSWORD = "pw-7f3a9c-never-logged"
APP_TOKEN = "app-token-51c0e2-never-logged"
ROUTES_TOKEN = "routes-token-9d4b71-never-logged"


async def start_producer(connection: KafkaConnection) -> str:
    """Try to connect; "ok", or the type of the error that stopped the client."""
    producer = AIOKafkaProducer(**connection.client_kwargs(), request_timeout_ms=3000)
    try:
        await asyncio.wait_for(producer.start(), 10)
        return "ok"
    except Exception as exc:  # aiokafka raises KeyError on Tansu's SCRAM error answer
        return type(exc).__name__
    finally:
        await producer.stop()


async def test_a_client_without_sasl_gets_nothing(sasl_broker: EmbeddedBroker) -> None:
    assert await start_producer(KafkaConnection(bootstrap_servers=sasl_broker.bootstrap_servers)) != "ok"


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_sasl_clients_reach_the_broker_and_unknown_users_are_refused(
    sasl_broker: EmbeddedBroker, mechanism: str, tmp_path: Path, all_logs: pytest.LogCaptureFixture
) -> None:
    connection = KafkaConnection(
        bootstrap_servers=sasl_broker.bootstrap_servers,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism,
        sasl_username="nobody",
        sasl_password_file=write_secret(tmp_path / "password", PASSWORD),
    )
    kwargs = connection.client_kwargs()
    assert (kwargs["sasl_mechanism"], kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == (
        mechanism, "nobody", PASSWORD
    )
    outcome = await start_producer(connection)
    assert outcome != "ok"
    logged = logged_text(all_logs)
    # The broker was asked for our mechanism (aiokafka logs each request at DEBUG).
    assert f"SaslHandShakeRequest_v1(mechanism='{mechanism}')" in logged
    if mechanism.startswith("SCRAM"):
        # Tansu offers SCRAM: the exchange ran, with our user name, and was refused.
        assert "SaslAuthenticateRequest" in logged and "n=nobody" in logged
    assert PASSWORD not in logged


def test_password_from_the_environment_only(tmp_path: Path) -> None:
    parser = build_parser()
    args = parser.parse_args(["sidecar", "--bootstrap-servers", "b:9092", "--security-protocol", "SASL_SSL",
                              "--sasl-mechanism", "SCRAM-SHA-512", "--sasl-username", "svc"])
    values = resolve(KAFKA_OPTIONS, args, environ={"KTP_SASL_PASSWORD": PASSWORD})
    connection = KafkaConnection.from_options(values)
    assert connection.client_kwargs()["sasl_plain_password"] == PASSWORD
    assert PASSWORD not in repr(connection)
    assert PASSWORD not in json.dumps(connection.redacted())
    assert connection.redacted()["sasl_password"] == REDACTED


@pytest.mark.parametrize("argv_tail", [["--sasl-password", PASSWORD], [f"--sasl-password={PASSWORD}"]])
def test_a_password_flag_is_refused_without_echoing_it(
    argv_tail: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["sidecar", "--bootstrap-servers", "b:9092", *argv_tail])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--sasl-password is not accepted on the command line" in err and "KTP_SASL_PASSWORD" in err
    assert PASSWORD not in err


def test_a_password_in_a_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "ktp.yaml"
    config.write_text(f"bootstrap-servers: b:9092\nsasl-password: {PASSWORD}\n")
    args = build_parser().parse_args(["sidecar", "--config", str(config)])
    with pytest.raises(ConfigError) as info:
        resolve(KAFKA_OPTIONS, args, environ={})
    assert "KTP_SASL_PASSWORD" in str(info.value) and PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"ssl_cafile": "/ca.pem"}, "does not use TLS"),
        ({"security_protocol": "SASL_PLAINTEXT", "ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem",
          "sasl_username": "u", "sasl_password": "pw-in-settings"}, "does not use TLS"),
        ({"sasl_username": "u", "sasl_password": "pw-in-settings"}, "does not authenticate with SASL"),
        ({"security_protocol": "SASL_SSL", "sasl_username": "u"}, "needs --sasl-username and a password"),
        ({"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": "pw-in-settings",
          "sasl_password_file": "/p"}, "not both"),
        ({"security_protocol": "SSL", "ssl_keyfile": "/k.pem"}, "--ssl-keyfile needs --ssl-certfile"),
    ],
)
def test_settings_that_would_silently_weaken_security_are_refused(settings: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        KafkaConnection(bootstrap_servers="b:9092", **settings)  # type: ignore[arg-type]
    assert problem in str(info.value)
    assert "pw-in-settings" not in str(info.value)


def test_the_password_file_is_read_at_each_connect(tmp_path: Path) -> None:
    """A rotated Secret is used at the next connection, without a restart."""
    path = write_secret(tmp_path / "password", "first")
    connection = KafkaConnection(
        bootstrap_servers="b:9092", security_protocol="SASL_SSL", sasl_username="u", sasl_password_file=path
    )
    assert connection.client_kwargs()["sasl_plain_password"] == "first"
    write_secret(Path(path), "second")
    assert connection.client_kwargs()["sasl_plain_password"] == "second"
    Path(path).write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        connection.client_kwargs()


async def test_config_endpoint_shows_settings_and_no_secret(
    tls_broker: EmbeddedBroker, pki: Pki, tmp_path: Path, all_logs: pytest.LogCaptureFixture
) -> None:
    """A sidecar with every kind of secret, stuck connecting (the TLS broker offers no SASL):
    ``/config`` answers meanwhile with the paths and the protocol, never a secret, and nothing
    logged on the way (aiokafka's DEBUG included) holds one."""
    routes = tmp_path / "routes.yaml"
    routes.write_text("tenants: {}\n")
    app_token = write_secret(tmp_path / "app-token", APP_TOKEN)
    routes_token = write_secret(tmp_path / "routes-token", ROUTES_TOKEN)
    connection = KafkaConnection(
        bootstrap_servers=tls_broker.bootstrap_servers,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password=PASSWORD,
        ssl_cafile=str(pki.ca),
        ssl_certfile=str(pki.client.cert),
        ssl_keyfile=str(pki.client.key),
    )
    async with RecordingApp() as app:
        config = sidecar_config(
            tls_broker.bootstrap_servers, "t-config", app.url, str(routes),
            kafka=connection, app_token_file=app_token, routes_token_file=routes_token,
            forward_headers=("x-request-id",),
        )
        sidecar = Sidecar(config)
        starting = asyncio.create_task(sidecar.start())
        try:
            for _ in range(200):
                if sidecar.admin.port:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(1.0)  # let aiokafka try (and log) a few connections
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{sidecar.admin.port}/config") as response:
                    assert response.status == 200
                    text = await response.text()
                async with session.post(f"http://127.0.0.1:{sidecar.admin.port}/config") as response:
                    assert response.status == 405  # read-only, like every admin endpoint
            assert not starting.done(), "the sidecar was expected to be retrying its Kafka connection"
        finally:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await sidecar.stop()
    shown = json.loads(text)["config"]
    assert shown["kafka"]["security_protocol"] == "SASL_SSL"
    assert shown["kafka"]["sasl_password"] == REDACTED
    assert shown["kafka"]["ssl_keyfile"] == str(pki.client.key)
    assert shown["app_token_file"] == app_token and shown["routes_token_file"] == routes_token
    assert shown["forward_headers"] == ["x-request-id"]
    everything = text + logged_text(all_logs)
    for secret in (PASSWORD, APP_TOKEN, ROUTES_TOKEN):
        assert secret not in everything
    assert "UnsupportedSaslMechanism" in logged_text(all_logs)  # it did try, and the log says why


def test_redacted_config_hides_url_passwords(tmp_path: Path) -> None:
    routes = tmp_path / "r.yaml"
    routes.write_text("tenants: {}\n")
    config = SidecarConfig(
        kafka=KafkaConnection(bootstrap_servers="b:9092"), service="s", group="g", topics=("t",),
        app_url="http://user:hunter2@127.0.0.1:8080/events", routes=f"file:{routes}",
    )
    shown = json.dumps(config.redacted(), default=str)
    assert "hunter2" not in shown and "user:<redacted>@127.0.0.1:8080" in shown


def test_every_kafka_option_is_a_flag_or_env_only_secret() -> None:
    """No secret sneaks in as a flag: the only option that holds a secret value is env-only."""
    by_name = {o.name: o for o in SIDECAR_OPTIONS}
    assert by_name["sasl-password"].env_only
    assert all(not o.env_only for name, o in by_name.items() if name != "sasl-password")


@pytest.mark.parametrize("route_source", ["file", "kafka:"])
async def test_a_refused_scram_login_is_retried_not_a_crash(
    sasl_broker: EmbeddedBroker, tmp_path: Path, all_logs: pytest.LogCaptureFixture, route_source: str
) -> None:
    """Tansu refuses the SCRAM login of an unknown user with an answer aiokafka 0.14 cannot parse
    (it raises KeyError, not a KafkaError). The sidecar must treat it like any failed connect:
    log it, keep /healthz answering and /readyz saying why, and retry with backoff (the password
    file is read again at each try, so a rotated or late-mounted secret is picked up) — not crash
    the container into a restart loop. With ``kafka:`` routes the routes reader meets the refusal
    first, while the publish endpoint's producer meets it in the background."""
    routes = tmp_path / "routes.yaml"
    routes.write_text("tenants: {}\n")
    connection = KafkaConnection(
        bootstrap_servers=sasl_broker.bootstrap_servers,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="nobody",
        sasl_password_file=write_secret(tmp_path / "password", PASSWORD),
    )
    async with RecordingApp() as app:
        sidecar = Sidecar(sidecar_config(
            sasl_broker.bootstrap_servers, "t-scram", app.url, str(routes), kafka=connection,
            **({"routes": "kafka:"} if route_source == "kafka:" else {}),
        ))
        starting = asyncio.create_task(sidecar.start())
        try:
            for _ in range(400):
                retries = [r for r in all_logs.records if r.name.startswith("proxy.") and "retrying in" in r.getMessage()
                           and "KeyError" in r.getMessage() and "publish" not in r.getMessage()]
                if len(retries) >= 2 or starting.done():
                    break
                await asyncio.sleep(0.05)
            crashed = starting.exception() if starting.done() else None
            assert crashed is None, f"start() ended with {crashed!r} instead of retrying"
            assert len(retries) >= 2, "expected the connect to be retried"
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{sidecar.admin.port}/healthz") as response:
                    assert response.status == 200
                async with session.get(f"http://127.0.0.1:{sidecar.admin.port}/readyz") as response:
                    assert response.status == 503
                    assert (await response.json())["checks"]["group_joined"] is False
        finally:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await sidecar.stop()
    logged = logged_text(all_logs)
    assert "n=nobody" in logged  # the SCRAM exchange did run
    assert PASSWORD not in logged

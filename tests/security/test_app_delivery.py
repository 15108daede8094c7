"""Sidecar → app: HTTPS with our CA, the sidecar's own bearer token, and only allowlisted headers.

A record tries every trick on the request: its own ``authorization``, framing and hop-by-hop
headers, ``host``, our ``kafka-*`` names, a duplicate of an allowlisted header, a Unicode look-alike
of an allowlisted name. The app sees the sidecar's token, our metadata, the allowlisted header's
first value, and nothing else from the record.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from proxy.errors import ConfigError
from proxy.sidecar.runtime import Sidecar
from proxy.testing.app import RecordingApp
from proxy.testing.broker import free_port
from proxy.testing.tls import Pki
from tests.conftest import produce, sidecar_config
from tests.security.conftest import logged_text, write_secret

APP_TOKEN = "app-token-3e9d0f7a"
ATTACK_HEADERS: list[tuple[str, bytes]] = [
    ("authorization", b"Bearer from-the-record"),
    ("Authorization", b"Basic ZXZpbDpldmls"),
    ("proxy-authorization", b"Basic eA=="),
    ("host", b"evil.example"),
    ("content-length", b"0"),
    ("transfer-encoding", b"chunked"),
    ("connection", b"close"),
    ("te", b"trailers"),
    ("upgrade", b"websocket"),
    ("keep-alive", b"timeout=1"),
    ("trailer", b"x-later"),
    ("expect", b"100-continue"),
    ("kafka-topic", b"spoofed"),
    ("ktp-delivery", b"spoofed"),
    ("cookie", b"session=stolen"),
    ("x-request-id", b"req-1"),
    ("X-Request-ID", b"req-2-duplicate"),
    ("x-\u212aind", b"kelvin-sign"),  # KELVIN SIGN lower()s to 'k': must not become x-kind
    ("x-not-allowlisted", b"nope"),
    ("baggage", b"tenant=9"),
]


def server_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server.cert, pki.server.key)
    return context


async def test_https_app_gets_the_sidecar_token_and_only_allowed_headers(
    bootstrap_servers: str, topic: str, tmp_path: Path, pki: Pki
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("tenants: {}\n")
    await produce(bootstrap_servers, topic, [(b"k1", b"attack", ATTACK_HEADERS)])
    async with RecordingApp(ssl_context=server_context(pki)) as app:
        assert app.url.startswith("https://")
        config = sidecar_config(
            bootstrap_servers, topic, app.url, str(routes),
            app_cafile=str(pki.ca),
            app_health_url=app.url.replace("/events", "/healthz"),
            app_token_file=write_secret(tmp_path / "token", APP_TOKEN),
            forward_headers=("x-request-id", "x-kind"),
        )
        async with Sidecar(config):
            (seen,) = await app.wait_for(1)
            await asyncio.sleep(0.3)
    sent = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in seen.raw_headers]
    names = [name for name, _ in sent]
    assert dict(sent)["authorization"] == f"Bearer {APP_TOKEN}" and names.count("authorization") == 1
    assert dict(sent)["x-request-id"] == "req-1" and names.count("x-request-id") == 1
    assert dict(sent)["kafka-topic"] == topic and names.count("kafka-topic") == 1
    assert dict(sent)["host"] == f"127.0.0.1:{app.port}"
    assert dict(sent)["content-length"] == str(len(b"attack")) and seen.body == b"attack"
    assert dict(sent)["baggage"] == "tenant=9"
    for refused in ("proxy-authorization", "transfer-encoding", "te", "upgrade", "keep-alive",
                    "trailer", "expect", "cookie", "x-kind", "x-not-allowlisted"):
        assert refused not in names, refused
    # ktp-* names are the sidecar's own (the publish API's delivery id): never the record's.
    assert all(value != "spoofed" for _, value in sent)
    assert "connection" not in names or dict(sent)["connection"] != "close"


async def test_an_app_certificate_from_another_ca_gets_no_record(
    bootstrap_servers: str, topic: str, tmp_path: Path, pki: Pki, all_logs: pytest.LogCaptureFixture
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("tenants: {}\n")
    await produce(bootstrap_servers, topic, [(b"k1", b"secret payload", [])])
    async with RecordingApp(ssl_context=server_context(pki)) as app:
        config = sidecar_config(bootstrap_servers, topic, app.url, str(routes), app_cafile=str(pki.other_ca))
        async with Sidecar(config) as sidecar:
            await asyncio.sleep(3.0)
            ready, checks = sidecar.readiness()
    assert app.calls == 0  # the TLS handshake failed before any request was sent
    assert "certificate verify failed" in logged_text(all_logs)
    assert not ready or not checks["app_healthy"] or app.calls == 0


def test_app_cafile_with_a_plain_http_app_url_is_refused(tmp_path: Path, pki: Pki) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("tenants: {}\n")
    with pytest.raises(ConfigError, match="is not https"):
        sidecar_config("b:9092", "t", f"http://127.0.0.1:{free_port()}/e", str(routes), app_cafile=str(pki.ca))


@pytest.mark.parametrize("name", ["authorization", "Transfer-Encoding", "host", "kafka-offset", "ktp-x", "bad name", "x\r\ny"])
def test_forward_headers_refuses_what_must_never_be_copied(tmp_path: Path, name: str) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("tenants: {}\n")
    with pytest.raises(ConfigError, match="--forward-headers"):
        sidecar_config("b:9092", "t", "http://127.0.0.1:1/e", str(routes), forward_headers=(name,))

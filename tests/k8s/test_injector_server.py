"""The injector over real TLS on 127.0.0.1, answering real AdmissionReview JSON.

Certificates are made in each test with ``cryptography``; the client verifies the server against
the test CA, as the API server does with the webhook's ``caBundle``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest

from proxy.injector.config import InjectorConfig
from proxy.injector.server import InjectorServer
from tests.k8s import kube
from proxy.testing.tls import Pki, make_pki
from tests.k8s.pods import ANNOTATIONS, EXPECTED_PATCH, TEMPLATE, admission_review, consumer_pod


def client_tls(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


@pytest.fixture
def certs(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "tls")


@pytest.fixture
async def injector(certs: Pki) -> AsyncIterator[InjectorServer]:
    config = InjectorConfig(
        tls_certfile=str(certs.server.cert),
        tls_keyfile=str(certs.server.key),
        template=TEMPLATE,
        listen=("127.0.0.1", 0),
        metrics_addr=("127.0.0.1", 0),
        tls_reload_interval=0.05,
    )
    async with InjectorServer(config) as server:
        yield server


async def post_review(server: InjectorServer, ca: Path, body: Any) -> tuple[int, Any]:
    url = f"https://127.0.0.1:{server.port}/inject"
    async with aiohttp.ClientSession() as session:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with session.post(
            url, data=data, ssl=client_tls(ca), headers={"content-type": "application/json"}
        ) as resp:
            return resp.status, await resp.json()


async def test_annotated_pod_gets_exactly_the_expected_patch(
    injector: InjectorServer, certs: Pki
) -> None:
    pod = consumer_pod()
    status, body = await post_review(injector, certs.ca, admission_review(pod, uid="3f1c"))
    assert status == 200
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    response = body["response"]
    assert (response["uid"], response["allowed"], response["patchType"]) == (
        "3f1c",
        True,
        "JSONPatch",
    )
    patch = json.loads(base64.b64decode(response["patch"]))
    assert patch == EXPECTED_PATCH
    patched = jsonpatch.JsonPatch(patch).apply(pod)
    kube.validate(patched)
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["ktp-sidecar"]
    assert patched["spec"]["initContainers"][0]["restartPolicy"] == "Always"


@pytest.mark.parametrize(
    "pod",
    [
        consumer_pod({}),
        consumer_pod({"team": "payments"}),
        jsonpatch.apply_patch(consumer_pod(), EXPECTED_PATCH),
    ],
    ids=["unannotated", "other-annotations", "already-injected"],
)
async def test_pods_pass_unchanged(
    injector: InjectorServer, certs: Pki, pod: dict[str, Any]
) -> None:
    status, body = await post_review(injector, certs.ca, admission_review(pod, uid="u-2"))
    assert status == 200
    assert body["response"] == {"uid": "u-2", "allowed": True}


async def test_bad_annotation_is_refused_with_its_name(
    injector: InjectorServer, certs: Pki
) -> None:
    pod = consumer_pod({**ANNOTATIONS, "kafka-tenant-proxy.io/max-attempts": "many"})
    status, body = await post_review(injector, certs.ca, admission_review(pod, uid="u-3"))
    assert status == 200
    response = body["response"]
    assert response["uid"] == "u-3" and response["allowed"] is False and "patch" not in response
    assert "kafka-tenant-proxy.io/max-attempts" in response["status"]["message"]


async def test_garbage_is_a_400(injector: InjectorServer, certs: Pki) -> None:
    assert (await post_review(injector, certs.ca, b"{not json"))[0] == 400
    status, body = await post_review(injector, certs.ca, {"apiVersion": "v1", "kind": "Pod"})
    assert status == 400 and "AdmissionReview" in body["error"]


async def test_untrusted_client_cannot_talk_to_it(injector: InjectorServer, tmp_path: Path) -> None:
    """It really is TLS: a client trusting another CA fails the handshake."""
    other = make_pki(tmp_path / "other")
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await post_review(injector, other.ca, admission_review(consumer_pod()))


async def test_renewed_certificate_is_served_without_restart(
    injector: InjectorServer, certs: Pki, tmp_path: Path
) -> None:
    renewed = make_pki(tmp_path / "renewed")
    # Write the new pair in place, as the kubelet does when the Secret changes.
    certs.server.key.write_bytes(renewed.server.key.read_bytes())
    certs.server.cert.write_bytes(renewed.server.cert.read_bytes())
    for _ in range(100):
        try:
            status, _ = await post_review(injector, renewed.ca, admission_review(consumer_pod({})))
        except aiohttp.ClientConnectorCertificateError:
            await asyncio.sleep(0.05)
            continue
        assert status == 200
        break
    else:
        pytest.fail("the injector never served the renewed certificate")
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await post_review(injector, certs.ca, admission_review(consumer_pod({})))


async def test_metrics_count_outcomes(injector: InjectorServer, certs: Pki) -> None:
    await post_review(injector, certs.ca, admission_review(consumer_pod()))
    await post_review(injector, certs.ca, admission_review(consumer_pod({})))
    await post_review(
        injector,
        certs.ca,
        admission_review(consumer_pod({**ANNOTATIONS, "kafka-tenant-proxy.io/ordering": "x"})),
    )
    url = f"http://127.0.0.1:{injector.metrics_server.port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        text = await resp.text()
    for outcome in ("injected", "passed", "refused"):
        assert f'ktp_injector_reviews_total{{outcome="{outcome}"}} 1.0' in text
    assert 'ktp_injector_reviews_total{outcome="error"} 0.0' in text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_ktp_injector_serve_command(certs: Pki) -> None:
    """The real command, configured only by KTP_* variables as the chart does, stops on SIGTERM."""
    port = free_port()
    env = {
        **os.environ,
        "KTP_LISTEN": f"127.0.0.1:{port}",
        "KTP_METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "KTP_TLS_CERTFILE": str(certs.server.cert),
        "KTP_TLS_KEYFILE": str(certs.server.key),
        "KTP_SIDECAR_IMAGE": TEMPLATE.image,
        "KTP_BOOTSTRAP_SERVERS": TEMPLATE.bootstrap_servers,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "injector",
        "serve",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        url = f"https://127.0.0.1:{port}/inject"
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.post(
                        url, json=admission_review(consumer_pod()), ssl=client_tls(certs.ca)
                    ) as resp:
                        body = await resp.json()
                    break
                except aiohttp.ClientConnectorError:
                    assert proc.returncode is None, (await proc.communicate())[1].decode()
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("ktp injector serve never listened")
        assert json.loads(base64.b64decode(body["response"]["patch"])) == EXPECTED_PATCH
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, stderr.decode()
        assert "injected ktp-sidecar into pod shop/orders-worker-7d9f8-*" in stderr.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_command_refuses_bad_options(certs: Pki) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KTP_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "injector",
        "serve",
        "--tls-certfile",
        str(certs.server.cert),
        "--tls-keyfile",
        str(certs.server.key),
        "--bootstrap-servers",
        "k:9092",
        "--probes",
        "exec",
        "--sidecar-image",
        "i",
        "--sidecar-memory-limit",
        "1Mi",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2
    assert "--sidecar-memory-request" in stderr.decode() and "above the limit" in stderr.decode()


async def metrics_text(server: InjectorServer) -> str:
    url = f"http://127.0.0.1:{server.metrics_server.port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.text()


async def test_deeply_nested_json_is_a_bad_request(injector: InjectorServer, certs: Pki) -> None:
    """100,000 nested arrays (200 KB, under the body limit) overflow a recursive parser: that is
    the caller's bad input (400), not the injector's failure (500)."""
    status, body = await post_review(injector, certs.ca, b"[" * 100_000 + b"]" * 100_000)
    assert status == 400, body
    assert "nested" in body["error"]
    text = await metrics_text(injector)
    assert 'ktp_injector_reviews_total{outcome="bad_request"} 1.0' in text
    assert 'ktp_injector_reviews_total{outcome="error"} 0.0' in text


async def test_a_client_that_disconnects_is_not_an_error(
    injector: InjectorServer, certs: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """The API server gives up on a slow call (timeoutSeconds) by closing the connection: that
    is counted as such and logged without a traceback."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", injector.port, ssl=client_tls(certs.ca), server_hostname="localhost"
    )
    writer.write(
        b"POST /inject HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
        b"content-length: 100000\r\n\r\n" + b'{"apiVersion": "admission.k8s.io/v1", "kind"'
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    for _ in range(100):
        text = await metrics_text(injector)
        if 'outcome="disconnected"} 1.0' in text:
            break
        await asyncio.sleep(0.05)
    assert 'ktp_injector_reviews_total{outcome="disconnected"} 1.0' in text
    assert 'ktp_injector_reviews_total{outcome="error"} 0.0' in text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]

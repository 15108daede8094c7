"""Start-up failures a user can cause end in one line naming what and where, a non-zero exit
and no traceback: the real ``ktp`` processes, their stderr and exit codes.

None of these needs a broker: every listener is bound, and every file read, before Kafka is
contacted, so the Kafka address is a closed port.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.testing.tls import make_pki

CLOSED_KAFKA = "127.0.0.1:1"


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process (here: this one) listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def ktp(*args: str, timeout: float = 30) -> tuple[int, str]:
    """Run ``ktp ARGS`` to its end; its exit code and stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=timeout
    )
    return done.returncode, done.stderr


def assert_one_line_failure(code: int, stderr: str, *expected: str) -> str:
    """The exit is non-zero, there is no traceback, and the last line names every ``expected``."""
    assert code != 0, stderr
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    for word in expected:
        assert word in last, f"{word!r} not in {last!r}"
    return last


def sidecar_args(routes: Path, **addrs: str) -> list[str]:
    args = [
        "sidecar", "--bootstrap-servers", CLOSED_KAFKA, "--service", "orders-worker", "--group", "orders",
        "--topics", "orders", "--app-url", "http://127.0.0.1:1/events", "--routes", f"file:{routes}",
    ]
    for flag in ("admin-addr", "metrics-addr", "publish-addr"):
        args += [f"--{flag}", addrs.get(flag.replace("-", "_"), "127.0.0.1:0")]
    return args


@pytest.fixture
def routes(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text('tenants:\n  "123": {orders-worker: pr-42}\n')
    return path


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    return path


@pytest.mark.parametrize("flag", ["admin-addr", "metrics-addr", "publish-addr"])
def test_sidecar_port_in_use(flag: str, taken_port: int, routes: Path) -> None:
    address = f"127.0.0.1:{taken_port}"
    code, stderr = ktp(*sidecar_args(routes, **{flag.replace("-", "_"): address}))
    last = assert_one_line_failure(code, stderr, address, f"--{flag}", "address already in use")
    assert last.startswith("ktp sidecar:"), last


def test_route_service_port_in_use(taken_port: int, token: Path) -> None:
    address = f"127.0.0.1:{taken_port}"
    code, stderr = ktp(
        "routes", "serve", "--bootstrap-servers", CLOSED_KAFKA, "--listen", address, "--token-file", str(token)
    )
    assert_one_line_failure(code, stderr, "route service", address, "--listen", "address already in use")


def test_injector_port_in_use(taken_port: int, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    address = f"127.0.0.1:{taken_port}"
    code, stderr = ktp(
        "injector", "serve", "--listen", address, "--metrics-addr", "127.0.0.1:0",
        "--tls-certfile", str(pki.server.cert), "--tls-keyfile", str(pki.server.key),
        "--sidecar-image", "ktp:test", "--bootstrap-servers", CLOSED_KAFKA,
    )
    assert_one_line_failure(code, stderr, "injector", address, "--listen", "address already in use")


def test_missing_routes_file(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent.yaml"
    code, stderr = ktp(*sidecar_args(missing))
    assert_one_line_failure(code, stderr, f"file:{missing}", "No such file or directory")


def test_malformed_routes_file_does_not_claim_a_last_good_table(tmp_path: Path) -> None:
    bad = tmp_path / "routes.yaml"
    bad.write_text("tenants: [unclosed\n")
    code, stderr = ktp(*sidecar_args(bad))
    last = assert_one_line_failure(code, stderr, str(bad), "not valid YAML")
    assert "last good" not in stderr and "keeping" not in stderr, stderr
    assert last.count("\n") == 0


def test_unreadable_routes_file(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory.yaml"
    directory.mkdir()
    code, stderr = ktp(*sidecar_args(directory))
    assert_one_line_failure(code, stderr, str(directory), "--routes")


def test_route_service_bad_tls_files(tmp_path: Path, token: Path) -> None:
    garbage = tmp_path / "cert.pem"
    garbage.write_text("not a certificate\n")
    code, stderr = ktp(
        "routes", "serve", "--bootstrap-servers", CLOSED_KAFKA, "--listen", "127.0.0.1:0",
        "--token-file", str(token), "--tls-certfile", str(garbage), "--tls-keyfile", str(garbage),
    )
    assert_one_line_failure(code, stderr, "--tls-certfile", str(garbage))


def test_injector_missing_tls_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    code, stderr = ktp(
        "injector", "serve", "--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
        "--tls-certfile", str(missing), "--tls-keyfile", str(missing),
        "--sidecar-image", "ktp:test", "--bootstrap-servers", CLOSED_KAFKA,
    )
    assert_one_line_failure(code, stderr, str(missing))


def test_sidecar_bad_kafka_ca_file(tmp_path: Path, routes: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    code, stderr = ktp(*sidecar_args(routes), "--security-protocol", "SSL", "--ssl-cafile", str(garbage))
    assert_one_line_failure(code, stderr, "--ssl-cafile", str(garbage))


def test_route_service_missing_token_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-token"
    code, stderr = ktp("routes", "serve", "--bootstrap-servers", CLOSED_KAFKA, "--listen", "127.0.0.1:0",
                       "--token-file", str(missing))
    assert_one_line_failure(code, stderr, "--token-file", str(missing))


def test_route_service_empty_token_file(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    code, stderr = ktp("routes", "serve", "--bootstrap-servers", CLOSED_KAFKA, "--listen", "127.0.0.1:0",
                       "--token-file", str(empty))
    assert_one_line_failure(code, stderr, "--token-file", "empty")


def test_tenant_client_missing_token_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-token"
    code, stderr = ktp("tenant", "list", "--server", "http://127.0.0.1:1", "--token-file", str(missing))
    assert_one_line_failure(code, stderr, "--token-file", str(missing))


def test_sidecar_missing_app_token_file(tmp_path: Path, routes: Path) -> None:
    missing = tmp_path / "no-token"
    code, stderr = ktp(*sidecar_args(routes), "--app-token-file", str(missing))
    assert_one_line_failure(code, stderr, "--app-token-file", str(missing))

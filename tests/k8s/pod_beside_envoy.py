"""One pod's network namespace with Istio's proxy in it, played by real processes.

Run as ``python -m tests.k8s.pod_beside_envoy`` (the test runs it under ``unshare -rn``, a
network namespace of its own, as a pod has): a listener holding Envoy's ports (127.0.0.1:15000
admin, 15001 outbound, 15006 inbound, 0.0.0.0:15090 Prometheus, 15021 health), a Kafka broker, an
app, and a real ``ktp sidecar`` on its default ports. Prints one JSON line of what it saw.

With ``--old-ports`` the sidecar is started on the ports it used to take (15000/15001/15090)
instead: it must fail, which shows the same set-up catches a clash.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from proxy.testing.broker import EmbeddedBroker

ENVOY_PORTS = (("127.0.0.1", 15000), ("127.0.0.1", 15001), ("127.0.0.1", 15006),
               ("0.0.0.0", 15021), ("0.0.0.0", 15090))  # fmt: skip
# The stand-in for Envoy: binds its ports, says so, and holds them until killed.
ENVOY = f"""
import socket, sys, time
held = []
for host, port in {ENVOY_PORTS!r}:
    s = socket.socket()
    s.bind((host, port))
    s.listen()
    held.append(s)
print("holding", flush=True)
time.sleep(3600)
"""
APP = """
import http.server
class App(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8080), App).serve_forever()
"""


def loopback_up() -> None:
    """A new network namespace starts with its loopback down; the kubelet's CNI brings a pod's up."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status, response.read().decode()
    except OSError as exc:
        return getattr(exc, "code", 0) or 0, str(exc)


def port_taken(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--netns", action="store_true", help="bring the namespace's loopback up")
    parser.add_argument("--old-ports", action="store_true")
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    if args.netns:
        loopback_up()
    workdir = Path(args.workdir)
    routes = workdir / "routes.yaml"
    routes.write_text("tenants: {}\n")
    processes: list[subprocess.Popen[bytes]] = []
    broker = EmbeddedBroker(port=9092, log_path=workdir / "broker.log")
    report: dict[str, Any] = {}
    try:
        envoy = subprocess.Popen([sys.executable, "-c", ENVOY], stdout=subprocess.PIPE)
        processes.append(envoy)
        assert envoy.stdout is not None
        report["envoy"] = envoy.stdout.readline().decode().strip()
        broker.start_sync()
        processes.append(subprocess.Popen([sys.executable, "-c", APP]))
        env = {k: v for k, v in os.environ.items() if not k.startswith("KTP_")}
        env.update(
            KTP_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
            KTP_SERVICE="orders-worker",
            KTP_GROUP="orders-worker",
            KTP_TOPICS="orders",
            KTP_APP_URL="http://127.0.0.1:8080/events",
            KTP_ROUTES=f"file:{routes}",
            POD_NAME="orders-worker-7d9f8-abcde",
        )
        if args.old_ports:
            env.update(
                KTP_ADMIN_ADDR="127.0.0.1:15000",
                KTP_PUBLISH_ADDR="127.0.0.1:15001",
                KTP_METRICS_ADDR="0.0.0.0:15090",
            )
        log = open(workdir / "sidecar.log", "wb")  # noqa: SIM115
        sidecar = subprocess.Popen(
            [sys.executable, "-m", "proxy", "sidecar"], env=env, stdout=log, stderr=log
        )
        processes.append(sidecar)
        deadline = time.monotonic() + 30
        admin = "127.0.0.1:15000" if args.old_ports else "127.0.0.1:14000"
        while time.monotonic() < deadline and sidecar.poll() is None:
            status, _ = get(f"http://{admin}/healthz")
            if status == 200 and not args.old_ports:
                break
            time.sleep(0.1)
        report["sidecar_exit"] = sidecar.poll()
        report["healthz"] = get("http://127.0.0.1:14000/healthz")[0]
        status, metrics = get("http://127.0.0.1:14090/metrics")
        report["metrics"] = status
        report["metrics_has_ktp"] = "ktp_records_consumed_total" in metrics
        report["publish_listening"] = port_taken("127.0.0.1", 14001)
        report["envoy_alive"] = envoy.poll() is None
        report["envoy_ports_held"] = all(port_taken(h, p) for h, p in ENVOY_PORTS)
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        broker.stop_sync()
    report["sidecar_log"] = (workdir / "sidecar.log").read_text(errors="replace")[-3000:]
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

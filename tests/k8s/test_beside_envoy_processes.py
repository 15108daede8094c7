"""Real processes side by side in one network namespace, as containers of one pod are: a listener
on Envoy's ports and a real ``ktp sidecar`` on its default ports (see pod_beside_envoy.py).

The namespace is made with ``unshare -rn`` (an unprivileged user and network namespace), so
the fixed ports of the scenario cannot collide with anything else on the machine. Where user
namespaces are not allowed, the same scenario runs on the host's loopback, and fails loudly if
one of those ports is taken there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def own_namespace() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    probe = subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=10, check=False)
    return [unshare, "-rn"] if probe.returncode == 0 else []


def run_pod(tmp_path: Path, *extra: str) -> dict[str, Any]:
    prefix = own_namespace()
    command = [
        *prefix, sys.executable, "-m", "tests.k8s.pod_beside_envoy",
        "--workdir", str(tmp_path), *(["--netns"] if prefix else []), *extra,
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_sidecar_with_default_ports_runs_beside_envoy(tmp_path: Path) -> None:
    report = run_pod(tmp_path)
    assert report["envoy"] == "holding"
    log = report["sidecar_log"]
    assert report["sidecar_exit"] is None, f"the sidecar exited:\n{log}"
    assert report["healthz"] == 200, log
    assert report["metrics"] == 200 and report["metrics_has_ktp"], log
    assert report["publish_listening"], log
    # Envoy was not disturbed: still running, still on every one of its ports.
    assert report["envoy_alive"] and report["envoy_ports_held"]


def test_the_ports_it_used_to_take_fail_beside_envoy(tmp_path: Path) -> None:
    """The same pod with the sidecar on 15000/15001/15090: it cannot start. This is what the
    default ports avoid, and shows the scenario above can fail."""
    report = run_pod(tmp_path, "--old-ports")
    assert report["sidecar_exit"] not in (None, 0)
    assert "address already in use" in report["sidecar_log"].lower()
    assert report["envoy_alive"] and report["envoy_ports_held"]

"""The container runs as a non-root user and needs no shell at run time; the chart keeps it so.

The restrictive securityContexts themselves are checked for every chart scenario and the
injector's patch in ``tests/k8s``; here: nothing started in the image goes through a shell.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from helm_python.chart import Chart

from tests.k8s.test_chart import CHART, SCENARIOS, render

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"
SHELLS = {"sh", "bash", "dash", "/bin/sh", "/bin/bash", "/bin/dash", "ash", "/bin/ash"}


def final_stage() -> list[str]:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    start = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    return lines[start:]


def test_final_stage_runs_as_a_numeric_non_root_user_with_exec_form_commands() -> None:
    stage = final_stage()
    users = [line.split(None, 1)[1] for line in stage if line.upper().startswith("USER ")]
    assert users and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", users[-1]), users
    for keyword in ("ENTRYPOINT", "CMD"):
        (line,) = [line for line in stage if line.upper().startswith(keyword + " ")]
        argv = json.loads(line.split(None, 1)[1])  # exec form: a JSON array, no /bin/sh -c
        assert isinstance(argv, list) and not set(argv) & SHELLS
    # No RUN in the final stage: it is assembled by COPY only, so it needs no shell even to build.
    assert not [line for line in stage if line.upper().startswith("RUN ")]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc.get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_no_container_or_probe_of_the_chart_goes_through_a_shell(scenario: str) -> None:
    chart = Chart.load(CHART)
    seen = 0
    for doc in render(chart, SCENARIOS[scenario]):
        if doc["kind"] not in ("Deployment", "Pod"):
            continue
        for container in containers(doc):
            seen += 1
            argv = [*container.get("command", []), *container.get("args", [])]
            assert not set(argv[:1]) & SHELLS, (doc["metadata"]["name"], argv[:3])
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                command = container.get(probe, {}).get("exec", {}).get("command", [])
                assert not set(command[:1]) & SHELLS, (container["name"], probe, command)
            assert container["securityContext"]["runAsNonRoot"] is True
    assert seen

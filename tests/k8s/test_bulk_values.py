"""Bulk delivery through the chart and the injector: the ``sidecar.bulkMaxRecords`` value reaches
every injected sidecar and the named sidecar template alike, and a pod's
``kafka-tenant-proxy.io/bulk-max-records`` annotation overrides it or is refused when invalid."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from helm_python.chart import Chart
from helm_python.errors import HelmError

from proxy.config import resolve
from proxy.injector.config import INJECTOR_OPTIONS, InjectorConfig
from proxy.injector.patch import Inject, Refuse, SidecarTemplate, plan
from tests.k8s.pods import consumer_pod
from tests.k8s.test_chart import chart, consumer_chart, env_dict, one, render  # noqa: F401 - fixtures

ANNOTATIONS = {
    "kafka-tenant-proxy.io/inject": "true",
    "kafka-tenant-proxy.io/service": "orders-worker",
    "kafka-tenant-proxy.io/group": "orders-worker",
    "kafka-tenant-proxy.io/topics": "orders",
    "kafka-tenant-proxy.io/app-port": "8080",
}


def injector_template(docs: list[dict[str, Any]], tmp_path: Path) -> SidecarTemplate:
    env = env_dict(one(docs, "Deployment", "injector")["spec"]["template"]["spec"]["containers"][0])
    for name in ("KTP_TLS_CERTFILE", "KTP_TLS_KEYFILE"):
        (tmp_path / name).write_text("x")
        env[name] = str(tmp_path / name)
    return InjectorConfig.from_options(resolve(INJECTOR_OPTIONS, argparse.Namespace(), environ=env)).template


def sidecar_env(template: SidecarTemplate, annotations: dict[str, str]) -> dict[str, str]:
    outcome = plan(consumer_pod(annotations), template)
    assert isinstance(outcome, Inject), outcome
    container = outcome.patch[0]["value"]
    return env_dict(container[0] if isinstance(container, list) else container)


def test_the_value_reaches_injected_sidecars_and_annotations_override_it(chart: Chart, tmp_path: Path) -> None:  # noqa: F811
    off = injector_template(render(chart, {}), tmp_path)
    assert off.bulk_max_records == 0
    assert "KTP_BULK_MAX_RECORDS" not in sidecar_env(off, ANNOTATIONS)
    assert sidecar_env(off, {**ANNOTATIONS, "kafka-tenant-proxy.io/bulk-max-records": "8"})["KTP_BULK_MAX_RECORDS"] == "8"

    on = injector_template(render(chart, {"sidecar": {"bulkMaxRecords": 16}}), tmp_path)
    assert on.bulk_max_records == 16
    assert sidecar_env(on, ANNOTATIONS)["KTP_BULK_MAX_RECORDS"] == "16"
    assert sidecar_env(on, {**ANNOTATIONS, "kafka-tenant-proxy.io/bulk-max-records": "0"})["KTP_BULK_MAX_RECORDS"] == "0"
    refused = plan(consumer_pod({**ANNOTATIONS, "kafka-tenant-proxy.io/bulk-max-records": "1001"}), on)
    assert isinstance(refused, Refuse)
    assert "kafka-tenant-proxy.io/bulk-max-records" in refused.message and "1000" in refused.message


def test_the_schema_refuses_a_bulk_size_the_sidecar_would_refuse(chart: Chart) -> None:  # noqa: F811
    with pytest.raises(HelmError, match="bulkMaxRecords"):
        render(chart, {"sidecar": {"bulkMaxRecords": 1001}})


def test_the_named_template_gives_the_same_bulk_setting(consumer_chart: Path, tmp_path: Path) -> None:  # noqa: F811
    values = {"kafka-tenant-proxy": {"routes": {"enabled": False}, "sidecar": {"bulkMaxRecords": 16}}}
    with Chart.load(consumer_chart) as loaded:
        docs = render(loaded, values)
    deployment = next(d for d in docs if d["metadata"]["name"] == "orders-worker-pr-42")
    pod_spec = deployment["spec"]["template"]["spec"]
    from_template = next(
        c for c in [*pod_spec.get("initContainers", []), *pod_spec["containers"]] if c["name"] == "ktp-sidecar"
    )
    assert env_dict(from_template)["KTP_BULK_MAX_RECORDS"] == "16"
    assert injector_template(docs, tmp_path).bulk_max_records == 16

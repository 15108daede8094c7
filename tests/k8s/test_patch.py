"""Unit tests of the pure patch builder and AdmissionReview handling (no I/O)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import resolve
from proxy.errors import ConfigError
from proxy.injector.config import INJECTOR_OPTIONS, InjectorConfig
from proxy.injector.patch import (
    EXEC_PROBE_SCRIPT,
    KNOWN_ANNOTATIONS,
    POD_OPTIONS,
    Inject,
    Pass,
    Refuse,
    Resources,
    SecretKeyRef,
    SidecarTemplate,
    parse_quantity,
    plan,
)
from proxy.injector.review import BadReview, answer
from proxy.sidecar.config import SIDECAR_OPTIONS, SidecarConfig
from tests.k8s import kube
from tests.k8s.pods import (
    ANNOTATIONS,
    EXPECTED_PATCH,
    SIDECAR,
    TEMPLATE,
    admission_review,
    consumer_pod,
)


def apply(pod: dict[str, Any], outcome: Any) -> dict[str, Any]:
    assert isinstance(outcome, Inject), outcome
    patched: dict[str, Any] = jsonpatch.apply_patch(pod, outcome.patch)
    kube.validate(patched)
    return patched


def sidecar_of(pod: dict[str, Any]) -> dict[str, Any]:
    spec = pod["spec"]
    found = [
        c
        for c in [*spec.get("initContainers", []), *spec["containers"]]
        if c["name"] == "ktp-sidecar"
    ]
    assert len(found) == 1
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"] if "value" in e}


def with_annotations(**extra: str) -> dict[str, Any]:
    annotations = dict(ANNOTATIONS)
    for key, value in extra.items():
        annotations["kafka-tenant-proxy.io/" + key.replace("_", "-")] = value
    return consumer_pod(annotations)


def refusal(pod: dict[str, Any], template: SidecarTemplate = TEMPLATE) -> str:
    outcome = plan(pod, template)
    assert isinstance(outcome, Refuse), outcome
    return outcome.message


# --- what an annotated pod gets -------------------------------------------------------------


def test_annotated_pod_gets_exactly_the_expected_patch() -> None:
    pod = consumer_pod()
    outcome = plan(pod, TEMPLATE)
    assert outcome == Inject(EXPECTED_PATCH)
    patched = apply(pod, outcome)
    assert patched["spec"]["initContainers"] == [SIDECAR]
    assert patched["spec"]["containers"] == pod["spec"]["containers"]


def test_injected_environment_is_a_valid_sidecar_config() -> None:
    """The env we write is read by the sidecar's own option resolution into the pod's settings."""
    patched = apply(consumer_pod(), plan(consumer_pod(), TEMPLATE))
    env = env_of(sidecar_of(patched))
    config = SidecarConfig.from_options(resolve(SIDECAR_OPTIONS, argparse.Namespace(), environ=env))
    assert (config.service, config.group, config.topics) == (
        "orders-worker",
        "orders-worker",
        ("orders", "payments"),
    )
    assert config.app_url == "http://127.0.0.1:8080/events"
    assert config.admin_addr == ("0.0.0.0", 14000)
    assert config.metrics_addr == ("0.0.0.0", 14090)
    assert config.publish_addr == ("127.0.0.1", 14001)
    assert config.sandbox is None and config.consumer_group == "orders-worker"


def test_sandbox_pod_gets_its_sandbox() -> None:
    pod = with_annotations(sandbox="pr-42", ordering="key", max_attempts="7")
    env = env_of(sidecar_of(apply(pod, plan(pod, TEMPLATE))))
    assert env["KTP_SANDBOX"] == "pr-42"
    assert env["KTP_ORDERING"] == "key"
    assert env["KTP_MAX_ATTEMPTS"] == "7"


def test_app_url_annotation_is_passed_as_is() -> None:
    annotations = {
        k: v for k, v in ANNOTATIONS.items() if not k.endswith(("/app-port", "/app-path"))
    }
    annotations["kafka-tenant-proxy.io/app-url"] = "http://localhost:9000/kafka/events"
    pod = consumer_pod(annotations)
    assert (
        env_of(sidecar_of(apply(pod, plan(pod, TEMPLATE))))["KTP_APP_URL"]
        == "http://localhost:9000/kafka/events"
    )


def test_app_path_defaults_to_root() -> None:
    annotations = {k: v for k, v in ANNOTATIONS.items() if not k.endswith("/app-path")}
    pod = consumer_pod(annotations)
    assert (
        env_of(sidecar_of(apply(pod, plan(pod, TEMPLATE))))["KTP_APP_URL"]
        == "http://127.0.0.1:8080/"
    )


def test_regular_container_when_the_pod_asks_goes_first() -> None:
    pod = with_annotations(native_sidecar="false")
    patched = apply(pod, plan(pod, TEMPLATE))
    assert [c["name"] for c in patched["spec"]["containers"]] == ["ktp-sidecar", "app"]
    assert "restartPolicy" not in patched["spec"]["containers"][0]
    assert "initContainers" not in patched["spec"]


def test_injector_wide_regular_containers_and_pod_override_back_to_native() -> None:
    template = SidecarTemplate(image="i", bootstrap_servers="k:9092", native_sidecar=False)
    assert (
        sidecar_of(apply(consumer_pod(), plan(consumer_pod(), template))).get("restartPolicy")
        is None
    )
    pod = with_annotations(native_sidecar="true")
    assert sidecar_of(apply(pod, plan(pod, template)))["restartPolicy"] == "Always"


def test_app_max_concurrency_from_the_injector_and_the_pod() -> None:
    assert "KTP_APP_MAX_CONCURRENCY" not in env_of(sidecar_of(apply(consumer_pod(), plan(consumer_pod(), TEMPLATE))))
    template = SidecarTemplate(image="i", bootstrap_servers="k:9092", app_max_concurrency=1)
    assert env_of(sidecar_of(apply(consumer_pod(), plan(consumer_pod(), template))))["KTP_APP_MAX_CONCURRENCY"] == "1"
    pod = with_annotations(app_max_concurrency="4")
    assert env_of(sidecar_of(apply(pod, plan(pod, template))))["KTP_APP_MAX_CONCURRENCY"] == "4"
    bad = with_annotations(app_max_concurrency="0")
    assert "kafka-tenant-proxy.io/app-max-concurrency" in str(plan(bad, template))


def test_existing_init_containers_volumes_and_no_labels() -> None:
    pod = consumer_pod(
        initContainers=[{"name": "migrate", "image": "migrate:1"}],
        volumes=[{"name": "data", "emptyDir": {}}],
    )
    del pod["metadata"]["labels"]
    template = SidecarTemplate(
        image="i",
        bootstrap_servers="k:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="orders",
        sasl_password_secret=SecretKeyRef("kafka-user", "pw"),
        kafka_ca_secret=SecretKeyRef("kafka-ca", "ca.crt"),
        kafka_client_cert_secret="kafka-client",
    )
    outcome = plan(pod, template)
    assert isinstance(outcome, Inject)
    paths = [op["path"] for op in outcome.patch]
    assert paths[:4] == [
        "/spec/initContainers/-",
        "/spec/volumes/-",
        "/spec/volumes/-",
        "/spec/volumes/-",
    ]
    assert "/metadata/labels" in paths
    patched = apply(pod, outcome)
    # Appended: the pod's own init containers run before the sidecar starts.
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["migrate", "ktp-sidecar"]
    assert [v["name"] for v in patched["spec"]["volumes"]] == [
        "data",
        "ktp-kafka-sasl",
        "ktp-kafka-ca",
        "ktp-kafka-client-cert",
    ]
    sasl = patched["spec"]["volumes"][1]["secret"]
    assert sasl["secretName"] == "kafka-user" and sasl["items"] == [
        {"key": "pw", "path": "password"}
    ]
    env = env_of(sidecar_of(patched))
    assert (
        env["KTP_SASL_PASSWORD_FILE"] == "/var/run/secrets/kafka-tenant-proxy/kafka-sasl/password"
    )
    assert env["KTP_SSL_CAFILE"] == "/var/run/secrets/kafka-tenant-proxy/kafka-ca/ca.crt"
    assert env["KTP_SSL_KEYFILE"] == "/var/run/secrets/kafka-tenant-proxy/kafka-client-cert/tls.key"
    assert env["KTP_SASL_MECHANISM"] == "SCRAM-SHA-512" and env["KTP_SASL_USERNAME"] == "orders"
    mounts = {m["mountPath"] for m in sidecar_of(patched)["volumeMounts"]}
    assert all(
        env[k].rsplit("/", 1)[0] in mounts
        for k in ("KTP_SASL_PASSWORD_FILE", "KTP_SSL_CAFILE", "KTP_SSL_CERTFILE")
    )
    assert patched["metadata"]["labels"] == {"kafka-tenant-proxy.io/sidecar": "true"}


def test_pod_with_its_own_scrape_annotations_keeps_them() -> None:
    pod = with_annotations()
    pod["metadata"]["annotations"].update(
        {"prometheus.io/scrape": "true", "prometheus.io/port": "9102"}
    )
    patched = apply(pod, plan(pod, TEMPLATE))
    assert patched["metadata"]["annotations"]["prometheus.io/port"] == "9102"
    assert "prometheus.io/path" not in patched["metadata"]["annotations"]


def test_pod_resources_from_annotations() -> None:
    pod = with_annotations(cpu_request="100m", memory_limit="1Gi", cpu_limit="2")
    resources = sidecar_of(apply(pod, plan(pod, TEMPLATE)))["resources"]
    assert resources == {
        "requests": {"cpu": "100m", "memory": "64Mi"},
        "limits": {"cpu": "2", "memory": "1Gi"},
    }


def test_exec_probes_keep_the_admin_server_on_loopback() -> None:
    template = SidecarTemplate(image="i", bootstrap_servers="k:9092", probes="exec")
    sidecar = sidecar_of(apply(consumer_pod(), plan(consumer_pod(), template)))
    assert env_of(sidecar)["KTP_ADMIN_ADDR"] == "127.0.0.1:14000"
    assert [p["name"] for p in sidecar["ports"]] == ["ktp-metrics", "ktp-publish"]
    assert sidecar["readinessProbe"]["exec"]["command"][:2] == ["python", "-c"]
    assert "127.0.0.1:14000/healthz" in sidecar["readinessProbe"]["exec"]["command"][2]


async def test_exec_probe_script_exits_by_the_status() -> None:
    """The one-liner run by the kubelet: 0 on 200, non-zero on 503 and when nothing listens."""
    state = {"status": 200}

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(status=state["status"])

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def probe() -> int:
        script = EXEC_PROBE_SCRIPT.format(port=port, path="/readyz")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        return await proc.wait()

    try:
        assert await probe() == 0
        state["status"] = 503
        assert await probe() != 0
    finally:
        await runner.cleanup()
    assert await probe() != 0


# --- what passes unchanged ------------------------------------------------------------------


@pytest.mark.parametrize(
    "pod",
    [
        consumer_pod({}),
        consumer_pod({"kafka-tenant-proxy.io/service": "orders-worker"}),
        consumer_pod({**ANNOTATIONS, "kafka-tenant-proxy.io/inject": "false"}),
        consumer_pod(
            initContainers=[{"name": "ktp-sidecar", "image": "x", "restartPolicy": "Always"}]
        ),
        {
            **consumer_pod(),
            "spec": {
                "containers": [{"name": "ktp-sidecar", "image": "x"}, {"name": "app", "image": "y"}]
            },
        },
    ],
    ids=[
        "no-annotations",
        "no-inject-annotation",
        "inject-false",
        "native-sidecar-present",
        "regular-sidecar-present",
    ],
)
def test_passes_unchanged(pod: dict[str, Any]) -> None:
    assert isinstance(plan(pod, TEMPLATE), Pass)


def test_already_injected_pod_passes_unchanged() -> None:
    pod = consumer_pod()
    patched = apply(pod, plan(pod, TEMPLATE))
    assert isinstance(plan(patched, TEMPLATE), Pass)


# --- what is refused ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"inject": "yes please"}, "kafka-tenant-proxy.io/inject"),
        ({"topic": "orders"}, "kafka-tenant-proxy.io/topic"),
        ({"sandbox": "PR_42"}, "kafka-tenant-proxy.io/sandbox"),
        ({"service": "Orders"}, "kafka-tenant-proxy.io/service"),
        ({"ordering": "random"}, "kafka-tenant-proxy.io/ordering"),
        ({"max-in-flight": "0"}, "kafka-tenant-proxy.io/max-in-flight"),
        ({"app-timeout": "soon"}, "kafka-tenant-proxy.io/app-timeout"),
        ({"app-port": "80800"}, "kafka-tenant-proxy.io/app-port"),
        ({"app-port": "http"}, "kafka-tenant-proxy.io/app-port"),
        ({"app-path": "events"}, "kafka-tenant-proxy.io/app-path"),
        ({"app-url": "http://127.0.0.1:8080/"}, "kafka-tenant-proxy.io/app-url"),
        ({"topics": " , "}, "kafka-tenant-proxy.io/topics"),
        ({"native-sidecar": "maybe"}, "kafka-tenant-proxy.io/native-sidecar"),
        ({"memory-limit": "lots"}, "kafka-tenant-proxy.io/memory-limit"),
        ({"cpu-request": "2", "cpu-limit": "500m"}, "kafka-tenant-proxy.io/cpu-request"),
        ({"service": "orders\nX-Evil: 1"}, "kafka-tenant-proxy.io/service"),
        ({"admin-addr": "0.0.0.0:1"}, "kafka-tenant-proxy.io/admin-addr"),
        ({"sasl-password-file": "/etc/shadow"}, "kafka-tenant-proxy.io/sasl-password-file"),
        # Cross-option rule of the sidecar's own config: caught here, not at the sidecar's start.
        (
            {"sandbox": "pr-42", "dead-letter-topic": "{topic}.dlq"},
            "kafka-tenant-proxy.io/dead-letter-topic",
        ),
        ({"app-url": "ftp://host/x", "app-port": None}, "kafka-tenant-proxy.io/app-url"),
    ],
)
def test_bad_annotation_is_refused_by_name(extra: dict[str, str | None], named: str) -> None:
    annotations = dict(ANNOTATIONS)
    for key, value in extra.items():
        full = "kafka-tenant-proxy.io/" + key
        if value is None:
            annotations.pop(full, None)
            annotations.pop("kafka-tenant-proxy.io/app-path", None)
        else:
            annotations[full] = value
    assert named in refusal(consumer_pod(annotations))


def test_missing_required_annotations_are_all_named_at_once() -> None:
    message = refusal(
        consumer_pod({"kafka-tenant-proxy.io/inject": "true", "kafka-tenant-proxy.io/topik": "x"})
    )
    for name in ("service", "group", "topics", "app-port", "topik"):
        assert f"kafka-tenant-proxy.io/{name}" in message


# --- property tests where inputs are wide ---------------------------------------------------

annotatable = st.sampled_from(
    sorted(o.name for o in POD_OPTIONS if o.name not in ("service", "group", "topics", "app-url"))
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=annotatable, value=st.text(max_size=80))
def test_any_annotation_value_is_injected_verbatim_or_refused_by_name(
    name: str, value: str
) -> None:
    outcome = plan(with_annotations(**{name.replace("-", "_"): value}), TEMPLATE)
    if isinstance(outcome, Refuse):
        assert f"kafka-tenant-proxy.io/{name}" in outcome.message
        return
    assert isinstance(outcome, Inject)
    env = env_of(outcome.patch[0]["value"][0])
    option = next(o for o in SIDECAR_OPTIONS if o.name == name)
    assert env[option.env] == value
    # Whatever was admitted, the sidecar accepts at start.
    SidecarConfig.from_options(resolve(SIDECAR_OPTIONS, argparse.Namespace(), environ=env))


@settings(max_examples=300, deadline=None)
@given(
    key=st.text(st.characters(codec="ascii"), min_size=1, max_size=30),
    value=st.text(max_size=30),
)
def test_unknown_annotation_keys_never_crash_and_are_named(key: str, value: str) -> None:
    full = "kafka-tenant-proxy.io/" + key
    outcome = plan(consumer_pod({**ANNOTATIONS, full: value}), TEMPLATE)
    if key in KNOWN_ANNOTATIONS:
        assert isinstance(outcome, (Inject, Refuse, Pass))
    else:
        assert isinstance(outcome, Refuse) and full in outcome.message


pod_shapes = st.fixed_dictionaries(
    {
        "labels": st.booleans(),
        "init": st.lists(st.sampled_from(["migrate", "wait-for-db"]), unique=True, max_size=2),
        "volumes": st.booleans(),
        "native": st.sampled_from([None, "true", "false"]),
        "scrape": st.booleans(),
        "secrets": st.booleans(),
    }
)


@settings(max_examples=40, deadline=None)
@given(shape=pod_shapes)
def test_every_injected_pod_shape_is_a_valid_pod(shape: dict[str, Any]) -> None:
    annotations = dict(ANNOTATIONS)
    if shape["native"] is not None:
        annotations["kafka-tenant-proxy.io/native-sidecar"] = shape["native"]
    if shape["scrape"]:
        annotations["prometheus.io/scrape"] = "false"
    pod = consumer_pod(annotations)
    if not shape["labels"]:
        del pod["metadata"]["labels"]
    if shape["init"]:
        pod["spec"]["initContainers"] = [{"name": n, "image": "busybox:1"} for n in shape["init"]]
    if shape["volumes"]:
        pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    template = TEMPLATE
    if shape["secrets"]:
        template = SidecarTemplate(
            image="registry.example.com/ktp:0.1.0",
            bootstrap_servers="k:9093",
            security_protocol="SASL_SSL",
            sasl_username="u",
            sasl_password_secret=SecretKeyRef("s", "password"),
            kafka_ca_secret=SecretKeyRef("ca", "ca.crt"),
        )
    original = copy.deepcopy(pod)
    patched = apply(pod, plan(pod, template))
    assert pod == original, "the patch builder must not change its input"
    assert patched["spec"]["containers"][-1]["name"] == "app"
    assert patched["metadata"]["annotations"]["kafka-tenant-proxy.io/status"] == "injected"
    assert patched["metadata"]["labels"]["kafka-tenant-proxy.io/sidecar"] == "true"
    # Every injected sidecar knows its pod, and takes the pod's name as its member id.
    env = {e["name"]: e for e in sidecar_of(patched)["env"]}
    assert env["POD_NAME"]["valueFrom"] == {
        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}
    }
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert "KTP_INSTANCE_ID" not in env
    assert isinstance(plan(patched, template), Pass)


@given(
    number=st.integers(0, 10**6), suffix=st.sampled_from(["", "m", "k", "Ki", "Mi", "Gi", "M", "G"])
)
def test_quantities_parse_and_order(number: int, suffix: str) -> None:
    value = parse_quantity(f"{number}{suffix}")
    assert value == parse_quantity(f"{number}.0{suffix}")
    assert parse_quantity(f"{number + 1}{suffix}") > value


@pytest.mark.parametrize("raw", ["", "1.", ".5", "-1", "1 Gi", "1gi", "1e3", "Mi"])
def test_bad_quantities(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(raw)


# --- the injector's own options -------------------------------------------------------------


def injector_config(tmp_path: Any, **env: str) -> InjectorConfig:
    (tmp_path / "tls.crt").write_text("x")
    (tmp_path / "tls.key").write_text("x")
    environ = {
        "KTP_TLS_CERTFILE": str(tmp_path / "tls.crt"),
        "KTP_TLS_KEYFILE": str(tmp_path / "tls.key"),
        "KTP_SIDECAR_IMAGE": "ghcr.io/x/ktp:1",
        "KTP_BOOTSTRAP_SERVERS": "kafka:9092",
        **env,
    }
    return InjectorConfig.from_options(
        resolve(INJECTOR_OPTIONS, argparse.Namespace(), environ=environ)
    )


def test_injector_options_from_environment(tmp_path: Any) -> None:
    config = injector_config(
        tmp_path,
        KTP_SASL_PASSWORD_SECRET="kafka-user",
        KTP_SECURITY_PROTOCOL="SASL_SSL",
        KTP_SASL_USERNAME="svc",
        KTP_KAFKA_CA_SECRET="ca/bundle.pem",
        KTP_SIDECAR_CPU_LIMIT="",
        KTP_NATIVE_SIDECAR="false",
        KTP_LISTEN="127.0.0.1:9443",
    )
    template = config.template
    assert template.sasl_password_secret == SecretKeyRef("kafka-user", "password")
    assert template.kafka_ca_secret == SecretKeyRef("ca", "bundle.pem")
    assert template.resources == Resources(cpu_limit=None)
    assert template.native_sidecar is False
    assert config.listen == ("127.0.0.1", 9443)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KTP_SECURITY_PROTOCOL": "SASL_SSL"}, "--sasl-password-secret"),
        ({"KTP_SIDECAR_MEMORY_REQUEST": "1Gi"}, "--sidecar-memory-request"),
        ({"KTP_SIDECAR_CPU_LIMIT": "fast"}, "--sidecar-cpu-limit"),
        ({"KTP_PROBES": "tcp"}, "KTP_PROBES"),
        ({"KTP_SASL_PASSWORD_SECRET": "Bad_Name"}, "--sasl-password-secret"),
        ({"KTP_SIDECAR_IMAGE": ""}, "--sidecar-image"),
    ],
)
def test_bad_injector_options_are_named(tmp_path: Any, env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        injector_config(tmp_path, **env)


# --- AdmissionReview ------------------------------------------------------------------------


def test_review_of_annotated_pod_carries_the_patch_and_uid() -> None:
    body = answer(admission_review(consumer_pod(), uid="u-1"), TEMPLATE).body
    response = body["response"]
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    assert (
        response["uid"] == "u-1"
        and response["allowed"] is True
        and response["patchType"] == "JSONPatch"
    )
    assert json.loads(base64.b64decode(response["patch"])) == EXPECTED_PATCH


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "CONNECT"])
def test_review_other_operations_pass(operation: str) -> None:
    response = answer(admission_review(consumer_pod(), operation=operation), TEMPLATE).body[
        "response"
    ]
    assert response == {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": True}


def test_review_other_kinds_pass() -> None:
    review = admission_review(consumer_pod())
    review["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    assert answer(review, TEMPLATE).body["response"] == {
        "uid": review["request"]["uid"],
        "allowed": True,
    }


def test_review_refusal_has_status_message() -> None:
    pod = with_annotations(ordering="sideways")
    response = answer(admission_review(pod), TEMPLATE).body["response"]
    assert response["allowed"] is False and "patch" not in response
    assert response["status"]["code"] == 400
    assert "kafka-tenant-proxy.io/ordering" in response["status"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"apiVersion": "v1", "kind": "Pod"},
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"},
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {"uid": "x", "kind": {"kind": "Pod"}, "operation": "CREATE"},
        },
    ],
)
def test_not_a_review(body: Any) -> None:
    with pytest.raises(BadReview):
        answer(body, TEMPLATE)


def test_readme_example_is_injected_and_its_refusal_is_what_the_injector_says() -> None:
    """The README's annotated Deployment gets the sidecar; its refusal example is verbatim."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Kubernetes: install, annotate, verify") :]
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    deployment = next(yaml.safe_load(b) for b in blocks if "kind: Deployment" in b)
    pod = {"apiVersion": "v1", "kind": "Pod", **deployment["spec"]["template"]}
    patched = apply(pod, plan(pod, TEMPLATE))
    env = env_of(sidecar_of(patched))
    assert env["KTP_SANDBOX"] == "pr-42" and env["KTP_APP_URL"] == "http://127.0.0.1:8080/events"
    pod["metadata"]["annotations"]["kafka-tenant-proxy.io/ordering"] = "random"
    refused = refusal(pod)
    assert f'denied the request:\n{refused}\n' in section

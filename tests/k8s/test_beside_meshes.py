"""The injector beside other sidecars and on pods it must not change: ports, host networking,
names already taken, pod identity, pull secrets, the route service's token, readiness."""

from __future__ import annotations

import argparse
import copy
from typing import Any

import pytest

from proxy.config import resolve
from proxy.injector.patch import (
    Inject,
    Refuse,
    SecretKeyRef,
    SidecarPorts,
    SidecarTemplate,
    plan,
)
from proxy.sidecar.config import SIDECAR_OPTIONS, SidecarConfig
from tests.k8s.pods import ANNOTATIONS, IMAGE, TEMPLATE, consumer_pod
from tests.k8s.test_patch import apply, env_of, refusal, sidecar_of, with_annotations

# A pod as Istio's injector (sidecar-injector template, classic mode) leaves it: the iptables
# set-up init container, and istio-proxy with the ports it declares. Envoy also listens on
# 15000 (admin), 15001 (outbound) and 15006 (inbound) without declaring them.
ISTIO_INIT = {
    "name": "istio-init",
    "image": "docker.io/istio/proxyv2:1.24.0",
    "args": ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
             "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"],
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": False,
        "runAsGroup": 0,
        "runAsNonRoot": False,
        "runAsUser": 0,
    },
}  # fmt: skip
ISTIO_PROXY = {
    "name": "istio-proxy",
    "image": "docker.io/istio/proxyv2:1.24.0",
    "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"],
    "env": [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ],
    "ports": [
        {"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"},
        {"containerPort": 15021, "name": "health-port", "protocol": "TCP"},
    ],
    "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}},
    "securityContext": {"runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": True},
}
ISTIO_ANNOTATIONS = {
    "sidecar.istio.io/status": '{"initContainers":["istio-init"],"containers":["istio-proxy"]}',
    "prometheus.io/port": "15020",
    "prometheus.io/path": "/stats/prometheus",
    "prometheus.io/scrape": "true",
}


def istio_pod(native: bool = False) -> dict[str, Any]:
    """A consumer pod after Istio's injector (native: istio-proxy as a native sidecar)."""
    pod = consumer_pod({**ANNOTATIONS, **ISTIO_ANNOTATIONS})
    pod["metadata"]["labels"].update(
        {"security.istio.io/tlsMode": "istio", "service.istio.io/canonical-name": "orders-worker"}
    )
    proxy = copy.deepcopy(ISTIO_PROXY)
    if native:
        proxy["restartPolicy"] = "Always"
        pod["spec"]["initContainers"] = [copy.deepcopy(ISTIO_INIT), proxy]
    else:
        pod["spec"]["initContainers"] = [copy.deepcopy(ISTIO_INIT)]
        pod["spec"]["containers"].append(proxy)
    pod["spec"]["volumes"] = [
        {"name": "istio-envoy", "emptyDir": {"medium": "Memory"}},
        {"name": "istio-data", "emptyDir": {}},
    ]
    return pod


def declared_ports(pod: dict[str, Any]) -> list[int]:
    spec = pod["spec"]
    return [
        p["containerPort"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]
        for p in c.get("ports", [])
    ]


@pytest.mark.parametrize("native", [False, True], ids=["classic", "native-istio-proxy"])
def test_injection_beside_istio_validates_and_shares_no_port(native: bool) -> None:
    pod = istio_pod(native)
    patched = apply(pod, plan(pod, TEMPLATE))  # apply() validates the pod against the schemas
    ports = declared_ports(patched)
    assert len(ports) == len(set(ports)), f"a port declared twice: {sorted(ports)}"
    sidecar = sidecar_of(patched)
    ours = {p["containerPort"] for p in sidecar["ports"]}
    assert ours == {14000, 14001, 14090}
    envoy = {15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090}
    assert not ours & envoy
    config = SidecarConfig.from_options(
        resolve(SIDECAR_OPTIONS, argparse.Namespace(), environ=env_of(sidecar))
    )
    bound = {config.admin_addr[1], config.publish_addr[1], config.metrics_addr[1]}
    assert bound == ours and not bound & envoy
    # Istio's init container still runs first: the sidecar is appended after it.
    names = [c["name"] for c in patched["spec"]["initContainers"]]
    assert names[0] == "istio-init" and names[-1] == "ktp-sidecar"
    # The app's (here Istio's merged) scrape annotations are kept; the PodMonitor finds ours.
    assert patched["metadata"]["annotations"]["prometheus.io/port"] == "15020"


def test_ports_move_per_pod_and_scrape_annotations_follow() -> None:
    pod = with_annotations(admin_port="24000", publish_port="24001", metrics_port="24090")
    patched = apply(pod, plan(pod, TEMPLATE))
    sidecar = sidecar_of(patched)
    env = env_of(sidecar)
    assert env["KTP_ADMIN_ADDR"] == "0.0.0.0:24000"
    assert env["KTP_PUBLISH_ADDR"] == "127.0.0.1:24001"
    assert env["KTP_METRICS_ADDR"] == "0.0.0.0:24090"
    assert {p["name"]: p["containerPort"] for p in sidecar["ports"]} == {
        "ktp-admin": 24000,
        "ktp-publish": 24001,
        "ktp-metrics": 24090,
    }
    assert sidecar["readinessProbe"]["httpGet"]["port"] == 24000
    assert sidecar["livenessProbe"]["httpGet"]["port"] == 24000
    assert patched["metadata"]["annotations"]["prometheus.io/port"] == "24090"


def test_ports_move_per_install() -> None:
    template = SidecarTemplate(
        image=IMAGE,
        bootstrap_servers="k:9092",
        ports=SidecarPorts(admin=4000, publish=4001, metrics=4090),
    )
    patched = apply(consumer_pod(), plan(consumer_pod(), template))
    assert {p["containerPort"] for p in sidecar_of(patched)["ports"]} == {4000, 4001, 4090}
    assert patched["metadata"]["annotations"]["prometheus.io/port"] == "4090"


@pytest.mark.parametrize(
    ("container", "port", "role"),
    [
        ({"name": "metrics-exporter", "image": "x", "ports": [{"containerPort": 14090}]}, 14090, "metrics"),
        ({"name": "debug", "image": "x", "ports": [{"containerPort": 14000, "name": "dbg"}]}, 14000, "admin"),
    ],
)  # fmt: skip
def test_a_pod_whose_container_holds_a_sidecar_port_is_refused_by_name(
    container: dict[str, Any], port: int, role: str
) -> None:
    pod = consumer_pod()
    pod["spec"]["containers"].append(container)
    message = refusal(pod)
    assert f"container {container['name']} declares port {port}" in message
    assert f"the sidecar's {role} port" in message
    assert f"kafka-tenant-proxy.io/{role}-port" in message  # and says how to move ours


def test_undeclared_envoy_ports_are_known_by_the_proxy_container_name() -> None:
    pod = istio_pod()
    pod["metadata"]["annotations"]["kafka-tenant-proxy.io/admin-port"] = "15000"
    message = refusal(pod)
    assert "container istio-proxy listens on port 15000, the sidecar's admin port" in message


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (
            {"admin_port": "14001"},
            "kafka-tenant-proxy.io/admin-port and kafka-tenant-proxy.io/publish-port are both",
        ),
        ({"metrics_port": "0"}, "kafka-tenant-proxy.io/metrics-port: '0' is not a port"),
        ({"publish_port": "http"}, "kafka-tenant-proxy.io/publish-port"),
        ({"admin_port": "8080"}, "kafka-tenant-proxy.io/app-port: 8080 is also the sidecar's admin"),
        ({"instance_id": "orders-worker-0"}, "kafka-tenant-proxy.io/instance-id"),
        ({"publish_addr": "0.0.0.0:9"}, "kafka-tenant-proxy.io/publish-addr is not known"),
        ({"routes_token_file": "/etc/t"}, "kafka-tenant-proxy.io/routes-token-file is not known"),
    ],
)
def test_bad_port_and_identity_annotations_are_refused(extra: dict[str, str], named: str) -> None:
    assert named in refusal(with_annotations(**extra))


def test_instance_id_none_turns_static_membership_off() -> None:
    pod = with_annotations(instance_id="none")
    env = env_of(sidecar_of(apply(pod, plan(pod, TEMPLATE))))
    environ = {**env, "POD_NAME": "p-1"}
    config = SidecarConfig.from_options(
        resolve(SIDECAR_OPTIONS, argparse.Namespace(), environ=environ), environ
    )
    assert config.instance_id is None


def test_member_id_is_the_pod_name_from_the_downward_api() -> None:
    """The kubelet resolves the fieldRef to the pod's name; the sidecar then takes it as its
    static member id, so each replica of a Deployment gets its own."""
    patched = apply(consumer_pod(), plan(consumer_pod(), TEMPLATE))
    sidecar = sidecar_of(patched)
    ids = set()
    for pod_name in ("orders-worker-7d9f8-abcde", "orders-worker-7d9f8-fghij"):
        environ = {**env_of(sidecar), "POD_NAME": pod_name, "POD_NAMESPACE": "shop"}
        config = SidecarConfig.from_options(
            resolve(SIDECAR_OPTIONS, argparse.Namespace(), environ=environ), environ
        )
        ids.add(config.instance_id)
    assert ids == {"orders-worker-7d9f8-abcde", "orders-worker-7d9f8-fghij"}


def test_host_network_pods_are_refused() -> None:
    message = refusal(consumer_pod(hostNetwork=True))
    assert "hostNetwork" in message
    assert isinstance(plan(consumer_pod(hostNetwork=False), TEMPLATE), Inject)


def test_a_volume_named_like_ours_is_refused_not_duplicated() -> None:
    template = SidecarTemplate(
        image=IMAGE,
        bootstrap_servers="k:9093",
        security_protocol="SASL_SSL",
        sasl_username="u",
        sasl_password_secret=SecretKeyRef("kafka-user", "password"),
    )
    pod = consumer_pod(volumes=[{"name": "ktp-kafka-sasl", "emptyDir": {}}])
    assert "already has a volume named ktp-kafka-sasl" in refusal(pod, template)
    # Without the SASL secret the sidecar adds no such volume, so the pod is fine.
    assert isinstance(plan(pod, TEMPLATE), Inject)


def test_image_pull_secrets_are_added_once() -> None:
    template = SidecarTemplate(
        image=IMAGE, bootstrap_servers="k:9092", image_pull_secrets=("regcred", "mirror")
    )
    patched = apply(consumer_pod(), plan(consumer_pod(), template))
    assert patched["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    pod = consumer_pod(imagePullSecrets=[{"name": "mirror"}, {"name": "app-registry"}])
    patched = apply(pod, plan(pod, template))
    assert patched["spec"]["imagePullSecrets"] == [
        {"name": "mirror"},
        {"name": "app-registry"},
        {"name": "regcred"},
    ]
    assert "imagePullSecrets" not in apply(consumer_pod(), plan(consumer_pod(), TEMPLATE))["spec"]


def test_routes_token_secret_is_mounted_as_the_sidecars_token_file() -> None:
    template = SidecarTemplate(
        image=IMAGE,
        bootstrap_servers="k:9092",
        routes="http://ktp-routes.kafka-tenant-proxy.svc:8080",
        routes_token_secret=SecretKeyRef("ktp-routes-read", "token"),
    )
    patched = apply(consumer_pod(), plan(consumer_pod(), template))
    sidecar = sidecar_of(patched)
    path = env_of(sidecar)["KTP_ROUTES_TOKEN_FILE"]
    (mount,) = [m for m in sidecar["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in patched["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "ktp-routes-read"
    assert volume["secret"]["items"] == [{"key": "token", "path": path.rsplit("/", 1)[1]}]


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_readiness_path_is_the_operators_choice(path: str) -> None:
    template = SidecarTemplate(image=IMAGE, bootstrap_servers="k:9092", readiness_path=path)
    sidecar = sidecar_of(apply(consumer_pod(), plan(consumer_pod(), template)))
    assert sidecar["readinessProbe"]["httpGet"]["path"] == path
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_bad_template_ports_are_named() -> None:
    from proxy.errors import ConfigError

    with pytest.raises(ConfigError, match="--sidecar-admin-port and --sidecar-metrics-port are both 14000"):
        SidecarTemplate(
            image=IMAGE, bootstrap_servers="k", ports=SidecarPorts(admin=14000, metrics=14000)
        )
    with pytest.raises(ConfigError, match="--readiness-path"):
        SidecarTemplate(image=IMAGE, bootstrap_servers="k", readiness_path="/metrics")
    assert isinstance(plan(consumer_pod(), TEMPLATE), Inject)


def test_refusals_never_look_like_injections() -> None:
    outcome = plan(consumer_pod(hostNetwork=True), TEMPLATE)
    assert isinstance(outcome, Refuse) and outcome.message.startswith(
        "kafka-tenant-proxy sidecar not injected"
    )

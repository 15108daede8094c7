"""The Helm chart, rendered and linted by the real Helm engine (helm-python-sdk), for the default
values and every scenario in charts/kafka-tenant-proxy/ci/, each manifest validated against the
Kubernetes 1.29 and latest schemas."""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from helm_python.chart import Chart, lint
from helm_python.errors import HelmError

from proxy.cli import COMMANDS
from proxy.config import resolve
from proxy.injector.config import INJECTOR_OPTIONS, InjectorConfig
from proxy.injector.metrics import InjectorMetrics
from proxy.injector.patch import Inject, plan
from proxy.metrics import Metrics
from proxy.routeservice.metrics import RouteServiceMetrics
from tests.k8s import kube
from tests.k8s.pods import TEMPLATE, consumer_pod

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kafka-tenant-proxy"
RELEASE, NAMESPACE = "ktp", "kafka-tenant-proxy"
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    **{
        path.stem: yaml.safe_load(path.read_text())
        for path in sorted((CHART / "ci").glob("*.yaml"))
    },
}


@pytest.fixture(scope="module")
def chart() -> Chart:
    return Chart.load(CHART)


def render(chart: Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    rendered = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


def one(docs: list[dict[str, Any]], kind: str, name_part: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name_part in d["metadata"]["name"]]
    assert len(found) == 1, f"{kind} *{name_part}*: {[d['metadata']['name'] for d in found]}"
    return found[0]


def env_dict(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


# --- every scenario -------------------------------------------------------------------------


def test_there_are_scenarios() -> None:
    assert len(SCENARIOS) >= 5, SCENARIOS.keys()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_renders_valid_kubernetes_manifests(chart: Chart, scenario: str) -> None:
    docs = render(chart, SCENARIOS[scenario])
    assert docs
    seen = set()
    for doc in docs:
        kube.validate(doc)
        name = doc["metadata"]["name"]
        assert len(name) <= 63, f"{doc['kind']} name {name!r} is longer than 63 characters"
        assert (doc["kind"], name) not in seen, f"two {doc['kind']} named {name}"
        seen.add((doc["kind"], name))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_is_clean(scenario: str) -> None:
    report = lint(
        CHART, SCENARIOS[scenario], strict=True, namespace=NAMESPACE, kube_version="v1.29.0"
    )
    assert report["errors"] == []
    # Severity 2 is a warning, 3 an error; only "icon is recommended" (1, info) may remain.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_restrictive_security_everywhere(chart: Chart, scenario: str) -> None:
    for doc in render(chart, SCENARIOS[scenario]):
        spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc.get("spec")
        if doc["kind"] not in ("Deployment", "Pod"):
            continue
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert (
                "limits" in container["resources"] and "memory" in container["resources"]["limits"]
            )


@pytest.mark.parametrize(
    "scenario",
    [s for s, v in sorted(SCENARIOS.items()) if v.get("injector", {}).get("enabled", True)],
)
def test_injector_env_is_a_valid_injector_config(
    chart: Chart, scenario: str, tmp_path: Path
) -> None:
    """The chart configures the injector only through KTP_* variables; the real option
    resolution must accept them and give the sidecar template the values asked for."""
    values = SCENARIOS[scenario]
    docs = render(chart, values)
    container = one(docs, "Deployment", "injector")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["injector", "serve"]
    env = env_dict(container)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {
        str(Path(env["KTP_TLS_CERTFILE"]).parent),
        str(Path(env["KTP_TLS_KEYFILE"]).parent),
    } <= mounts
    for name in ("KTP_TLS_CERTFILE", "KTP_TLS_KEYFILE"):
        (tmp_path / Path(env[name]).name).write_text("x")
        env[name] = str(tmp_path / Path(env[name]).name)
    config = InjectorConfig.from_options(
        resolve(INJECTOR_OPTIONS, argparse.Namespace(), environ=env)
    )
    kafka = {"securityProtocol": "PLAINTEXT", **values.get("kafka", {})}
    template = config.template
    assert template.bootstrap_servers == kafka.get("bootstrapServers", "kafka.kafka.svc:9092")
    assert template.security_protocol == kafka["securityProtocol"]
    assert template.native_sidecar == values.get("sidecar", {}).get("nativeSidecar", True)
    assert template.probes == values.get("sidecar", {}).get("probes", "http")
    assert template.app_max_concurrency == values.get("sidecar", {}).get("appMaxConcurrency")
    secret = kafka.get("sasl", {}).get("passwordSecret")
    assert (template.sasl_password_secret is None) == (secret is None)
    assert config.listen == ("0.0.0.0", 8443)
    sidecar = values.get("sidecar", {})
    ports = {"admin": 14000, "publish": 14001, "metrics": 14090, **sidecar.get("ports", {})}
    assert dict(template.ports.items()) == ports
    assert template.readiness_path == sidecar.get("readinessPath", "/healthz")
    assert template.image_pull_secrets == tuple(sidecar.get("imagePullSecrets", []))
    token = sidecar.get("routesTokenSecret")
    if token:
        assert template.routes_token_secret is not None
        assert (template.routes_token_secret.name, template.routes_token_secret.key) == (
            token["name"],
            token.get("key", "token"),
        )
    else:
        assert template.routes_token_secret is None
    assert env["KTP_METRICS_ADDR"] == "0.0.0.0:14090"  # the injector's own, beside a mesh


# --- the injector's webhook -----------------------------------------------------------------


SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", NAMESPACE)


def namespace_labels(name: str, **labels: str) -> dict[str, str]:
    """A namespace's labels as the API server sets them (it adds kubernetes.io/metadata.name)."""
    return {"kubernetes.io/metadata.name": name, **labels}


def test_webhook_selects_labelled_namespaces_and_pod_creation(chart: Chart) -> None:
    webhook = one(render(chart, {}), "MutatingWebhookConfiguration")["webhooks"][0]
    assert webhook["namespaceSelector"] == {
        "matchLabels": {"kafka-tenant-proxy.io/injection": "enabled"},
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": list(SYSTEM_NAMESPACES),
            }
        ],
    }
    assert webhook["objectSelector"] == {
        "matchExpressions": [
            {"key": "kafka-tenant-proxy.io/inject", "operator": "NotIn", "values": ["false"]}
        ]
    }
    assert webhook["timeoutSeconds"] <= 5
    assert webhook["failurePolicy"] == "Fail" and webhook["sideEffects"] == "None"
    assert webhook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    service = webhook["clientConfig"]["service"]
    assert service == {
        "name": "ktp-kafka-tenant-proxy-injector",
        "namespace": NAMESPACE,
        "path": "/inject",
        "port": 443,
    }


NAMESPACE_SELECTORS = {
    "default": None,
    "every namespace": "{}",
    "by team": "matchLabels:\n  team: shop\n",
    "own expressions": "matchExpressions:\n  - key: env\n    operator: In\n    values: [dev, ci]\n",
}


@pytest.mark.parametrize("selector", sorted(NAMESPACE_SELECTORS))
def test_system_and_own_namespaces_are_never_matched(chart: Chart, selector: str) -> None:
    """Whatever namespaceSelector is given, the control plane's namespaces and the injector's
    own never wait on the webhook, even when they carry every label the selector asks for."""
    raw = NAMESPACE_SELECTORS[selector]
    values = {} if raw is None else {"injector": {"webhook": {"namespaceSelector": raw}}}
    rendered = one(render(chart, values), "MutatingWebhookConfiguration")["webhooks"][0]
    chosen = rendered["namespaceSelector"]
    all_labels = {"kafka-tenant-proxy.io/injection": "enabled", "team": "shop", "env": "dev"}
    for name in SYSTEM_NAMESPACES:
        assert not kube.selector_matches(chosen, namespace_labels(name, **all_labels)), name
    assert kube.selector_matches(chosen, namespace_labels("shop", **all_labels))


def test_namespace_selector_override_replaces_the_default(chart: Chart) -> None:
    values = {"injector": {"webhook": {"namespaceSelector": NAMESPACE_SELECTORS["by team"]}}}
    chosen = one(render(chart, values), "MutatingWebhookConfiguration")["webhooks"][0][
        "namespaceSelector"
    ]
    # Not merged with the default's injection label: a team namespace without it is matched.
    assert chosen["matchLabels"] == {"team": "shop"}
    assert kube.selector_matches(chosen, namespace_labels("shop", team="shop"))
    assert not kube.selector_matches(
        chosen, namespace_labels("other", **{"kafka-tenant-proxy.io/injection": "enabled"})
    )
    # "{}" means every namespace but the excluded ones.
    every = {"injector": {"webhook": {"namespaceSelector": "{}"}}}
    chosen = one(render(chart, every), "MutatingWebhookConfiguration")["webhooks"][0][
        "namespaceSelector"
    ]
    assert kube.selector_matches(chosen, namespace_labels("anything"))


def test_a_selector_given_as_a_map_is_refused_not_merged(chart: Chart) -> None:
    with pytest.raises(HelmError, match="namespaceSelector"):
        render(chart, {"injector": {"webhook": {"namespaceSelector": {}}}})
    with pytest.raises(HelmError, match="not a YAML map"):
        render(chart, {"injector": {"webhook": {"objectSelector": "- a list"}}})


def test_object_selector_skips_opted_out_pods_and_can_require_the_label(chart: Chart) -> None:
    default = one(render(chart, {}), "MutatingWebhookConfiguration")["webhooks"][0]
    selector = default["objectSelector"]
    assert kube.selector_matches(selector, {"app": "web"})
    assert not kube.selector_matches(selector, {"kafka-tenant-proxy.io/inject": "false"})
    opt_in = {
        "injector": {
            "webhook": {"objectSelector": 'matchLabels: {kafka-tenant-proxy.io/inject: "true"}'}
        }
    }
    selector = one(render(chart, opt_in), "MutatingWebhookConfiguration")["webhooks"][0][
        "objectSelector"
    ]
    assert not kube.selector_matches(selector, {"app": "web"})
    labelled = {"app": "orders-worker", "kafka-tenant-proxy.io/inject": "true"}
    assert kube.selector_matches(selector, labelled)
    # The injector takes the label as the opt-in, so such a pod needs no inject annotation.
    annotations = {
        k: v for k, v in consumer_pod()["metadata"]["annotations"].items() if not k.endswith("/inject")
    }
    pod = consumer_pod(annotations)
    pod["metadata"]["labels"] = labelled
    assert isinstance(plan(pod, TEMPLATE), Inject)


@pytest.mark.parametrize("policy", ["Fail", "Ignore"])
def test_failure_policy_is_a_value(chart: Chart, policy: str) -> None:
    docs = render(chart, {"injector": {"webhook": {"failurePolicy": policy}}})
    assert one(docs, "MutatingWebhookConfiguration")["webhooks"][0]["failurePolicy"] == policy


@pytest.mark.parametrize(
    "scenario", [s for s, v in sorted(SCENARIOS.items()) if "tls" not in v.get("injector", {})
                 or v["injector"]["tls"].get("mode") != "helm"]
)
def test_two_offline_renders_are_identical(chart: Chart, scenario: str) -> None:
    """What a GitOps tool sees: no render-time randomness in certificates, so no permanent diff
    and no sync that swaps the caBundle under a running injector. The one generated value left
    is the route service's write token when none is supplied (kept by lookup on upgrade, and
    helm.sh/resource-policy: keep); with routes.auth.existingSecret, renders are identical."""
    values = SCENARIOS[scenario]
    first, second = render(chart, values), render(chart, values)
    if scenario == "default":
        assert any(d["kind"] == "Certificate" for d in first)
    if values.get("routes", {}).get("auth", {}).get("existingSecret"):
        assert first == second
        return

    def without_token(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for doc in docs:
            component = doc["metadata"]["labels"].get("app.kubernetes.io/component")
            if doc["kind"] == "Secret" and component == "routes":
                doc = {**doc, "data": {**doc["data"], "token": "generated"}}
            out.append(doc)
        return out

    assert without_token(first) == without_token(second)
    assert first != second, "the generated write token is expected to differ (see docstring)"


def test_cert_manager_mode_is_the_default(chart: Chart) -> None:
    docs = render(chart, {})
    webhook = one(docs, "MutatingWebhookConfiguration")
    assert "caBundle" not in webhook["webhooks"][0]["clientConfig"]
    volumes = one(docs, "Deployment", "injector")["spec"]["template"]["spec"]["volumes"]
    secret_name = volumes[0]["secret"]["secretName"]
    serving = next(
        d for d in docs if d["kind"] == "Certificate" and d["spec"]["secretName"] == secret_name
    )
    assert webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/{serving['metadata']['name']}"
    )
    assert f"ktp-kafka-tenant-proxy-injector.{NAMESPACE}.svc" in serving["spec"]["dnsNames"]
    assert "server auth" in serving["spec"]["usages"]
    # A long-lived CA of our own signs it, so renewing the serving certificate keeps the caBundle.
    ca_issuer = one(docs, "Issuer", "injector-ca")
    assert serving["spec"]["issuerRef"] == {"kind": "Issuer", "name": ca_issuer["metadata"]["name"]}
    ca = one(docs, "Certificate", "injector-ca")
    assert ca["spec"]["isCA"] is True and ca_issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    assert ca["spec"]["issuerRef"]["name"] == one(docs, "Issuer", "selfsigned")["metadata"]["name"]
    assert not [d for d in docs if d["kind"] == "Secret" and "injector" in d["metadata"]["name"]]


def test_generated_certificate_is_signed_by_the_ca_bundle_for_the_service(chart: Chart) -> None:
    docs = render(chart, {"injector": {"tls": {"mode": "helm"}}})
    secret = one(docs, "Secret", "injector-tls")
    assert secret["type"] == "kubernetes.io/tls"
    ca_bundle = one(docs, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["caBundle"]
    assert ca_bundle == secret["data"]["ca.crt"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(ca_bundle))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    cert.verify_directly_issued_by(ca)  # raises unless the CA signed it
    names = cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)
    assert f"ktp-kafka-tenant-proxy-injector.{NAMESPACE}.svc" in names
    assert cert.not_valid_after_utc > datetime.datetime.now(
        datetime.UTC
    ) + datetime.timedelta(days=3000)
    # The injector mounts exactly this Secret.
    volumes = one(docs, "Deployment", "injector")["spec"]["template"]["spec"]["volumes"]
    assert volumes[0]["secret"]["secretName"] == secret["metadata"]["name"]


def test_supplied_certificate(chart: Chart) -> None:
    docs = render(chart, SCENARIOS["existing-tls-values"])
    assert not [d for d in docs if d["kind"] == "Secret"], (
        "nothing generated when everything is supplied"
    )
    webhook = one(docs, "MutatingWebhookConfiguration")["webhooks"][0]
    assert (
        webhook["clientConfig"]["caBundle"]
        == SCENARIOS["existing-tls-values"]["injector"]["tls"]["caBundle"]
    )
    volumes = one(docs, "Deployment", "injector")["spec"]["template"]["spec"]["volumes"]
    assert volumes[0]["secret"]["secretName"] == "ktp-injector-tls"


def test_cert_manager_with_the_platforms_issuer(chart: Chart) -> None:
    docs = render(chart, SCENARIOS["cert-manager-values"])
    webhook_config = one(docs, "MutatingWebhookConfiguration")
    assert "caBundle" not in webhook_config["webhooks"][0]["clientConfig"]
    serving = one(docs, "Certificate")
    assert serving["spec"]["issuerRef"] == {"kind": "ClusterIssuer", "name": "corp-ca"}
    assert not [d for d in docs if d["kind"] == "Issuer"]
    assert webhook_config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/{serving['metadata']['name']}"
    )


# --- the route service ----------------------------------------------------------------------


def test_route_service_command_and_wiring(chart: Chart) -> None:
    docs = render(chart, {})
    deployment = one(docs, "Deployment", "routes")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == [
        "routes", "serve",
        "--bootstrap-servers", "kafka.kafka.svc:9092",
        "--listen", "0.0.0.0:8080",
        "--routes-topic", "_ktp_routes",
        "--route-lead", "1",
        "--token-file", "/var/run/secrets/kafka-tenant-proxy/routes/token",
    ]  # fmt: skip
    token_volume = next(v for v in pod["volumes"] if v["name"] == "token")
    token_secret = one(docs, "Secret", "routes-token")
    assert token_volume["secret"]["secretName"] == token_secret["metadata"]["name"]
    assert len(base64.b64decode(token_secret["data"]["token"])) == 48
    service = one(docs, "Service", "routes")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    pdb = one(docs, "PodDisruptionBudget", "routes")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_route_service_args_are_accepted_by_ktp(chart: Chart) -> None:
    """Parsed by `ktp routes serve` itself when this checkout has it; otherwise checked against
    the flags DESIGN.md's contract gives it."""
    container = one(render(chart, SCENARIOS["sasl-ssl-values"]), "Deployment", "routes")["spec"][
        "template"
    ]["spec"]["containers"][0]
    args = container["args"]
    if ("proxy.routeservice.command", "routes") in COMMANDS:
        from proxy.cli import build_parser

        parsed = build_parser().parse_args(args)
        assert parsed.bootstrap_servers == "b-1.kafka.internal:9096,b-2.kafka.internal:9096"
    else:
        flags = [a for a in args if a.startswith("--")]
        assert flags == ["--bootstrap-servers", "--listen", "--routes-topic", "--token-file"]
    env = env_dict(container)
    assert (
        env["KTP_SECURITY_PROTOCOL"] == "SASL_SSL" and env["KTP_SASL_MECHANISM"] == "SCRAM-SHA-512"
    )
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for name in ("KTP_SASL_PASSWORD_FILE", "KTP_SSL_CAFILE"):
        assert str(Path(env[name]).parent) in mounts


def test_route_service_auth_extra_args_and_env(chart: Chart) -> None:
    """Read access for sidecars on http:// routes: a read-token file, or --public-reads; the
    args, with extraArgs, are parsed by `ktp routes serve` itself."""
    from proxy.cli import build_parser

    docs = render(chart, SCENARIOS["template-only-values"])
    pod = one(docs, "Deployment", "routes")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    parsed = build_parser().parse_args(container["args"])
    assert parsed.read_token_file == "/var/run/secrets/kafka-tenant-proxy/routes-read/token"
    assert parsed.max_tenants == "5000"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "read-token")
    assert parsed.read_token_file.startswith(mount["mountPath"] + "/")
    volume = next(v for v in pod["volumes"] if v["name"] == "read-token")
    assert volume["secret"]["secretName"] == "ktp-routes-read"
    assert env_dict(container)["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://otel")
    public = render(chart, {"routes": {"auth": {"publicReads": True}}})
    args = one(public, "Deployment", "routes")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert build_parser().parse_args(args).public_reads == "true"
    assert "--read-token-file" not in args


def test_route_lead_is_a_value_the_route_service_parses(chart: Chart) -> None:
    """`routes.routeLead` reaches `ktp routes serve --route-lead` as a value it accepts."""
    from proxy.cli import build_parser
    from proxy.routeservice.server import parse_route_lead

    for lead, seconds in ((None, 1.0), (0, 0.0), (2.5, 2.5)):
        values = {} if lead is None else {"routes": {"routeLead": lead}}
        args = one(render(chart, values), "Deployment", "routes")["spec"]["template"]["spec"]["containers"][0]["args"]
        assert parse_route_lead(build_parser().parse_args(args).route_lead) == seconds
    with pytest.raises(HelmError, match="routeLead"):
        render(chart, {"routes": {"routeLead": 601}})


def test_http_routes_need_a_token_or_public_reads(chart: Chart) -> None:
    http = {"sidecar": {"routes": "http://ktp-routes.ktp.svc:8080"}}
    with pytest.raises(HelmError, match="sidecar.routesTokenSecret.name"):
        render(chart, http)
    render(chart, {**http, "routes": {"auth": {"publicReads": True}}})


def test_topology_spread_gets_the_components_pods_as_selector(chart: Chart) -> None:
    docs = render(chart, SCENARIOS["platform-values"])
    deployment = one(docs, "Deployment", "injector")
    (constraint,) = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert constraint["topologyKey"] == "topology.kubernetes.io/zone"
    assert constraint["labelSelector"] == {
        "matchLabels": deployment["spec"]["selector"]["matchLabels"]
    }
    assert "topologySpreadConstraints" not in one(render(chart, {}), "Deployment", "injector")[
        "spec"
    ]["template"]["spec"]


def test_network_policies_open_only_the_service_ports(chart: Chart) -> None:
    docs = render(chart, SCENARIOS["platform-values"])
    assert not [d for d in render(chart, {}) if d["kind"] == "NetworkPolicy"]
    for component in ("routes", "injector"):
        policy = one(docs, "NetworkPolicy", component)
        deployment = one(docs, "Deployment", component)
        assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
        named = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
        opened = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert opened <= named, f"{component}: {opened - named} is no port of the container"
    metrics_rule = one(docs, "NetworkPolicy", "injector")["spec"]["ingress"][1]
    assert metrics_rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }


def test_helm_test_hook_calls_the_route_service(chart: Chart) -> None:
    docs = render(chart, {})
    pod = one(docs, "Pod", "test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    service = one(docs, "Service", "routes")
    assert (
        env_dict(container)["ROUTES_URL"]
        == f"http://{service['metadata']['name']}.{NAMESPACE}.svc:8080"
    )
    script = container["command"][2]
    compile(script, "helm-test", "exec")  # it is Python that runs
    for call in ('call("PUT"', 'call("GET"', 'call("DELETE"'):
        assert call in script


def test_rbac_lets_only_the_named_subjects_read_the_token(chart: Chart) -> None:
    docs = render(chart, SCENARIOS["existing-tls-values"])
    role = one(docs, "Role")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["ktp-routes-token"],
            "verbs": ["get"],
        }
    ]
    binding = one(docs, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pipeline", "namespace": "ci"}
    ]
    assert not [d for d in render(chart, {}) if d["kind"] == "RoleBinding"]


# --- monitoring -----------------------------------------------------------------------------


def exposed_metric_names() -> set[str]:
    names = set()
    for registry in (
        Metrics().registry,
        InjectorMetrics().registry,
        RouteServiceMetrics(lambda: 0).registry,
    ):
        for family in registry.collect():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(
                family.type, [""]
            )
            names |= {family.name + s for s in suffixes}
    return names


def test_monitors_and_dashboard(chart: Chart) -> None:
    docs = render(chart, SCENARIOS["monitoring-values"])
    for component in ("injector", "routes"):
        service_monitor = one(docs, "ServiceMonitor", component)
        service = one(docs, "Service", component)
        assert service_monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
        assert service_monitor["spec"]["endpoints"][0]["port"] in {
            p["name"] for p in service["spec"]["ports"]
        }
    routes_pod = one(docs, "Deployment", "routes")["spec"]["template"]
    assert routes_pod["metadata"]["annotations"]["prometheus.io/port"] == str(
        routes_pod["spec"]["containers"][0]["ports"][0]["containerPort"]
    )
    pod_monitor = one(docs, "PodMonitor")
    # The PodMonitor finds what the injector adds: its label and its named metrics port.
    patched = consumer_pod()
    outcome = plan(patched, TEMPLATE)
    assert isinstance(outcome, Inject)
    label_op = next(op for op in outcome.patch if "/metadata/labels" in op["path"])
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {
        "kafka-tenant-proxy.io/sidecar": label_op["value"]
    }
    sidecar_ports = {p["name"] for p in outcome.patch[0]["value"][0]["ports"]}
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] in sidecar_ports
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    dashboard = one(docs, "ConfigMap", "dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["kafka-tenant-proxy.json"])["uid"] == "kafka-tenant-proxy"


def test_dashboard_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads((CHART / "dashboards" / "kafka-tenant-proxy.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for expr in exprs for m in re.findall(r"\bktp_[a-z_]+", expr)}
    assert used - exposed_metric_names() == set()
    contract = {
        "ktp_records_consumed_total", "ktp_records_delivered_total", "ktp_records_skipped_total",
        "ktp_delivery_attempts_total", "ktp_delivery_duration_seconds_bucket", "ktp_dead_letters_total",
        "ktp_consumer_lag", "ktp_route_tenants",
    }  # fmt: skip
    assert contract <= used, f"DESIGN.md's metrics missing from the dashboard: {contract - used}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    # Stalled partitions and the publish endpoint have panels of their own.
    assert {
        "ktp_partition_stalled", "ktp_publish_requests_total", "ktp_publish_duration_seconds_bucket",
    } <= used  # fmt: skip
    # No two panels overlap on the grid.
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"panel {panel['id']} overlaps another"
        cells |= mine


# --- values: documented, in the schema, validated -------------------------------------------


def leaf_paths(values: Any, prefix: str = "") -> set[str]:
    if isinstance(values, dict) and values:
        return {p for key, value in values.items() for p in leaf_paths(value, f"{prefix}{key}.")}
    return {prefix.rstrip(".")}


def test_every_value_is_documented() -> None:
    text = (CHART / "values.yaml").read_text()
    documented = set(re.findall(r"^\s*## @param (\S+) \S", text, flags=re.MULTILINE))
    values = yaml.safe_load(text)
    for path in leaf_paths(values):
        parts = path.split(".")
        assert any(".".join(parts[:i]) in documented for i in range(1, len(parts) + 1)), (
            f"{path} has no ## @param"
        )
    for name in documented:
        node: Any = values
        for part in name.split("."):
            assert isinstance(node, dict) and part in node, f"## @param {name} documents nothing"
            node = node[part]


def test_schema_knows_every_value(chart: Chart) -> None:
    schema = chart.schema
    assert schema is not None
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in leaf_paths(values):
        node = schema
        for part in path.split("."):
            if "properties" not in node:
                break  # a free-form map (resources, annotations): the schema stops here
            assert part in node["properties"], f"{path} is not in values.schema.json"
            node = node["properties"][part]
    chart.validate_schema(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"injector": {"webhook": {"failurePolicy": "Sometimes"}}}, "failurePolicy"),
        ({"routes": {"replicas": 3}}, "replicas"),
        ({"sidecar": {"probes": "tcp"}}, "probes"),
        ({"kafka": {"securityProtocol": "SASL"}}, "securityProtocol"),
        ({"sidecar": {"resources": {"limits": {"memory": "lots"}}}}, "memory"),
    ],
)
def test_schema_refuses_bad_values(chart: Chart, values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmError, match=message):
        render(chart, values)


def test_validate_values_fails_with_every_message_at_once(chart: Chart) -> None:
    bad = {
        "kafka": {
            "bootstrapServers": "",
            "securityProtocol": "SASL_PLAINTEXT",
            "tls": {"clientCertSecret": "c"},
        },
        "injector": {
            "tls": {"mode": "secret", "existingSecret": "x"},
            "resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "512Mi"}},
        },
        "routes": {
            "replicaCount": 2,
            "pdb": {"minAvailable": 2},
            "auth": {"publicReads": True, "readTokenSecret": {"name": "r"}},
        },
        "sidecar": {
            "resources": {"requests": {"cpu": "1.5"}, "limits": {"cpu": "1200m"}},
            "ports": {"admin": 14000, "publish": 14000, "metrics": 14090},
            "routes": "http://routes.example:8080",
        },
    }
    with pytest.raises(HelmError) as caught:
        render(chart, bad)
    message = str(caught.value)
    for expected in (
        "kafka.bootstrapServers",
        "kafka.sasl.username",
        "kafka.sasl.passwordSecret.name",
        "kafka.tls.clientCertSecret",
        "injector.tls.caBundle",
        "routes.pdb.minAvailable",
        "injector.resources.requests.memory: 1Gi is above injector.resources.limits.memory 512Mi",
        "sidecar.resources.requests.cpu: 1.5 is above sidecar.resources.limits.cpu 1200m",
        "sidecar.ports",
        "routes.auth.readTokenSecret.name",
    ):
        assert expected in message, f"{expected} missing from: {message}"


def test_long_names_are_truncated(chart: Chart) -> None:
    docs = render(chart, SCENARIOS["template-only-values"])
    names = [d["metadata"]["name"] for d in docs]
    assert all(len(n) <= 63 and not n.endswith("-") for n in names), names
    assert any(n.endswith("-routes") for n in names)


# --- the sidecar without a webhook ----------------------------------------------------------

CONSUMER_DEPLOYMENT = """\
{{- $ktp := index .Subcharts "kafka-tenant-proxy" }}
{{- $options := dict "service" "orders-worker" "group" "orders-worker" "topics" "orders,payments"
      "app-port" 8080 "app-path" "/events" "sandbox" "pr-42" "max-attempts" 7 }}
{{- $native := (index .Values "kafka-tenant-proxy").sidecar.nativeSidecar }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: orders-worker-pr-42
spec:
  selector:
    matchLabels:
      app: orders-worker
  template:
    metadata:
      labels:
        app: orders-worker
        {{- include "kafka-tenant-proxy.sidecarPodLabels" . | nindent 8 }}
      annotations:
        {{- include "kafka-tenant-proxy.sidecarPodAnnotations" . | nindent 8 }}
    spec:
      {{- if $native }}
      initContainers:
        {{- include "kafka-tenant-proxy.sidecar" (dict "chart" $ktp "options" $options) | nindent 8 }}
      {{- end }}
      containers:
        {{- if not $native }}
        {{- include "kafka-tenant-proxy.sidecar" (dict "chart" $ktp "options" $options) | nindent 8 }}
        {{- end }}
        - name: app
          image: registry.example.com/orders-worker:1.4.2
      {{- with include "kafka-tenant-proxy.sidecarVolumes" (dict "chart" $ktp) }}
      volumes:
        {{- . | nindent 8 }}
      {{- end }}
"""


@pytest.fixture(scope="module")
def consumer_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A team's chart that depends on ours and includes the sidecar template."""
    root = tmp_path_factory.mktemp("consumer") / "orders-worker"
    (root / "templates").mkdir(parents=True)
    (root / "Chart.yaml").write_text(
        "apiVersion: v2\nname: orders-worker\nversion: 1.0.0\n"
        "dependencies:\n  - name: kafka-tenant-proxy\n    version: 0.1.0\n"
    )
    (root / "templates" / "deployment.yaml").write_text(CONSUMER_DEPLOYMENT)
    shutil.copytree(CHART, root / "charts" / "kafka-tenant-proxy")
    return root


@pytest.mark.parametrize(
    "scenario", ["default", "sasl-ssl-values", "existing-tls-values", "platform-values"]
)
def test_named_template_gives_the_container_the_injector_gives(
    consumer_chart: Path, scenario: str, tmp_path: Path
) -> None:
    values = {"kafka-tenant-proxy": {**SCENARIOS[scenario], "routes": {"enabled": False}}}
    with Chart.load(consumer_chart) as chart:
        docs = render(chart, values)
    deployment = next(d for d in docs if d["metadata"]["name"] == "orders-worker-pr-42")
    kube.validate(deployment)
    pod_spec = deployment["spec"]["template"]["spec"]
    from_template = next(
        c
        for c in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]
        if c["name"] == "ktp-sidecar"
    )

    # The same pod, annotated, through the injector configured by the same release.
    injector = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-injector")
    )
    env = env_dict(injector["spec"]["template"]["spec"]["containers"][0])
    for name in ("KTP_TLS_CERTFILE", "KTP_TLS_KEYFILE"):
        (tmp_path / name).write_text("x")
        env[name] = str(tmp_path / name)
    template = InjectorConfig.from_options(
        resolve(INJECTOR_OPTIONS, argparse.Namespace(), environ=env)
    ).template
    annotations = {
        "kafka-tenant-proxy.io/inject": "true",
        "kafka-tenant-proxy.io/service": "orders-worker",
        "kafka-tenant-proxy.io/group": "orders-worker",
        "kafka-tenant-proxy.io/topics": "orders,payments",
        "kafka-tenant-proxy.io/app-port": "8080",
        "kafka-tenant-proxy.io/app-path": "/events",
        "kafka-tenant-proxy.io/sandbox": "pr-42",
        "kafka-tenant-proxy.io/max-attempts": "7",
    }
    pod = consumer_pod(annotations)
    outcome = plan(pod, template)
    assert isinstance(outcome, Inject)
    from_injector = outcome.patch[0]["value"]
    from_injector = from_injector[0] if isinstance(from_injector, list) else from_injector

    # Env order differs (the template sorts options by name); the set of variables may not.
    assert env_dict(from_template) == env_dict(from_injector)
    assert {k: v for k, v in from_template.items() if k != "env"} == {
        k: v for k, v in from_injector.items() if k != "env"
    }
    injected_volumes = [
        op["value"] for op in outcome.patch if op["path"].startswith("/spec/volumes")
    ]
    flat = [
        v for value in injected_volumes for v in (value if isinstance(value, list) else [value])
    ]
    assert pod_spec.get("volumes", []) == flat
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["kafka-tenant-proxy.io/sidecar"] == "true"
    scrape_port = next(op for op in outcome.patch if op["path"].endswith("prometheus.io~1port"))
    assert (
        deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
        == scrape_port["value"]
    )


def test_named_template_refuses_what_the_injector_refuses(
    consumer_chart: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "orders-worker"
    shutil.copytree(consumer_chart, broken)
    deployment = broken / "templates" / "deployment.yaml"
    deployment.write_text(deployment.read_text().replace('"service" "orders-worker" ', ""))
    with (
        Chart.load(broken) as chart,
        pytest.raises(HelmError, match='option "service" is required'),
    ):
        render(chart, {"kafka-tenant-proxy": {"routes": {"enabled": False}}})


def test_pod_annotations_template_follows_a_moved_metrics_port(
    consumer_chart: Path, tmp_path: Path
) -> None:
    """A team that moves one pod's metrics port gives the same port to the annotations."""
    moved = tmp_path / "orders-worker"
    shutil.copytree(consumer_chart, moved)
    (moved / "templates" / "annotations.yaml").write_text(
        "{{- $ktp := index .Subcharts \"kafka-tenant-proxy\" }}\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: scrape\n  annotations:\n"
        "    {{- include \"kafka-tenant-proxy.sidecarPodAnnotations\" "
        "(dict \"chart\" $ktp \"metrics-port\" 9464) | nindent 4 }}\n"
    )
    with Chart.load(moved) as chart:
        docs = render(chart, {"kafka-tenant-proxy": {"routes": {"enabled": False}}})
    scrape = next(d for d in docs if d["metadata"]["name"] == "scrape")
    assert scrape["metadata"]["annotations"]["prometheus.io/port"] == "9464"
    default = next(d for d in docs if d["metadata"]["name"] == "orders-worker-pr-42")
    assert default["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "14090"

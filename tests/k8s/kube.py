"""Validation of Kubernetes objects without a cluster.

- Built-in kinds: ``kubernetes-validate``'s strict schemas (unknown fields are errors) for the
  oldest Kubernetes we support (1.29, the first with native sidecars on by default) and the
  newest the package ships.
- Prometheus Operator kinds (ServiceMonitor, PodMonitor): no package here ships their CRD
  schemas in a usable form (``cloudcoil-models-prometheus-operator`` has them, but installs a
  pytest plugin that breaks the rest of the suite), so :data:`MONITOR_SCHEMA` is a strict subset
  written from the operator's API reference: the fields our chart uses, unknown ones refused.
- cert-manager kinds (Issuer, Certificate): likewise a strict subset of cert-manager v1's CRDs
  (:data:`CERT_MANAGER_SCHEMA`), written from its API reference for the fields the chart uses.
- A few rules the API server enforces that no schema states (names unique, port names at most 15
  characters, ``restartPolicy`` only on init containers, mounts that name a volume).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import jsonschema
import kubernetes_validate

OLDEST_SUPPORTED = "1.29.0"
VERSIONS = (OLDEST_SUPPORTED, kubernetes_validate.latest_version())
_DURATION = {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": _STRING_MAP, "matchExpressions": {"type": "array"}},
}
_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string"},
        "scheme": {"enum": ["http", "https"]},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
        "honorLabels": {"type": "boolean"},
    },
    "required": ["port"],
}


def _monitor(endpoints_key: str) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"enum": ["ServiceMonitor", "PodMonitor"]},
            "metadata": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "namespace": {"type": "string"},
                    "labels": _STRING_MAP,
                    "annotations": _STRING_MAP,
                },
            },
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", endpoints_key],
                "properties": {
                    "selector": _SELECTOR,
                    "jobLabel": {"type": "string"},
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "any": {"type": "boolean"},
                            "matchNames": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    endpoints_key: {"type": "array", "minItems": 1, "items": _ENDPOINT},
                },
            },
        },
    }


MONITOR_SCHEMA = {
    "ServiceMonitor": _monitor("endpoints"),
    "PodMonitor": _monitor("podMetricsEndpoints"),
}
_METADATA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "namespace"],
    "properties": {
        "name": {"type": "string", "maxLength": 63},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}
_ISSUER_REF = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "kind": {"enum": ["Issuer", "ClusterIssuer"]},
        "group": {"type": "string"},
    },
}
_GO_DURATION = {"type": "string", "pattern": "^([0-9]+(\\.[0-9]+)?(h|m|s|ms))+$"}


def _cert_manager(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


CERT_MANAGER_SCHEMA = {
    "Issuer": _cert_manager(
        "Issuer",
        {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "maxProperties": 1,
            "properties": {
                "selfSigned": {"type": "object", "additionalProperties": False},
                "ca": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["secretName"],
                    "properties": {"secretName": {"type": "string", "minLength": 1}},
                },
            },
        },
    ),
    "Certificate": _cert_manager(
        "Certificate",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["secretName", "issuerRef"],
            "properties": {
                "secretName": {"type": "string", "minLength": 1},
                "isCA": {"type": "boolean"},
                "commonName": {"type": "string", "maxLength": 64},
                "dnsNames": {"type": "array", "items": {"type": "string"}},
                "duration": _GO_DURATION,
                "renewBefore": _GO_DURATION,
                "usages": {
                    "type": "array",
                    "items": {
                        "enum": [
                            "server auth", "client auth", "digital signature",
                            "key encipherment", "cert sign",
                        ]
                    },
                },  # fmt: skip
                "privateKey": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "size": {"type": "integer"},
                        "rotationPolicy": {"enum": ["Never", "Always"]},
                    },
                },
                "issuerRef": _ISSUER_REF,
            },
        },
    ),
}
_PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")


def validate(obj: dict[str, Any]) -> None:
    """Raise AssertionError (with the reason) unless ``obj`` is a valid object of its kind."""
    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if obj.get("apiVersion") == "monitoring.coreos.com/v1":
        try:
            jsonschema.validate(obj, MONITOR_SCHEMA[obj["kind"]])
        except jsonschema.ValidationError as exc:
            raise AssertionError(f"{name}: {exc.json_path}: {exc.message}") from None
        return
    if obj.get("apiVersion") == "cert-manager.io/v1":
        try:
            jsonschema.validate(obj, CERT_MANAGER_SCHEMA[obj["kind"]])
        except jsonschema.ValidationError as exc:
            raise AssertionError(f"{name}: {exc.json_path}: {exc.message}") from None
        return
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            raise AssertionError(
                f"{name} is invalid for Kubernetes {version}: {path}: {exc.message}"
            ) from None
    for key, value in obj.get("metadata", {}).get("labels", {}).items():
        assert _LABEL_VALUE.match(value), (
            f"{name}: label {key}={value!r} is not a valid label value"
        )
    pod_spec = _pod_spec(obj)
    if pod_spec is not None:
        check_pod_spec(pod_spec, name)


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] == "Pod":
        return obj["spec"]  # type: ignore[no-any-return]
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return None


def check_pod_spec(spec: dict[str, Any], name: str) -> None:
    """API server rules on pod specs that the JSON schemas do not carry."""
    init = spec.get("initContainers", [])
    regular = spec["containers"]
    names = Counter(c["name"] for c in [*init, *regular])
    assert all(n == 1 for n in names.values()), f"{name}: container names repeat: {names}"
    for container in regular:
        assert "restartPolicy" not in container, (
            f"{name}: restartPolicy on regular container {container['name']}"
        )
    for container in init:
        assert container.get("restartPolicy", "Always") == "Always", (
            f"{name}: bad init restartPolicy"
        )
    volumes = Counter(v["name"] for v in spec.get("volumes", []))
    assert all(n == 1 for n in volumes.values()), f"{name}: volume names repeat: {volumes}"
    ports: Counter[str] = Counter()
    for container in [*init, *regular]:
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, (
                f"{name}: {container['name']} mounts unknown volume {mount['name']}"
            )
        for port in container.get("ports", []):
            if "name" in port:
                assert _PORT_NAME.match(port["name"]), f"{name}: bad port name {port['name']!r}"
                ports[port["name"]] += 1
        env_names = Counter(e["name"] for e in container.get("env", []))
        assert all(n == 1 for n in env_names.values()), (
            f"{name}: env repeats in {container['name']}"
        )
    assert all(n == 1 for n in ports.values()), f"{name}: port names repeat: {ports}"


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector evaluated as the API server does (an empty one matches all)."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True

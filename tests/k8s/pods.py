"""Pods, templates and the patch we expect for them, written out by hand (not computed by the
code under test), shared by the unit tests and the tests against the running injector."""

from __future__ import annotations

import copy
from typing import Any

from proxy.injector.patch import SidecarTemplate

IMAGE = "registry.example.com/ktp:0.1.0"
TEMPLATE = SidecarTemplate(image=IMAGE, bootstrap_servers="kafka.kafka.svc:9092")

ANNOTATIONS = {
    "kafka-tenant-proxy.io/inject": "true",
    "kafka-tenant-proxy.io/service": "orders-worker",
    "kafka-tenant-proxy.io/group": "orders-worker",
    "kafka-tenant-proxy.io/topics": "orders,payments",
    "kafka-tenant-proxy.io/app-port": "8080",
    "kafka-tenant-proxy.io/app-path": "/events",
}


def consumer_pod(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A pod as a ReplicaSet creates it: generateName, one app container."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "orders-worker-7d9f8-",
            "namespace": "shop",
            "labels": {"app": "orders-worker"},
            "annotations": dict(ANNOTATIONS if annotations is None else annotations),
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example.com/orders-worker:1.4.2",
                    "ports": [{"name": "http", "containerPort": 8080}],
                }
            ],
            **copy.deepcopy(spec),
        },
    }


SIDECAR = {
    "name": "ktp-sidecar",
    "image": IMAGE,
    "imagePullPolicy": "IfNotPresent",
    "args": ["sidecar"],
    "env": [
        {
            "name": "POD_NAME",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
        },
        {
            "name": "POD_NAMESPACE",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
        },
        {"name": "KTP_BOOTSTRAP_SERVERS", "value": "kafka.kafka.svc:9092"},
        {"name": "KTP_SECURITY_PROTOCOL", "value": "PLAINTEXT"},
        {"name": "KTP_SERVICE", "value": "orders-worker"},
        {"name": "KTP_GROUP", "value": "orders-worker"},
        {"name": "KTP_TOPICS", "value": "orders,payments"},
        {"name": "KTP_APP_URL", "value": "http://127.0.0.1:8080/events"},
        {"name": "KTP_ROUTES", "value": "kafka:"},
        {"name": "KTP_PUBLISH_ADDR", "value": "127.0.0.1:14001"},
        {"name": "KTP_ADMIN_ADDR", "value": "0.0.0.0:14000"},
        {"name": "KTP_METRICS_ADDR", "value": "0.0.0.0:14090"},
    ],
    "ports": [
        {"name": "ktp-admin", "containerPort": 14000, "protocol": "TCP"},
        {"name": "ktp-metrics", "containerPort": 14090, "protocol": "TCP"},
        {"name": "ktp-publish", "containerPort": 14001, "protocol": "TCP"},
    ],
    # /healthz: a Kafka outage does not take the pod out of its Services (see patch.py).
    "readinessProbe": {
        "httpGet": {"path": "/healthz", "port": 14000},
        "timeoutSeconds": 2,
        "periodSeconds": 5,
        "failureThreshold": 3,
    },
    "livenessProbe": {
        "httpGet": {"path": "/healthz", "port": 14000},
        "timeoutSeconds": 2,
        "periodSeconds": 10,
        "failureThreshold": 3,
    },
    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "terminationMessagePolicy": "FallbackToLogsOnError",
    "restartPolicy": "Always",
}

EXPECTED_PATCH = [
    {"op": "add", "path": "/spec/initContainers", "value": [SIDECAR]},
    {
        "op": "add",
        "path": "/metadata/annotations/kafka-tenant-proxy.io~1status",
        "value": "injected",
    },
    {"op": "add", "path": "/metadata/annotations/prometheus.io~1scrape", "value": "true"},
    {"op": "add", "path": "/metadata/annotations/prometheus.io~1port", "value": "14090"},
    {"op": "add", "path": "/metadata/annotations/prometheus.io~1path", "value": "/metrics"},
    {"op": "add", "path": "/metadata/labels/kafka-tenant-proxy.io~1sidecar", "value": "true"},
]


def admission_review(
    pod: dict[str, Any],
    *,
    uid: str = "705ab4f5-6393-11e8-b7cc-42010a800002",
    operation: str = "CREATE",
) -> dict[str, Any]:
    """The AdmissionReview the API server sends for a pod creation (fields as in the API docs)."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }

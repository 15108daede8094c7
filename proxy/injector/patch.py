"""From a pod and the injector's sidecar template to a JSONPatch that adds the sidecar. No I/O.

A pod opts in with ``kafka-tenant-proxy.io/inject: "true"`` (an annotation, or a label of the
same name, which a webhook's objectSelector can match); its other ``kafka-tenant-proxy.io/*``
annotations are the sidecar's per-pod options, named like the sidecar's flags
(``service``, ``sandbox``, ``group``, ``topics``, ``app-url``, ``ordering``, ...), plus a few
that only the injector understands (``app-port``, ``app-path``, ``native-sidecar`` and the
``cpu-*``/``memory-*`` resources). Each becomes the sidecar's ``KTP_*`` environment variable,
so the sidecar reads them exactly as it reads any other configuration. The platform's part
(image, Kafka connection and its secrets, route source, resources, probes) comes from the
injector's own options, as a :class:`SidecarTemplate`.

:func:`plan` returns a value, never ``None``:

- :class:`Inject` with the patch, for an annotated pod without the sidecar;
- :class:`Pass` for a pod that did not opt in or already has a ``ktp-sidecar`` container;
- :class:`Refuse` when an annotation is unknown or its value would not start a sidecar. The
  annotations are checked with the sidecar's own option parsers and config checks, so a pod the
  injector admits never gets a sidecar that exits on a configuration error.

Ports. The sidecar shares the pod's network namespace with the app and with other sidecars (a
mesh's proxy). Its ports (admin 14000, publish 14001, metrics 14090) avoid those of Istio,
Linkerd, Dapr and Consul/Kuma; the injector's options move them for a whole install and the
``admin-port``/``publish-port``/``metrics-port`` annotations for one pod. A pod whose containers
already declare one of them, or that carries a known mesh proxy whose (often undeclared) ports
include one of them, is refused with the container and port named: two listeners on one port
would leave the sidecar crash-looping on ``EADDRINUSE``.

Identity. The sidecar gets ``POD_NAME`` and ``POD_NAMESPACE`` from the downward API, and takes
its pod's name as its static group member id. An ``instance-id`` annotation is refused (except
``none``): on a pod template it would give every replica the same member id, and Kafka fences
all but one of them.

Host network. A ``hostNetwork`` pod shares the node's ports, so two such pods on one node would
fight over the sidecar's ports; such a pod is refused rather than admitted without the sidecar it
asked for.

Probes. The kubelet probes a container from the node, on the pod's IP, so a probe cannot reach
the sidecar's admin server on its default 127.0.0.1. With ``probes="http"`` (the default) the
injected sidecar binds the admin server to ``0.0.0.0:<admin port>`` and is probed with HTTP
GETs: cheap, no process started per probe. Everything on the admin server is a
read-only GET, but ``/routes`` and ``/decisions`` show tenants to anyone who can reach the pod's
IP; a platform that treats tenants as confidential sets ``probes="exec"``, which keeps the admin
server on 127.0.0.1 and probes it with a short Python one-liner run inside the container (one
interpreter start per probe, about 30 ms of CPU).

Readiness. A native sidecar's readiness counts towards its pod's ``Ready`` condition. The
sidecar's ``/readyz`` goes 503 while Kafka or the route source cannot be reached; used as the
readiness probe, a Kafka outage would take every consumer pod out of its Services (the app's
own HTTP traffic with it) and stall rollouts and node drains behind PodDisruptionBudgets. So
the readiness probe asks ``/healthz`` by default (the sidecar's process is up and serving: its
publish endpoint takes requests), and ``readiness_path="/readyz"`` is there for an operator who
wants a pod to be Ready only while it can consume.

Start and stop ordering. A native sidecar (an init container with ``restartPolicy: Always``,
Kubernetes 1.29+) is started before the app containers and stopped after them, which is what we
want. When a pod asks for a regular container (``native-sidecar: "false"``, for clusters older
than 1.29), the sidecar is inserted *first* in ``containers`` so the kubelet starts it first,
but nothing holds the app back (there is no ``holdApplicationUntilProxyStarts`` equivalent, and
none is needed): the app does not depend on the sidecar to start, because the sidecar waits for
the app to answer its health check before it consumes anything for delivery. At shutdown both
get SIGTERM at once; a delivery the app can no longer take is not committed, so the next
consumer of the partition gets it again (at-least-once). An app that publishes through the
sidecar's publish API right at start must retry a refused connection until the sidecar listens.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from proxy.config import Option, resolve
from proxy.delivery.bulk import MAX_BULK_RECORDS
from proxy.errors import ConfigError, RouteError
from proxy.kafka import KAFKA_OPTIONS
from proxy.routes.table import check_name
from proxy.sidecar.config import SIDECAR_OPTIONS, SidecarConfig

PREFIX = "kafka-tenant-proxy.io/"
INJECT_ANNOTATION = PREFIX + "inject"
# Written by the injector on the pods it changed, for people and tools reading the pod.
STATUS_ANNOTATION = PREFIX + "status"
# Lets a PodMonitor (and kubectl) select every pod that has a sidecar.
SIDECAR_LABEL = PREFIX + "sidecar"
SIDECAR_LABEL_VALUE = "true"
CONTAINER_NAME = "ktp-sidecar"
DEFAULT_ADMIN_PORT = 14000
DEFAULT_PUBLISH_PORT = 14001
DEFAULT_METRICS_PORT = 14090
PORT_ANNOTATIONS = ("admin-port", "publish-port", "metrics-port")
# Ports that mesh proxies listen on without always declaring them as containerPorts, by the
# container name their injectors give them.
MESH_PROXY_PORTS: dict[str, tuple[int, ...]] = {
    "istio-proxy": (15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090),
    "linkerd-proxy": (4140, 4143, 4190, 4191),
    "daprd": (3500, 50001, 50002, 9090),
    # Consul's Envoy admin, and the range Consul assigns its sidecar proxies' listeners from.
    "consul-dataplane": (19000, *range(21000, 21256)),
    "envoy-sidecar": (19000, *range(21000, 21256)),
    "kuma-sidecar": (9901,),
}
PROBE_MODES = ("http", "exec")
READINESS_PATHS = ("/healthz", "/readyz")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
SECRETS_DIR = "/var/run/secrets/kafka-tenant-proxy"
SASL_VOLUME = "ktp-kafka-sasl"
CA_VOLUME = "ktp-kafka-ca"
CLIENT_CERT_VOLUME = "ktp-kafka-client-cert"
ROUTES_TOKEN_VOLUME = "ktp-routes-token"
DOWNWARD_ENV = (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace"))
EXEC_PROBE_SCRIPT = (
    "import sys, urllib.request; "
    "sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=2).status == 200 "
    "else 1)"
)

# Sidecar options a pod may not set: the Kafka connection and its secret files are the
# platform's (from the injector), and the admin and metrics ports are fixed because the probes
# and the scrape annotations point at them (the *-port annotations move them). app-token-file and
# routes-token-file would name files the sidecar has no way to get from an annotation. The
# instance id comes from the pod's name (see the module docstring).
_PLATFORM_OPTIONS = frozenset(o.name for o in KAFKA_OPTIONS) | {
    "admin-addr",
    "metrics-addr",
    "publish-addr",
    "app-token-file",
    "routes-token-file",
}
POD_OPTIONS: tuple[Option, ...] = tuple(
    o for o in SIDECAR_OPTIONS if o.name not in _PLATFORM_OPTIONS
)
_POD_OPTION_NAMES = frozenset(o.name for o in POD_OPTIONS)
RESOURCE_ANNOTATIONS = ("cpu-request", "cpu-limit", "memory-request", "memory-limit")
# Annotations the injector reads itself rather than handing to the sidecar.
INJECTOR_ANNOTATIONS = (
    "inject",
    "status",
    "app-port",
    "app-path",
    "native-sidecar",
    *PORT_ANNOTATIONS,
    *RESOURCE_ANNOTATIONS,
)
KNOWN_ANNOTATIONS = frozenset(INJECTOR_ANNOTATIONS) | _POD_OPTION_NAMES

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_QUANTITY = re.compile(
    r"^(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<suffix>m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
)
_SUFFIXES = {
    None: Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")


def annotation(name: str) -> str:
    """The full annotation key of an option: ``topics`` → ``kafka-tenant-proxy.io/topics``."""
    return PREFIX + name


def parse_quantity(raw: str) -> Decimal:
    """A Kubernetes resource quantity (``250m``, ``1.5``, ``128Mi``) as a number of units."""
    match = _QUANTITY.match(raw)
    if match is None:
        raise ValueError(f"{raw!r} is not a resource quantity such as 100m, 0.5, 128Mi or 1Gi")
    return Decimal(match["number"]) * _SUFFIXES[match["suffix"]]


@dataclass(frozen=True, slots=True)
class SecretKeyRef:
    """One key of a Secret in the pod's namespace."""

    name: str
    key: str

    @classmethod
    def parse(cls, raw: str, default_key: str) -> SecretKeyRef:
        """``NAME`` or ``NAME/KEY``."""
        name, _, key = raw.partition("/")
        key = key or default_key
        if not _SECRET_NAME.match(name):
            raise ValueError(f"{name!r} is not a Secret name (lowercase DNS subdomain)")
        if not _SECRET_KEY.match(key):
            raise ValueError(f"{key!r} is not a Secret key")
        return cls(name, key)


@dataclass(frozen=True, slots=True, kw_only=True)
class Resources:
    """Requests and limits of the sidecar container; ``None`` leaves one unset."""

    cpu_request: str | None = "50m"
    memory_request: str | None = "64Mi"
    cpu_limit: str | None = None
    memory_limit: str | None = "256Mi"

    def problems(self) -> list[tuple[str, str]]:
        """``(field, message)`` for every bad quantity and every request above its limit."""
        found: list[tuple[str, str]] = []
        parsed: dict[str, Decimal] = {}
        for name in ("cpu_request", "cpu_limit", "memory_request", "memory_limit"):
            raw = getattr(self, name)
            if raw is None:
                continue
            try:
                parsed[name] = parse_quantity(raw)
            except ValueError as exc:
                found.append((name, str(exc)))
        for kind in ("cpu", "memory"):
            request, limit = parsed.get(f"{kind}_request"), parsed.get(f"{kind}_limit")
            if request is not None and limit is not None and request > limit:
                raw_request, raw_limit = (
                    getattr(self, f"{kind}_request"),
                    getattr(self, f"{kind}_limit"),
                )
                message = f"{kind} request {raw_request} is above the limit {raw_limit}"
                found.append((f"{kind}_request", message))
        return found

    def manifest(self) -> dict[str, dict[str, str]]:
        """The container's ``resources`` field."""
        out: dict[str, dict[str, str]] = {}
        for section in ("requests", "limits"):
            suffix = section[:-1] if section == "requests" else "limit"
            values = {
                kind: getattr(self, f"{kind}_{suffix}")
                for kind in ("cpu", "memory")
                if getattr(self, f"{kind}_{suffix}") is not None
            }
            if values:
                out[section] = values
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class SidecarPorts:
    """The sidecar's three listeners in the pod's network namespace."""

    admin: int = DEFAULT_ADMIN_PORT
    publish: int = DEFAULT_PUBLISH_PORT
    metrics: int = DEFAULT_METRICS_PORT

    def items(self) -> tuple[tuple[str, int], ...]:
        """``(role, port)`` pairs, in a fixed order."""
        return (("admin", self.admin), ("publish", self.publish), ("metrics", self.metrics))

    def problems(self, prefix: str) -> list[str]:
        """Messages for ports out of range or used twice; ``prefix`` + role + ``-port`` names
        each (``--sidecar-`` for the injector's options, the annotation prefix for a pod's)."""
        found = [
            f"{prefix}{role}-port: {port} is not a port (1-65535)"
            for role, port in self.items()
            if not 1 <= port <= 65535
        ]
        seen: dict[int, str] = {}
        for role, port in self.items():
            if port in seen:
                found.append(
                    f"{prefix}{seen[port]}-port and {prefix}{role}-port are both {port}; "
                    "give each its own port"
                )
            seen.setdefault(port, role)
        return found


@dataclass(frozen=True, slots=True, kw_only=True)
class SidecarTemplate:
    """The platform's part of every injected sidecar, from the injector's own options.

    Secrets are referenced by name and must exist in each namespace where pods are injected:
    a Pod can only mount Secrets of its own namespace.
    """

    image: str
    bootstrap_servers: str
    image_pull_policy: str = "IfNotPresent"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password_secret: SecretKeyRef | None = None
    kafka_ca_secret: SecretKeyRef | None = None
    kafka_client_cert_secret: str | None = None
    routes: str = "kafka:"
    # --app-max-concurrency of every sidecar (None: the sidecar's default); a pod's annotation wins.
    app_max_concurrency: int | None = None
    # Bulk delivery for every sidecar unless a pod's annotation says otherwise (0: off).
    bulk_max_records: int = 0
    native_sidecar: bool = True
    probes: str = "http"
    readiness_path: str = "/healthz"
    resources: Resources = field(default_factory=Resources)
    ports: SidecarPorts = field(default_factory=SidecarPorts)
    image_pull_secrets: tuple[str, ...] = ()
    routes_token_secret: SecretKeyRef | None = None

    def __post_init__(self) -> None:
        problems = self.ports.problems("--sidecar-")
        if self.readiness_path not in READINESS_PATHS:
            problems.append(f"--readiness-path must be one of {', '.join(READINESS_PATHS)}")
        for name in self.image_pull_secrets:
            if not _SECRET_NAME.match(name):
                problems.append(
                    f"--sidecar-image-pull-secrets: {name!r} is not a Secret name "
                    "(lowercase DNS subdomain)"
                )
        if not self.image:
            problems.append("--sidecar-image is empty")
        if not self.bootstrap_servers:
            problems.append("--bootstrap-servers is empty")
        if self.probes not in PROBE_MODES:
            problems.append(f"--probes must be one of {', '.join(PROBE_MODES)}")
        if not 0 <= self.bulk_max_records <= MAX_BULK_RECORDS:
            problems.append(f"--bulk-max-records must be 0 (off) to {MAX_BULK_RECORDS}")
        if self.image_pull_policy not in PULL_POLICIES:
            problems.append(
                f"--sidecar-image-pull-policy must be one of {', '.join(PULL_POLICIES)}"
            )
        if self.security_protocol.startswith("SASL") and (
            self.sasl_username is None or self.sasl_password_secret is None
        ):
            problems.append(
                f"--security-protocol {self.security_protocol} needs --sasl-username and "
                "--sasl-password-secret"
            )
        for name, message in self.resources.problems():
            problems.append(f"--sidecar-{name.replace('_', '-')}: {message}")
        if problems:
            raise ConfigError("; ".join(problems))

    def platform_env(self) -> dict[str, str]:
        """``KTP_*`` variables every sidecar gets, keyed by option name."""
        env = {
            "bootstrap-servers": self.bootstrap_servers,
            "security-protocol": self.security_protocol,
            "routes": self.routes,
        }
        if self.app_max_concurrency is not None:
            env["app-max-concurrency"] = str(self.app_max_concurrency)
        if self.bulk_max_records:
            env["bulk-max-records"] = str(self.bulk_max_records)
        if self.security_protocol.startswith("SASL"):
            env["sasl-mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            env["sasl-username"] = self.sasl_username
        if self.sasl_password_secret is not None:
            env["sasl-password-file"] = f"{SECRETS_DIR}/kafka-sasl/password"
        if self.kafka_ca_secret is not None:
            env["ssl-cafile"] = f"{SECRETS_DIR}/kafka-ca/ca.crt"
        if self.kafka_client_cert_secret is not None:
            env["ssl-certfile"] = f"{SECRETS_DIR}/kafka-client-cert/tls.crt"
            env["ssl-keyfile"] = f"{SECRETS_DIR}/kafka-client-cert/tls.key"
        if self.routes_token_secret is not None:
            env["routes-token-file"] = f"{SECRETS_DIR}/routes-token/token"
        return env

    def volumes(self) -> list[dict[str, Any]]:
        """Pod volumes holding the Kafka secrets, each projected to the file name we read."""
        out: list[dict[str, Any]] = []
        if self.sasl_password_secret is not None:
            ref = self.sasl_password_secret
            out.append(_secret_volume(SASL_VOLUME, ref.name, {ref.key: "password"}))
        if self.kafka_ca_secret is not None:
            ref = self.kafka_ca_secret
            out.append(_secret_volume(CA_VOLUME, ref.name, {ref.key: "ca.crt"}))
        if self.kafka_client_cert_secret is not None:
            out.append(
                _secret_volume(
                    CLIENT_CERT_VOLUME,
                    self.kafka_client_cert_secret,
                    {"tls.crt": "tls.crt", "tls.key": "tls.key"},
                )
            )
        if self.routes_token_secret is not None:
            ref = self.routes_token_secret
            out.append(_secret_volume(ROUTES_TOKEN_VOLUME, ref.name, {ref.key: "token"}))
        return out

    def volume_mounts(self) -> list[dict[str, Any]]:
        mounts = {
            SASL_VOLUME: "kafka-sasl",
            CA_VOLUME: "kafka-ca",
            CLIENT_CERT_VOLUME: "kafka-client-cert",
            ROUTES_TOKEN_VOLUME: "routes-token",
        }
        return [
            {"name": v["name"], "mountPath": f"{SECRETS_DIR}/{mounts[v['name']]}", "readOnly": True}
            for v in self.volumes()
        ]


def _secret_volume(name: str, secret: str, items: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "secret": {
            "secretName": secret,
            "items": [{"key": key, "path": path} for key, path in items.items()],
            # Readable by the sidecar's non-root user whatever its UID, and by no one else
            # would need fsGroup, which we do not impose on the pod.
            "defaultMode": 0o444,
        },
    }


@dataclass(frozen=True, slots=True)
class Inject:
    """Add the sidecar: ``patch`` is the RFC 6902 JSON Patch for the pod."""

    patch: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Pass:
    """Admit the pod unchanged, with the reason (logged)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """Do not admit the pod; ``message`` names every bad annotation and says what to do."""

    message: str


Outcome = Inject | Pass | Refuse


@dataclass(frozen=True, slots=True, kw_only=True)
class PodOptions:
    """A pod's valid sidecar settings, read from its annotations."""

    env: dict[str, str]
    native_sidecar: bool
    resources: Resources
    ports: SidecarPorts = field(default_factory=SidecarPorts)


def plan(pod: Mapping[str, Any], template: SidecarTemplate) -> Outcome:
    """Decide what to do with one pod being created."""
    metadata = _mapping(pod.get("metadata"))
    annotations = {str(k): str(v) for k, v in _mapping(metadata.get("annotations")).items()}
    spec = _mapping(pod.get("spec"))
    # The annotation, or else the label of the same name: a label is what a webhook's
    # objectSelector can see, so opting in by label keeps every other pod away from the webhook.
    raw_inject = annotations.get(INJECT_ANNOTATION)
    if raw_inject is None:
        raw_inject = _mapping(metadata.get("labels")).get(INJECT_ANNOTATION)
    if raw_inject is None:
        return Pass(f"no {INJECT_ANNOTATION} annotation or label")
    raw_inject = str(raw_inject)
    try:
        wanted = _parse_bool(raw_inject)
    except ValueError as exc:
        return Refuse(f"annotation {INJECT_ANNOTATION}: {exc}")
    if not wanted:
        return Pass(f"{INJECT_ANNOTATION} is {raw_inject!r}")
    if any(c.get("name") == CONTAINER_NAME for c in _containers(spec)):
        return Pass(f"already has a {CONTAINER_NAME} container")
    try:
        options = read_annotations(annotations, template)
    except ConfigError as exc:
        return Refuse(f"kafka-tenant-proxy sidecar not injected: {exc}")
    problems = pod_problems(spec, template, options)
    if problems:
        return Refuse(f"kafka-tenant-proxy sidecar not injected: {'; '.join(problems)}")
    return Inject(build_patch(pod, template, options))


def pod_problems(
    spec: Mapping[str, Any], template: SidecarTemplate, options: PodOptions
) -> list[str]:
    """What in the pod itself keeps the sidecar from running there: host networking, a port
    another container holds, a volume name the sidecar's volumes would repeat."""
    problems: list[str] = []
    if spec.get("hostNetwork") is True:
        problems.append(
            "the pod uses hostNetwork, so the sidecar's ports would be the node's and clash "
            "between pods on one node; remove hostNetwork or the "
            f"{INJECT_ANNOTATION} annotation"
        )
    ours = {port: role for role, port in options.ports.items()}
    for container in _containers(spec):
        name = str(container.get("name"))
        held: dict[int, str] = {}
        for port in _list(container.get("ports")):
            number = port.get("containerPort") if isinstance(port, Mapping) else None
            if isinstance(number, int) and not isinstance(number, bool):
                held.setdefault(number, "declares")
        for number in MESH_PROXY_PORTS.get(name, ()):
            held.setdefault(number, "listens on")
        for number, how in sorted(held.items()):
            if number in ours:
                problems.append(
                    f"container {name} {how} port {number}, the sidecar's {ours[number]} port; "
                    f"move the sidecar's with the {annotation(ours[number] + '-port')} annotation"
                )
    taken = {
        str(v.get("name")) for v in _list(spec.get("volumes")) if isinstance(v, Mapping)
    }
    for volume in template.volumes():
        if volume["name"] in taken:
            problems.append(
                f"the pod already has a volume named {volume['name']}, the name of the "
                "sidecar's own volume; rename the pod's volume"
            )
    return problems


def read_annotations(annotations: Mapping[str, str], template: SidecarTemplate) -> PodOptions:
    """Validate a pod's ``kafka-tenant-proxy.io/*`` annotations; :class:`ConfigError` names
    every bad one at once."""
    ours = {k[len(PREFIX) :]: v for k, v in annotations.items() if k.startswith(PREFIX)}
    problems: list[str] = []
    for name in sorted(ours):
        if name not in KNOWN_ANNOTATIONS:
            problems.append(
                f"annotation {annotation(name)} is not known; the known ones are "
                f"{', '.join(sorted(KNOWN_ANNOTATIONS))}"
            )
        elif _CONTROL.search(ours[name]):
            problems.append(f"annotation {annotation(name)} contains control characters")
    valid = {k: v for k, v in ours.items() if k in KNOWN_ANNOTATIONS and not _CONTROL.search(v)}

    env: dict[str, str] = {}
    for option in POD_OPTIONS:
        if option.name not in valid:
            continue
        raw = valid[option.name]
        problem = _option_problem(option, raw)
        if problem is None:
            env[option.name] = raw
        else:
            problems.append(f"annotation {annotation(option.name)}: {problem}")

    app_url = _app_url(valid, problems)
    if app_url is not None:
        env["app-url"] = app_url
    sources = {name: annotation(name) for name in env}
    if app_url is not None:
        sources["app-url"] = annotation("app-port")
    for required in ("service", "group", "topics"):
        if required not in valid:
            example = {"service": "orders-worker", "group": "orders-worker", "topics": "orders"}[
                required
            ]
            problems.append(f"annotation {annotation(required)} is missing (e.g. {example!r})")

    native = template.native_sidecar
    if "native-sidecar" in valid:
        try:
            native = _parse_bool(valid["native-sidecar"])
        except ValueError as exc:
            problems.append(f"annotation {annotation('native-sidecar')}: {exc}")

    if "instance-id" in valid and valid["instance-id"] != "none":
        problems.append(
            f"annotation {annotation('instance-id')}: on a pod template every replica would get "
            "the same static member id and Kafka would fence all but one; remove it (the sidecar "
            "takes its pod's name as its id) or set it to none"
        )
    ports = _ports(valid, template.ports, problems)
    if ports is not None and "app-port" in valid and valid["app-port"].isdigit():
        for role, port in ports.items():
            if port == int(valid["app-port"]):
                problems.append(
                    f"annotation {annotation('app-port')}: {port} is also the sidecar's {role} "
                    f"port; move one of them ({annotation(role + '-port')})"
                )

    resources = Resources(
        **{
            name.replace("-", "_"): valid.get(
                name, getattr(template.resources, name.replace("-", "_"))
            )
            for name in RESOURCE_ANNOTATIONS
        }
    )
    for name, message in resources.problems():
        problems.append(f"annotation {annotation(name.replace('_', '-'))}: {message}")
    if problems:
        raise ConfigError("; ".join(problems))

    _check_as_sidecar(env, sources, template)
    return PodOptions(
        env=env, native_sidecar=native, resources=resources, ports=ports or template.ports
    )


def _ports(
    valid: Mapping[str, str], default: SidecarPorts, problems: list[str]
) -> SidecarPorts | None:
    """The sidecar's ports after the pod's ``*-port`` annotations, or ``None`` (with problems
    added) when one is not a port or two collide."""
    chosen = dict(default.items())
    for role in chosen:
        raw = valid.get(f"{role}-port")
        if raw is None:
            continue
        if not raw.isdigit() or not 1 <= int(raw) <= 65535:
            problems.append(f"annotation {annotation(role + '-port')}: {raw!r} is not a port (1-65535)")
            return None
        chosen[role] = int(raw)
    ports = SidecarPorts(**chosen)
    found = ports.problems(PREFIX)
    problems.extend(found)
    return None if found else ports


def _option_problem(option: Option, raw: str) -> str | None:
    if option.choices is not None and raw not in option.choices:
        return f"{raw!r} is not one of {', '.join(option.choices)}"
    try:
        option.parse(raw)
    except (ValueError, TypeError) as exc:
        return str(exc)
    if option.name in ("service", "sandbox"):
        try:
            check_name(option.name, raw)
        except RouteError as exc:
            return str(exc)
    if option.name == "topics" and not raw.replace(",", "").strip():
        return "give at least one topic"
    return None


def _app_url(valid: Mapping[str, str], problems: list[str]) -> str | None:
    """``app-url`` as given, or built from ``app-port`` and ``app-path``."""
    port_raw, path = valid.get("app-port"), valid.get("app-path")
    if "app-url" in valid:
        if port_raw is not None or path is not None:
            problems.append(
                f"annotations {annotation('app-url')} and {annotation('app-port')}/"
                f"{annotation('app-path')} exclude each other: set one of them"
            )
        return None  # already taken as a sidecar option
    if port_raw is None:
        if path is not None:
            problems.append(f"annotation {annotation('app-path')} needs {annotation('app-port')}")
        else:
            problems.append(
                f"annotation {annotation('app-port')} (or {annotation('app-url')}) is missing: "
                "where does the app take deliveries?"
            )
        return None
    if not port_raw.isdigit() or not 1 <= int(port_raw) <= 65535:
        problems.append(
            f"annotation {annotation('app-port')}: {port_raw!r} is not a port (1-65535)"
        )
        return None
    path = path if path is not None else "/"
    if not path.startswith("/") or any(c in path for c in " ?#"):
        problems.append(
            f"annotation {annotation('app-path')}: {path!r} must start with '/' and have no "
            "spaces, query or fragment"
        )
        return None
    return f"http://127.0.0.1:{int(port_raw)}{path}"


def _check_as_sidecar(
    env: Mapping[str, str], annotations: Mapping[str, str], template: SidecarTemplate
) -> None:
    """Run the sidecar's own option resolution and config checks on the environment it will get,
    so that cross-option rules (a sandbox's dead-letter topic, the app URL) are enforced here.

    ``annotations`` maps each option in ``env`` to the annotation it came from."""
    platform = template.platform_env()
    environ = {Option(name, "").env: value for name, value in {**platform, **env}.items()}
    sources = {name: f"injector option --{name}" for name in platform}
    sources.update({name: f"annotation {key}" for name, key in annotations.items()})
    try:
        SidecarConfig.from_options(resolve(SIDECAR_OPTIONS, argparse.Namespace(), environ=environ))
    except ConfigError as exc:
        raise ConfigError(_rename(str(exc), sources)) from exc


def _rename(message: str, sources: Mapping[str, str]) -> str:
    """Replace the sidecar's ``--flag``/``KTP_*`` names in a message with where the value came
    from, so the pod's author reads the annotation they wrote."""
    by_env = {Option(name, "").env: label for name, label in sources.items()}

    def env_name(match: re.Match[str]) -> str:
        return by_env.get(match[0], match[0])

    def flag(match: re.Match[str]) -> str:
        return sources.get(match[1], match[0])

    message = re.sub(r"KTP_[A-Z0-9_]+", env_name, message)
    return re.sub(r"--([a-z][a-z0-9-]*)", flag, message)


def sidecar_container(template: SidecarTemplate, options: PodOptions) -> dict[str, Any]:
    """The ``ktp-sidecar`` container."""
    values = {**template.platform_env(), **options.env}
    ports = options.ports
    admin_host = "0.0.0.0" if template.probes == "http" else "127.0.0.1"
    values["admin-addr"] = f"{admin_host}:{ports.admin}"
    values["publish-addr"] = f"127.0.0.1:{ports.publish}"
    values["metrics-addr"] = f"0.0.0.0:{ports.metrics}"
    # The pod's identity from the downward API: POD_NAME is the sidecar's static member id.
    env: list[dict[str, Any]] = [
        {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}
        for name, path in DOWNWARD_ENV
    ]
    # Env in the sidecar's option order, so the patch is stable and reads like `ktp sidecar -h`.
    env += [{"name": o.env, "value": values[o.name]} for o in SIDECAR_OPTIONS if o.name in values]
    # Declared so that the scheduler's and other injectors' view of the pod's ports is complete
    # (the publish port listens on 127.0.0.1 only, but the port is still taken in the pod).
    declared = [
        {"name": "ktp-metrics", "containerPort": ports.metrics, "protocol": "TCP"},
        {"name": "ktp-publish", "containerPort": ports.publish, "protocol": "TCP"},
    ]
    if template.probes == "http":
        declared.insert(0, {"name": "ktp-admin", "containerPort": ports.admin, "protocol": "TCP"})
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        "args": ["sidecar"],
        "env": env,
        "ports": declared,
        "readinessProbe": {
            **_probe(template.probes, ports.admin, template.readiness_path),
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            **_probe(template.probes, ports.admin, "/healthz"),
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": options.resources.manifest(),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    mounts = template.volume_mounts()
    if mounts:
        container["volumeMounts"] = mounts
    if options.native_sidecar:
        container["restartPolicy"] = "Always"
    return container


def _probe(mode: str, port: int, path: str) -> dict[str, Any]:
    if mode == "http":
        return {"httpGet": {"path": path, "port": port}, "timeoutSeconds": 2}
    script = EXEC_PROBE_SCRIPT.format(port=port, path=path)
    return {"exec": {"command": ["python", "-c", script]}, "timeoutSeconds": 3}


def build_patch(
    pod: Mapping[str, Any], template: SidecarTemplate, options: PodOptions
) -> list[dict[str, Any]]:
    """The JSON Patch that adds the sidecar, its volumes, the status annotation, the sidecar
    label and (unless the pod has its own) the Prometheus scrape annotations."""
    metadata = _mapping(pod.get("metadata"))
    spec = _mapping(pod.get("spec"))
    container = sidecar_container(template, options)
    ops: list[dict[str, Any]] = []
    if options.native_sidecar:
        # Appended, so the pod's own init containers (waiting for a dependency, migrations,
        # a mesh proxy's setup) have run before the sidecar starts.
        ops.append(_append(spec, "initContainers", container))
    else:
        # First, so the kubelet starts it first (see the module docstring on ordering).
        ops.append({"op": "add", "path": "/spec/containers/0", "value": container})
    for volume in template.volumes():
        ops.append(_append(spec, "volumes", volume))
        spec = {**spec, "volumes": [*_list(spec.get("volumes")), volume]}
    have = {
        s.get("name") for s in _list(spec.get("imagePullSecrets")) if isinstance(s, Mapping)
    }
    for secret in template.image_pull_secrets:
        if secret not in have:
            ops.append(_append(spec, "imagePullSecrets", {"name": secret}))
            spec = {
                **spec,
                "imagePullSecrets": [*_list(spec.get("imagePullSecrets")), {"name": secret}],
            }

    # The pod has annotations (it is annotated to get here); it may have no labels.
    ops.append(_add_key("annotations", STATUS_ANNOTATION, "injected"))
    if "prometheus.io/scrape" not in _mapping(metadata.get("annotations")):
        # A pod that already sets its own scrape annotations keeps them: the app's metrics
        # matter more than ours, which a PodMonitor still finds by the ktp-metrics port.
        for key, value in prometheus_annotations(options.ports.metrics).items():
            ops.append(_add_key("annotations", key, value))
    if isinstance(metadata.get("labels"), Mapping):
        ops.append(_add_key("labels", SIDECAR_LABEL, SIDECAR_LABEL_VALUE))
    else:
        ops.append(
            {"op": "add", "path": "/metadata/labels", "value": {SIDECAR_LABEL: SIDECAR_LABEL_VALUE}}
        )
    return ops


def prometheus_annotations(metrics_port: int) -> dict[str, str]:
    """The scrape annotations of a pod whose sidecar serves metrics on ``metrics_port``."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(metrics_port),
        "prometheus.io/path": "/metrics",
    }


def _append(spec: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    if _list(spec.get(key)):
        return {"op": "add", "path": f"/spec/{key}/-", "value": value}
    return {"op": "add", "path": f"/spec/{key}", "value": [value]}


def _add_key(field_name: str, key: str, value: str) -> dict[str, Any]:
    return {"op": "add", "path": f"/metadata/{field_name}/{_escape(key)}", "value": value}


def _escape(token: str) -> str:
    """RFC 6901 escaping of one JSON Pointer token."""
    return token.replace("~", "~0").replace("/", "~1")


def _containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [
        c
        for key in ("initContainers", "containers")
        for c in _list(spec.get(key))
        if isinstance(c, Mapping)
    ]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list) else []


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("true", "1", "yes", "on", "enabled"):
        return True
    if lowered in ("false", "0", "no", "off", "disabled"):
        return False
    raise ValueError(f"{raw!r} is not true or false")

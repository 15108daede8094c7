"""``ktp injector serve`` options and the :class:`InjectorConfig` built from them.

Two groups: the webhook's own listener (``--listen``, ``--tls-*``, ``--metrics-addr``) and the
platform's part of every injected sidecar (``--sidecar-image``, the Kafka connection and the
Secrets holding its credentials, ``--routes``, resources, probes), which becomes a
:class:`~proxy.injector.patch.SidecarTemplate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.config import (
    Option,
    parse_bool,
    parse_host_port,
    parse_positive_float,
    parse_positive_int,
)
from proxy.errors import ConfigError
from proxy.injector.patch import (
    DEFAULT_ADMIN_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_PUBLISH_PORT,
    PROBE_MODES,
    PULL_POLICIES,
    READINESS_PATHS,
    Resources,
    SecretKeyRef,
    SidecarPorts,
    SidecarTemplate,
)
from proxy.kafka import KAFKA_OPTIONS

DEFAULT_LISTEN = "0.0.0.0:8443"
# Not Envoy's 15090: a mesh may inject its proxy into the injector's own pods.
DEFAULT_METRICS_ADDR = "0.0.0.0:14090"
DEFAULT_TLS_RELOAD_INTERVAL = 30.0
_KAFKA = {o.name: o for o in KAFKA_OPTIONS}


def _optional(raw: str) -> str | None:
    # Helm renders an unset value as an empty string; treat it as "not set".
    return raw or None


INJECTOR_OPTIONS = (
    Option("listen", "HTTPS address of the webhook", DEFAULT_LISTEN, parse=parse_host_port),
    Option("tls-certfile", "server certificate (PEM), re-read when it changes", required=True),
    Option("tls-keyfile", "server private key (PEM), re-read when it changes", required=True),
    Option(
        "tls-reload-interval",
        "seconds between checks of the certificate files for a new certificate",
        DEFAULT_TLS_RELOAD_INTERVAL,
        parse=parse_positive_float,
    ),
    Option(
        "metrics-addr",
        "address of the Prometheus metrics server (plain HTTP)",
        DEFAULT_METRICS_ADDR,
        parse=parse_host_port,
    ),
    Option(
        "sidecar-image", "image of the injected sidecar, e.g. ghcr.io/org/ktp:0.1.0", required=True
    ),
    Option(
        "sidecar-image-pull-policy",
        "pull policy of the sidecar image",
        "IfNotPresent",
        choices=PULL_POLICIES,
    ),
    Option(
        "sidecar-image-pull-secrets",
        "comma-separated Secret names added to the imagePullSecrets of every injected pod "
        "(each must exist in the pod's namespace)",
        parse=_optional,
    ),
    Option(
        "bootstrap-servers",
        "Kafka bootstrap servers given to every sidecar, comma-separated HOST:PORT",
        required=True,
    ),
    _KAFKA["security-protocol"],
    _KAFKA["sasl-mechanism"],
    Option("sasl-username", "SASL username given to every sidecar", parse=_optional),
    Option(
        "sasl-password-secret",
        "Secret holding the SASL password, NAME or NAME/KEY (key default: password); it must "
        "exist in every namespace where pods are injected",
        parse=_optional,
    ),
    Option(
        "kafka-ca-secret",
        "Secret holding the CA bundle that verifies the brokers, NAME or NAME/KEY (key default: ca.crt)",
        parse=_optional,
    ),
    Option(
        "kafka-client-cert-secret",
        "kubernetes.io/tls Secret with the sidecars' client certificate (tls.crt, tls.key) for mTLS",
        parse=_optional,
    ),
    Option(
        "routes",
        "route source given to every sidecar (a pod's annotation may override it)",
        "kafka:",
    ),
    Option(
        "app-max-concurrency",
        "most requests and connections every sidecar sends its app at once (default: the "
        "sidecar's --max-in-flight); a pod's kafka-tenant-proxy.io/app-max-concurrency "
        "annotation may override it",
        parse=parse_positive_int,
    ),
    Option(
        "bulk-max-records",
        "bulk delivery (--bulk-max-records) given to every sidecar, 0 for off; a pod's "
        "kafka-tenant-proxy.io/bulk-max-records annotation may override it",
        0,
        parse=int,
    ),
    Option(
        "routes-token-secret",
        "Secret holding the route service's read token, NAME or NAME/KEY (key default: token), "
        "mounted into every sidecar for --routes http(s)://; it must exist in every namespace "
        "where pods are injected",
        parse=_optional,
    ),
    Option(
        "sidecar-admin-port",
        "port of the sidecar's admin server (a pod's kafka-tenant-proxy.io/admin-port "
        "annotation may override it)",
        DEFAULT_ADMIN_PORT,
        parse=parse_positive_int,
    ),
    Option(
        "sidecar-publish-port",
        "port of the sidecar's publish API on 127.0.0.1 (annotation: publish-port)",
        DEFAULT_PUBLISH_PORT,
        parse=parse_positive_int,
    ),
    Option(
        "sidecar-metrics-port",
        "port of the sidecar's metrics server (annotation: metrics-port)",
        DEFAULT_METRICS_PORT,
        parse=parse_positive_int,
    ),
    Option(
        "readiness-path",
        "what the sidecar's readiness probe asks: /healthz (Ready once the sidecar serves, so a "
        "Kafka outage does not take pods out of their Services) or /readyz (Ready only while it "
        "can consume: group joined, routes synced, app answering)",
        "/healthz",
        choices=READINESS_PATHS,
    ),
    Option(
        "native-sidecar",
        "inject a native sidecar (init container with restartPolicy Always, Kubernetes 1.29+); "
        "a pod's kafka-tenant-proxy.io/native-sidecar annotation may override it",
        True,
        parse=parse_bool,
    ),
    Option(
        "probes",
        "how the kubelet probes the sidecar: http (admin server on 0.0.0.0) or exec "
        "(admin server stays on 127.0.0.1)",
        "http",
        choices=PROBE_MODES,
    ),
    Option(
        "sidecar-cpu-request", "CPU request of the sidecar ('' for none)", "50m", parse=_optional
    ),
    Option(
        "sidecar-memory-request",
        "memory request of the sidecar ('' for none)",
        "64Mi",
        parse=_optional,
    ),
    Option("sidecar-cpu-limit", "CPU limit of the sidecar ('' for none)", None, parse=_optional),
    Option(
        "sidecar-memory-limit",
        "memory limit of the sidecar ('' for none)",
        "256Mi",
        parse=_optional,
    ),
    Option("log-level", "log level", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class InjectorConfig:
    """Everything ``ktp injector serve`` needs."""

    tls_certfile: str
    tls_keyfile: str
    template: SidecarTemplate
    listen: tuple[str, int] = ("0.0.0.0", 8443)
    metrics_addr: tuple[str, int] = ("0.0.0.0", 14090)
    tls_reload_interval: float = DEFAULT_TLS_RELOAD_INTERVAL
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        for flag, path in (
            ("--tls-certfile", self.tls_certfile),
            ("--tls-keyfile", self.tls_keyfile),
        ):
            if not Path(path).is_file():
                raise ConfigError(f"{flag} {path!r} is not a readable file")

    @classmethod
    def from_options(cls, values: dict[str, Any]) -> InjectorConfig:
        """Build from :func:`proxy.config.resolve` output; :class:`ConfigError` names the flag."""
        try:
            sasl = values["sasl_password_secret"]
            ca = values["kafka_ca_secret"]
            token = values["routes_token_secret"]
            refs = (
                SecretKeyRef.parse(sasl, "password") if sasl else None,
                SecretKeyRef.parse(ca, "ca.crt") if ca else None,
                SecretKeyRef.parse(token, "token") if token else None,
            )
        except ValueError as exc:
            raise ConfigError(
                f"--sasl-password-secret/--kafka-ca-secret/--routes-token-secret: {exc}"
            ) from exc
        pull_secrets = values["sidecar_image_pull_secrets"] or ""
        template = SidecarTemplate(
            image=values["sidecar_image"],
            image_pull_policy=values["sidecar_image_pull_policy"],
            bootstrap_servers=values["bootstrap_servers"],
            security_protocol=values["security_protocol"],
            sasl_mechanism=values["sasl_mechanism"],
            sasl_username=values["sasl_username"],
            sasl_password_secret=refs[0],
            kafka_ca_secret=refs[1],
            kafka_client_cert_secret=values["kafka_client_cert_secret"],
            routes=values["routes"],
            app_max_concurrency=values["app_max_concurrency"],
            bulk_max_records=values["bulk_max_records"],
            routes_token_secret=refs[2],
            native_sidecar=values["native_sidecar"],
            probes=values["probes"],
            readiness_path=values["readiness_path"],
            ports=SidecarPorts(
                admin=values["sidecar_admin_port"],
                publish=values["sidecar_publish_port"],
                metrics=values["sidecar_metrics_port"],
            ),
            image_pull_secrets=tuple(n.strip() for n in pull_secrets.split(",") if n.strip()),
            resources=Resources(
                cpu_request=values["sidecar_cpu_request"],
                memory_request=values["sidecar_memory_request"],
                cpu_limit=values["sidecar_cpu_limit"],
                memory_limit=values["sidecar_memory_limit"],
            ),
        )
        return cls(
            tls_certfile=values["tls_certfile"],
            tls_keyfile=values["tls_keyfile"],
            template=template,
            listen=values["listen"],
            metrics_addr=values["metrics_addr"],
            tls_reload_interval=values["tls_reload_interval"],
            log_level=values["log_level"],
        )
